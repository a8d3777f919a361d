"""One message in, one acknowledgement out: read the header, know the sender, hand the
message to the record service, answer."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from medledger.mllp.domain.ack import (
    Acknowledgement,
    ErrorLocation,
    accept_ack_sent,
    commit_acknowledgement,
    rejected,
    render_ack,
)
from medledger.mllp.domain.conditions import Condition
from medledger.mllp.domain.facilities import FacilityDirectory
from medledger.mllp.domain.header import (
    HeaderError,
    MessageHeader,
    decode_message,
    read_header,
)
from medledger.mllp.domain.outcome import acknowledgement_for
from medledger.mllp.domain.ports import Ingest

log = logging.getLogger("medledger.mllp")

TOO_LARGE = "the message is larger than this listener takes"
BROKEN_FRAME = "the frame was cut short by a new start block"
UNKNOWN_FACILITY = "the sending facility is not known to this listener"


@dataclass(frozen=True)
class Answer:
    """The acknowledgement and what it answered, for logs and tests. ``wire`` is empty when
    nothing is sent back (enhanced mode, as MSH-15 asks)."""

    ack: Acknowledgement
    wire: bytes
    header: MessageHeader | None
    facility_id: str = ""


_SEQUENCE = itertools.count()


def _control_id() -> str:
    """The ACK's own MSH-10, 20 characters (v2.5's ST length): the second and a counter,
    unique within one listener process."""
    return f"ML{int(time.time()) % 10**10:010d}{next(_SEQUENCE) % 10**8:08d}"


class Exchange:
    """Answers each framed message (see the module's docstring)."""

    def __init__(
        self,
        directory: FacilityDirectory,
        ingest: Ingest,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        control_ids: Callable[[], str] = _control_id,
    ) -> None:
        self._directory = directory
        self._ingest = ingest
        self._clock = clock
        self._control_ids = control_ids

    def _answer(
        self, ack: Acknowledgement, header: MessageHeader | None, facility_id: str = ""
    ) -> Answer:
        if header is not None and header.enhanced_mode:
            ack = commit_acknowledgement(ack)
            if not accept_ack_sent(header.accept_ack_type, ack):
                return Answer(ack, b"", header, facility_id)
        wire = render_ack(ack, header, control_id=self._control_ids(), now=self._clock())
        return Answer(ack, wire, header, facility_id)

    def refuse(self, condition: Condition, message: str, payload: bytes = b"") -> Answer:
        """An AR for a frame not handed on (too large, broken); it names the message's
        control id when its header can be read."""
        try:
            header: MessageHeader | None = read_header(payload) if payload else None
        except HeaderError:
            header = None
        return self._answer(rejected(condition, message), header)

    async def answer(self, payload: bytes, certificate_names: tuple[str, ...] | None) -> Answer:
        """The acknowledgement of one framed message from a peer presenting
        ``certificate_names`` (None: no TLS)."""
        try:
            header = read_header(payload)
        except HeaderError as error:
            location = ErrorLocation("MSH", 1, error.field or None)
            return self._answer(rejected(error.condition, error.reason, location), None)
        facility = self._directory.authenticate(certificate_names, header.sending_facility_id)
        if facility is None:
            return self._answer(
                rejected(Condition.UNKNOWN_KEY, UNKNOWN_FACILITY, ErrorLocation("MSH", 1, 4)),
                header,
            )
        try:
            message = decode_message(payload, header)
        except HeaderError as error:
            return self._answer(
                rejected(error.condition, error.reason, ErrorLocation("MSH", 1, error.field)),
                header,
                facility.facility_id,
            )
        result = await self._ingest(facility, message)
        return self._answer(acknowledgement_for(result), header, facility.facility_id)
