"""What the witness needs from outside: where it keeps what it cosigned, a key to cosign with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from medledger.tlog import NoteSignature, VerifierKey


@dataclass(frozen=True)
class LogState:
    """The last checkpoint this witness cosigned for one log: its size and root hash."""

    origin: str
    size: int
    root_hash: bytes


class LogStates(Protocol):
    """The witness's durable memory, one state per log origin."""

    async def get(self, origin: str) -> LogState | None:
        """The stored state of ``origin``; None when nothing was ever cosigned for it."""
        ...

    async def get_many(self, origins: Sequence[str]) -> list[LogState]:
        """The stored states of those ``origins`` that have one."""
        ...

    async def advance(self, previous: LogState | None, new: LogState) -> bool:
        """Replaces ``previous`` by ``new`` only if ``previous`` is still what is stored
        (None: nothing stored yet). Returns whether it did: two requests racing from the same
        state can never both advance it."""
        ...


class CheckpointCosigner(Protocol):
    """The witness's key (C2SP tlog-cosignature v1), wherever the private half lives."""

    @property
    def name(self) -> str:
        """The key name, as it appears on cosignature lines."""
        ...

    async def verifier_key(self) -> VerifierKey:
        """The current public key as a type 0x04 verifier key."""
        ...

    async def cosign(self, body: bytes, timestamp: int) -> NoteSignature:
        """The cosignature over checkpoint ``body`` at ``timestamp`` (POSIX seconds)."""
        ...
