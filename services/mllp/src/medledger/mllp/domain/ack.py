"""HL7 v2 acknowledgements: an ACK message of MSH, MSA and one ERR segment per problem.

MSA-1 is AA (accepted), AE (an error in the message: resending it unchanged will fail
again) or AR (rejected without being processed: an unknown sender, a header we cannot
read, a message type or version we do not take, or the record service not answering, when
resending later may succeed). MSA-2 echoes the message's control id (MSH-10). Each ERR
locates its problem as ERR-2 (segment, sequence, field, repetition, component), codes it in
ERR-3 (table 0357) and ERR-4 (severity), carries the record service's issue code in ERR-5
and a fixed explanation in ERR-8. Nothing of the message's content but its header's routing
fields is ever written back: the diagnostics come from the record service, which never
repeats values, and the listener's own are fixed strings.

Enhanced mode (the message values MSH-15 or MSH-16): the listener stores a message before it
answers, so its accept acknowledgement is sent when the message is stored and ledgered and
says what the application acknowledgement would: CA (committed: written), CE (an error in the
message: nothing written, as AE) or CR (not processed, as AR), with the same ERR segments; it
is sent as MSH-15 asks (AL always, NE never, ER on CE or CR only, SU on CA only; empty: AL).
No separate application acknowledgement is sent (MSH-16 is read as NE): the listener has no
route back to the sender, and the accept acknowledgement already follows the write.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from medledger.mllp.domain.conditions import Condition, Severity
from medledger.mllp.domain.header import (
    DEFAULT_ENCODING_CHARACTERS,
    MessageHeader,
    encoding_for,
    escape_text,
)

DEFAULT_VERSION: Final = "2.5"
OUR_NAME: Final = "MEDLEDGER"
# "PID-7", "OBX[2]-5", "PID-5.1", "OBX[2]-5[1].2.1", "MSH-9", "PID": segment, its sequence
# (1 when not given), field, repetition, component, subcomponent.
_LOCATION: Final = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<sequence>[0-9]{1,4})\])?"
    r"(?:-(?P<field>[0-9]{1,3})(?:\[(?P<repetition>[0-9]{1,4})\])?"
    r"(?:\.(?P<component>[0-9]{1,3})(?:\.(?P<subcomponent>[0-9]{1,3}))?)?)?$"
)
ACK_CODE_TABLE: Final = "HL70357"


class AckCode(enum.StrEnum):
    """HL7 table 0008: original mode's application acknowledgements, and enhanced mode's
    accept acknowledgements (commit accept, error, reject)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"
    COMMIT_ACCEPT = "CA"
    COMMIT_ERROR = "CE"
    COMMIT_REJECT = "CR"


_COMMIT: Final = {
    AckCode.ACCEPT: AckCode.COMMIT_ACCEPT,
    AckCode.ERROR: AckCode.COMMIT_ERROR,
    AckCode.REJECT: AckCode.COMMIT_REJECT,
}


@dataclass(frozen=True)
class ErrorLocation:
    """An ERL (ERR-2): where in the message the problem is."""

    segment: str
    sequence: int = 1
    field: int | None = None
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None

    @classmethod
    def parse(cls, location: str) -> ErrorLocation | None:
        """The location the record service wrote (``OBX[2]-5``), or None when it is not a
        segment/field location (a FHIRPath, "row 3")."""
        match = _LOCATION.fullmatch(location.strip())
        if match is None:
            return None

        def number(name: str) -> int | None:
            value = match.group(name)
            return int(value) if value else None

        return cls(
            segment=match.group("segment"),
            sequence=number("sequence") or 1,
            field=number("field"),
            repetition=number("repetition"),
            component=number("component"),
            subcomponent=number("subcomponent"),
        )

    def render(self, component_separator: str) -> str:
        parts = [self.segment, str(self.sequence)]
        for value in (self.field, self.repetition, self.component, self.subcomponent):
            parts.append("" if value is None else str(value))
        while parts and not parts[-1]:
            parts.pop()
        return component_separator.join(parts)

    def __str__(self) -> str:
        text = self.segment if self.sequence == 1 else f"{self.segment}[{self.sequence}]"
        return text if self.field is None else f"{text}-{self.field}"


