"""What the record service answered, and the acknowledgement it becomes (docs/hl7-v2.md has
the table).

- An answer without ERROR or FATAL issues: AA; its warnings and information travel as ERR
  segments of severity W and I.
- An answer with ERROR or FATAL issues, or a refusal because of the message or the sender's
  rights (INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED, NOT_FOUND,
  ALREADY_EXISTS, OUT_OF_RANGE): AE, the message was read and is wrong; resending it as it
  is will not help.
- ABORTED with IDEMPOTENCY_KEY_REUSED: the control id (MSH-10) already named another
  message from this sender: AE (duplicate key at MSH-10).
- Issues that say the message is of a type or version the record service does not take
  (``not-supported`` at MSH-9 or MSH-12), and any refusal that is not about the message
  (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNAUTHENTICATED: the
  listener's own credentials, UNIMPLEMENTED, INTERNAL, UNKNOWN): AR, nothing was processed;
  the sender may resend later.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from medledger.mllp.domain.ack import AckCode, AckError, Acknowledgement, ErrorLocation
from medledger.mllp.domain.conditions import Condition, Severity


class IssueSeverity(enum.Enum):
    """FHIR OperationOutcome.issue.severity, as the record service reports it."""

    FATAL = "fatal"
    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


@dataclass(frozen=True)
class IngestIssue:
    severity: IssueSeverity
    code: str  # FHIR issue-type ("required", "value", "code-invalid", "not-supported")
    location: str  # "PID-7", "OBX[2]-5", or something else (a FHIRPath)
    diagnostics: str  # never the message's values (the record service's promise)


@dataclass(frozen=True)
class Ingested:
    """The record service took the message and answered (``written``: resources written)."""

    message_type: str
    issues: tuple[IngestIssue, ...] = ()
    written: int = 0


@dataclass(frozen=True)
class Refused:
    """The record service (or identity, for the listener's token) refused the call.

    ``status``: the gRPC status code's name (``INVALID_ARGUMENT``); ``reason``: the
    ErrorInfo reason, if any; ``violations``: BadRequest (field, description) pairs."""

    status: str
    reason: str = ""
    violations: tuple[tuple[str, str], ...] = field(default=())


IngestResult = Ingested | Refused

# FHIR issue-type → HL7 table 0357.
_CONDITIONS: Final = {
    "required": Condition.REQUIRED_FIELD_MISSING,
    "value": Condition.DATA_TYPE,
    "invalid": Condition.DATA_TYPE,
    "structure": Condition.SEGMENT_SEQUENCE,
    "code-invalid": Condition.TABLE_VALUE_NOT_FOUND,
    "not-found": Condition.UNKNOWN_KEY,
    "duplicate": Condition.DUPLICATE_KEY,
    "conflict": Condition.RECORD_LOCKED,
    "lock-error": Condition.RECORD_LOCKED,
    "business-rule": Condition.DATA_TYPE,
    "processing": Condition.INTERNAL_ERROR,
    "exception": Condition.INTERNAL_ERROR,
    "transient": Condition.INTERNAL_ERROR,
}
_SEVERITIES: Final = {
    IssueSeverity.FATAL: Severity.ERROR,
    IssueSeverity.ERROR: Severity.ERROR,
    IssueSeverity.WARNING: Severity.WARNING,
    IssueSeverity.INFORMATION: Severity.INFORMATION,
}
# Refusals about the message or the sender's rights: AE.
MESSAGE_ERRORS: Final = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "OUT_OF_RANGE",
    }
)
_REFUSAL_TEXT: Final = {
    "INVALID_ARGUMENT": "the message has errors",
    "FAILED_PRECONDITION": "the message cannot be applied to the record as it stands",
    "PERMISSION_DENIED": "the sending facility may not write this record",
    "NOT_FOUND": "the message refers to a record that does not exist",
    "ALREADY_EXISTS": "this control id was used for another message",
    "OUT_OF_RANGE": "the message has values out of range",
    "UNAVAILABLE": "the record service is unavailable; resend later",
    "DEADLINE_EXCEEDED": "the record service did not answer in time; resend later",
    "RESOURCE_EXHAUSTED": "the record service is busy; resend later",
    "ABORTED": "the write was interrupted; resend",
    "UNAUTHENTICATED": "the listener's credentials for this facility were refused",
    "UNIMPLEMENTED": "the record service does not take HL7 v2 messages",
}


def _condition(issue: IngestIssue, location: ErrorLocation | None) -> Condition:
    if issue.code == "not-supported":
        if location is not None and location.segment == "MSH":
            if location.field == 12:
                return Condition.UNSUPPORTED_VERSION
            if location.field == 11:
                return Condition.UNSUPPORTED_PROCESSING_ID
            if location.field == 9:
                # MSH-9.2 is the trigger event: the type is known, the event is not.
                return (
                    Condition.UNSUPPORTED_EVENT
                    if location.component == 2
                    else Condition.UNSUPPORTED_MESSAGE_TYPE
                )
        return Condition.UNSUPPORTED_MESSAGE_TYPE
    return _CONDITIONS.get(issue.code, Condition.DATA_TYPE)


def _error(issue: IngestIssue) -> AckError:
    location = ErrorLocation.parse(issue.location)
    message = issue.diagnostics
    if location is None and issue.location:
        # Not a segment-field location (a FHIRPath): kept in the text, where engines show it.
        message = f"{issue.location}: {message}" if message else issue.location
    return AckError(
        condition=_condition(issue, location),
        severity=_SEVERITIES[issue.severity],
        location=location,
        application_code=issue.code,
        message=message,
    )


def _not_taken(error: AckError) -> bool:
    """Whether the error says the message is of a kind not taken at all (AR, not AE)."""
    return error.severity is Severity.ERROR and error.condition in {
        Condition.UNSUPPORTED_MESSAGE_TYPE,
        Condition.UNSUPPORTED_EVENT,
        Condition.UNSUPPORTED_VERSION,
        Condition.UNSUPPORTED_PROCESSING_ID,
    }


def acknowledgement_for(result: IngestResult) -> Acknowledgement:
    """The acknowledgement the sender gets for ``result``."""
    if isinstance(result, Refused):
        return _refusal(result)
    errors = tuple(_error(issue) for issue in result.issues)
    failed = [e for e in errors if e.severity is Severity.ERROR]
    if not failed:
        return Acknowledgement(AckCode.ACCEPT, errors)
    if any(_not_taken(e) for e in failed):
        return Acknowledgement(
            AckCode.REJECT, errors, text="the message type or version is not taken"
        )
    return Acknowledgement(
        AckCode.ERROR, errors, text="the message has errors; nothing was written"
    )


def _violation_error(field_name: str, description: str) -> AckError:
    location = ErrorLocation.parse(field_name)
    message = description if location is not None else f"{field_name}: {description}"
    return AckError(Condition.DATA_TYPE, Severity.ERROR, location, message=message)


# The same MSH-3/4/10 already named another message: a resend will not help (AE).
CONTROL_ID_REUSED: Final = "IDEMPOTENCY_KEY_REUSED"


def _refusal(refused: Refused) -> Acknowledgement:
    if refused.reason == CONTROL_ID_REUSED:
        text = "this control id was used for another message"
        error = AckError(
            Condition.DUPLICATE_KEY,
            Severity.ERROR,
            ErrorLocation("MSH", 1, 10),
            application_code=refused.reason,
            message=text,
        )
        return Acknowledgement(AckCode.ERROR, (error,), text=text)
    text = _REFUSAL_TEXT.get(refused.status, "the record service failed; resend later")
    if refused.status in MESSAGE_ERRORS:
        errors: Sequence[AckError] = [
            _violation_error(name, description) for name, description in refused.violations
        ]
        if not errors:
            condition = (
                Condition.DUPLICATE_KEY
                if refused.status == "ALREADY_EXISTS"
                else Condition.UNKNOWN_KEY
                if refused.status == "NOT_FOUND"
                else Condition.DATA_TYPE
            )
            errors = [
                AckError(condition, Severity.ERROR, application_code=refused.reason, message=text)
            ]
        return Acknowledgement(AckCode.ERROR, tuple(errors), text=text)
    condition = (
        Condition.UNSUPPORTED_MESSAGE_TYPE
        if refused.status == "UNIMPLEMENTED"
        else Condition.INTERNAL_ERROR
    )
    return Acknowledgement(
        AckCode.REJECT,
        (AckError(condition, Severity.ERROR, application_code=refused.reason, message=text),),
        text=text,
    )
