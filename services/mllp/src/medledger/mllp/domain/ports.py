"""What the listener needs from outside its domain."""

from __future__ import annotations

from typing import Protocol

from medledger.mllp.domain.facilities import Facility
from medledger.mllp.domain.outcome import IngestResult


class Ingest(Protocol):
    """The record service's ``IngestHl7V2``, called as ``facility``'s client.

    A resend of a message (same MSH-3, MSH-4 and MSH-10 from the same client) gets the first
    answer and writes nothing new: the record service keys each message by those fields."""

    async def __call__(self, facility: Facility, message: str) -> IngestResult: ...