@dataclass(frozen=True)
class AckError:
    """One ERR segment."""

    condition: Condition
    severity: Severity
    location: ErrorLocation | None = None
    application_code: str = ""  # ERR-5: the record service's issue code ("required")
    message: str = ""  # ERR-8: what is wrong, never the value


@dataclass(frozen=True)
class Acknowledgement:
    code: AckCode
    errors: tuple[AckError, ...] = field(default=())
    text: str = ""  # MSA-3: a short summary for engines that show only the MSA

    @property
    def accepted(self) -> bool:
        return self.code in {AckCode.ACCEPT, AckCode.COMMIT_ACCEPT}


def commit_acknowledgement(ack: Acknowledgement) -> Acknowledgement:
    """Enhanced mode: the accept acknowledgement of a message answered ``ack`` in original
    mode (CA, CE or CR for AA, AE or AR; the same ERR segments)."""
    return dataclasses.replace(ack, code=_COMMIT.get(ack.code, ack.code))


def accept_ack_sent(accept_ack_type: str, ack: Acknowledgement) -> bool:
    """Whether MSH-15 (``accept_ack_type``; empty: AL) asks for the accept
    acknowledgement ``ack``."""
    wanted = accept_ack_type or "AL"
    if wanted == "ER":
        return not ack.accepted
    if wanted == "SU":
        return ack.accepted
    return wanted == "AL"


def rejected(
    condition: Condition, message: str, location: ErrorLocation | None = None
) -> Acknowledgement:
    """An AR for a message the listener will not hand on (``message`` is fixed text)."""
    return Acknowledgement(
        AckCode.REJECT,
        (AckError(condition, Severity.ERROR, location, message=message),),
        text=message,
    )


def _timestamp(when: datetime) -> str:
    """A DTM in UTC to the second, with its offset (HL7 v2.5 TS)."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def render_ack(
    ack: Acknowledgement,
    header: MessageHeader | None,
    *,
    control_id: str,
    now: datetime,
) -> bytes:
    """The ACK message (segments ended by CR) for the message ``header`` heads (None: its
    header could not be read; MSA-2 is then empty), encoded as the message was.

    The ACK swaps the message's sender and receiver (MSH-3/4 ↔ MSH-5/6), answers with its
    version and processing id, names the trigger event (``ACK^A01^ACK``) and has its own
    control id ``control_id``.
    """
    separator = header.field_separator if header else "|"
    characters = header.encoding_characters if header else DEFAULT_ENCODING_CHARACTERS
    component = characters[0]

    def text(value: str) -> str:
        return escape_text(value, header)

    trigger = text(header.trigger_event) if header else ""
    msh = [
        "MSH",
        characters,
        (header.receiving_application if header else "") or OUR_NAME,
        (header.receiving_facility if header else "") or OUR_NAME,
        header.sending_application if header else "",
        header.sending_facility if header else "",
        _timestamp(now),
        "",
        component.join(["ACK", trigger, "ACK"]) if trigger else "ACK",
        text(control_id),
        (header.processing_id if header else "") or "P",
        (header.version if header else "") or DEFAULT_VERSION,
    ]
    if header and header.character_set:
        msh += ["", "", "", "", "", header.character_set]
    segments = [separator.join(msh)]
    segments.append(
        separator.join(
            _trimmed(["MSA", ack.code.value, header.control_id if header else "", text(ack.text)])
        )
    )
    for error in ack.errors:
        condition = component.join(
            [error.condition.code, text(error.condition.text), ACK_CODE_TABLE]
        )
        segments.append(
            separator.join(
                _trimmed(
                    [
                        "ERR",
                        "",  # ERR-1: the v2.3 form of ERR-2, left empty from v2.5 on
                        error.location.render(component) if error.location else "",
                        condition,
                        error.severity.value,
                        text(error.application_code),
                        "",
                        "",
                        text(error.message),
                    ]
                )
            )
        )
    return ("\r".join(segments) + "\r").encode(encoding_for(header), errors="replace")


def _trimmed(fields: list[str]) -> list[str]:
    while fields and not fields[-1]:
        fields.pop()
    return fields
