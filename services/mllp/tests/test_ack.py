"""Acknowledgements as a sender's engine reads them (parsed back with python-hl7): MSA-1 and
MSA-2, ERR locations and codes, and what each record service answer becomes."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from medledger.mllp.domain.ack import (
    AckCode,
    AckError,
    Acknowledgement,
    ErrorLocation,
    accept_ack_sent,
    commit_acknowledgement,
    rejected,
    render_ack,
)
from medledger.mllp.domain.conditions import Condition, Severity
from medledger.mllp.domain.header import read_header
from medledger.mllp.domain.outcome import (
    Ingested,
    IngestIssue,
    IssueSeverity,
    Refused,
    acknowledgement_for,
)

NOW = datetime(2026, 3, 1, 8, 30, 5, tzinfo=UTC)
MESSAGE = (
    b"MSH|^~\\&|EPIC|HOSP_A|MEDLEDGER|ML|20260301083000||ADT^A01^ADT_A01|CTRL-77|P|2.5\r"
    b"PID|1||MRN123^^^HOSP_A^MR||Doe^Jane||19800101|F"
)
HEADER = read_header(MESSAGE)


def parse(wire: bytes) -> hl7.Message:
    return hl7.parse(wire.decode("utf-8"))


def errs(message: hl7.Message) -> list[hl7.Segment]:
    return [s for s in message if str(s[0]) == "ERR"]


def test_an_accept_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    wire = render_ack(Acknowledgement(AckCode.ACCEPT), HEADER, control_id="ACK1", now=NOW)
    ack = parse(wire)
    msh = ack.segment("MSH")
    assert str(msh(3)) == "MEDLEDGER"
    assert str(msh(4)) == "ML"
    assert str(msh(5)) == "EPIC"
    assert str(msh(6)) == "HOSP_A"
    assert str(msh(7)) == "20260301083005+0000"
    assert str(msh(9)) == "ACK^A01^ACK"
    assert str(msh(10)) == "ACK1"
    assert str(msh(11)) == "P"
    assert str(msh(12)) == "2.5"
    msa = ack.segment("MSA")
    assert str(msa(1)) == "AA"
    assert str(msa(2)) == "CTRL-77"
    assert errs(ack) == []
    # Nothing of the patient's segment comes back.
    for value in (b"MRN123", b"Doe", b"Jane", b"19800101"):
        assert value not in wire


def test_errors_are_located_coded_and_escaped() -> None:
    ack = Acknowledgement(
        AckCode.ERROR,
        (
            AckError(
                Condition.DATA_TYPE,
                Severity.ERROR,
                ErrorLocation.parse("OBX[2]-5"),
                application_code="value",
                message="not a number for value type NM | see OBX-2",
            ),
            AckError(
                Condition.REQUIRED_FIELD_MISSING,
                Severity.WARNING,
                ErrorLocation.parse("PID-7"),
                application_code="required",
                message="birth date missing",
            ),
        ),
        text="the message has errors",
    )
    parsed = parse(render_ack(ack, HEADER, control_id="ACK2", now=NOW))
    msa = parsed.segment("MSA")
    assert str(msa(1)) == "AE"
    assert str(msa(2)) == "CTRL-77"
    first, second = errs(parsed)
    assert str(first(2)) == "OBX^2^5"
    assert str(first(2)(1)(1)) == "OBX"
    assert str(first(2)(1)(2)) == "2"
    assert str(first(2)(1)(3)) == "5"
    assert str(first(3)) == "102^Data type error^HL70357"
    assert str(first(4)) == "E"
    assert str(first(5)) == "value"
    # The field separator in the text is escaped, so the segment still has its fields.
    assert parsed.unescape(str(first(8))) == "not a number for value type NM | see OBX-2"
    assert str(second(2)) == "PID^1^7"
    assert str(second(3)) == "101^Required field missing^HL70357"
    assert str(second(4)) == "W"


def test_a_header_we_cannot_read_gets_ar_with_an_empty_msa_2() -> None:
    wire = render_ack(
        rejected(Condition.SEGMENT_SEQUENCE, "no MSH", ErrorLocation("MSH")),
        None,
        control_id="ACK3",
        now=NOW,
    )
    parsed = parse(wire)
    assert str(parsed.segment("MSH")(9)) == "ACK"
    assert str(parsed.segment("MSA")(1)) == "AR"
    assert str(parsed.segment("MSA")(2)) == ""
    assert str(errs(parsed)[0](2)) == "MSH^1"


def test_the_message_own_separators_and_version_are_used() -> None:
    header = read_header(b"MSH#*~\\&#LAB#HOSP_B#####ORU*R01#C9#T#2.3")
    wire = render_ack(
        rejected(Condition.UNKNOWN_KEY, "unknown", ErrorLocation("MSH", 1, 4)),
        header,
        control_id="ACK4",
        now=NOW,
    )
    segments = wire.decode().split("\r")
    assert segments[0].startswith("MSH#*~\\&#")
    assert "#ACK*R01*ACK#ACK4#T#2.3" in segments[0]
    assert segments[1].startswith("MSA#AR#C9#")
    assert segments[2].startswith("ERR##MSH*1*4#204*Unknown key identifier*HL70357#E#")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("PID-7", ErrorLocation("PID", 1, 7)),
        ("OBX[2]-5", ErrorLocation("OBX", 2, 5)),
        ("PID-5.1", ErrorLocation("PID", 1, 5, component=1)),
        ("OBX[3]-5[2].1.2", ErrorLocation("OBX", 3, 5, 2, 1, 2)),
        ("MSH-9", ErrorLocation("MSH", 1, 9)),
        ("PV1", ErrorLocation("PV1")),
        ("Patient.birthDate", None),
        ("row 3", None),
        ("", None),
    ],
)
def test_record_service_locations_become_erl(location: str, expected: ErrorLocation | None) -> None:
    assert ErrorLocation.parse(location) == expected


def issue(
    severity: IssueSeverity, code: str = "value", location: str = "PID-7", diagnostics: str = ""
) -> IngestIssue:
    return IngestIssue(severity, code, location, diagnostics)


def test_an_answer_with_warnings_only_is_accepted_with_w_errs() -> None:
    ack = acknowledgement_for(
        Ingested(
            "ADT^A01",
            (issue(IssueSeverity.WARNING), issue(IssueSeverity.INFORMATION, "informational")),
            written=2,
        )
    )
    assert ack.code is AckCode.ACCEPT
    assert [e.severity for e in ack.errors] == [Severity.WARNING, Severity.INFORMATION]


@pytest.mark.parametrize("severity", [IssueSeverity.ERROR, IssueSeverity.FATAL])
def test_an_answer_with_an_error_is_ae(severity: IssueSeverity) -> None:
    ack = acknowledgement_for(
        Ingested(
            "ORU^R01",
            (
                issue(severity, "value", "OBX[2]-5", "not numeric"),
                issue(IssueSeverity.WARNING, "code-invalid", "OBX[2]-6"),
            ),
        )
    )
    assert ack.code is AckCode.ERROR
    first, second = ack.errors
    assert first.location == ErrorLocation("OBX", 2, 5)
    assert first.condition is Condition.DATA_TYPE
    assert first.severity is Severity.ERROR
    assert second.condition is Condition.TABLE_VALUE_NOT_FOUND
    assert second.severity is Severity.WARNING


@pytest.mark.parametrize(
    ("location", "condition"),
    [
        ("MSH-9", Condition.UNSUPPORTED_MESSAGE_TYPE),
        ("MSH-9.2", Condition.UNSUPPORTED_EVENT),
        ("MSH-12", Condition.UNSUPPORTED_VERSION),
    ],
)
def test_a_type_or_version_not_taken_is_ar(location: str, condition: Condition) -> None:
    ack = acknowledgement_for(
        Ingested("ADT^A99", (issue(IssueSeverity.ERROR, "not-supported", location),))
    )
    assert ack.code is AckCode.REJECT
    assert ack.errors[0].condition is condition


def test_a_fhirpath_location_goes_into_the_text() -> None:
    ack = acknowledgement_for(
        Ingested("ADT^A01", (issue(IssueSeverity.ERROR, "invalid", "Patient.gender", "bad"),))
    )
    assert ack.errors[0].location is None
    assert ack.errors[0].message == "Patient.gender: bad"


@pytest.mark.parametrize(
    "status",
    ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "ALREADY_EXISTS"],
)
def test_refusals_about_the_message_are_ae(status: str) -> None:
    ack = acknowledgement_for(Refused(status, "SOME_REASON"))
    assert ack.code is AckCode.ERROR
    assert ack.errors[0].severity is Severity.ERROR
    assert ack.errors[0].application_code == "SOME_REASON"


def test_bad_request_violations_become_located_errs() -> None:
    ack = acknowledgement_for(
        Refused(
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            (("PID-7", "not a date"), ("message", "segments out of order")),
        )
    )
    assert ack.code is AckCode.ERROR
    assert [e.location for e in ack.errors] == [ErrorLocation("PID", 1, 7), None]
    assert ack.errors[1].message == "message: segments out of order"


@pytest.mark.parametrize(
    ("status", "condition"),
    [
        ("UNAVAILABLE", Condition.INTERNAL_ERROR),
        ("DEADLINE_EXCEEDED", Condition.INTERNAL_ERROR),
        ("RESOURCE_EXHAUSTED", Condition.INTERNAL_ERROR),
        ("UNAUTHENTICATED", Condition.INTERNAL_ERROR),
        ("INTERNAL", Condition.INTERNAL_ERROR),
        ("UNIMPLEMENTED", Condition.UNSUPPORTED_MESSAGE_TYPE),
    ],
)
def test_refusals_not_about_the_message_are_ar(status: str, condition: Condition) -> None:
    ack = acknowledgement_for(Refused(status))
    assert ack.code is AckCode.REJECT
    assert ack.errors[0].condition is condition


def test_a_control_id_reused_for_another_message_is_ae_at_msh_10() -> None:
    ack = acknowledgement_for(Refused("ABORTED", "IDEMPOTENCY_KEY_REUSED"))
    assert ack.code is AckCode.ERROR
    assert ack.errors[0].condition is Condition.DUPLICATE_KEY
    assert ack.errors[0].location == ErrorLocation("MSH", 1, 10)
    # Any other ABORTED is a write interrupted: resend.
    assert acknowledgement_for(Refused("ABORTED", "STALE")).code is AckCode.REJECT


@pytest.mark.parametrize(
    ("code", "accept_ack_type", "sent"),
    [
        (AckCode.ACCEPT, "AL", AckCode.COMMIT_ACCEPT),
        (AckCode.ERROR, "AL", AckCode.COMMIT_ERROR),
        (AckCode.REJECT, "AL", AckCode.COMMIT_REJECT),
        (AckCode.ACCEPT, "", AckCode.COMMIT_ACCEPT),  # MSH-16 alone: accept acks always
        (AckCode.ACCEPT, "ER", None),
        (AckCode.ERROR, "ER", AckCode.COMMIT_ERROR),
        (AckCode.REJECT, "ER", AckCode.COMMIT_REJECT),
        (AckCode.ACCEPT, "SU", AckCode.COMMIT_ACCEPT),
        (AckCode.ERROR, "SU", None),
        (AckCode.REJECT, "SU", None),
        (AckCode.ACCEPT, "NE", None),
        (AckCode.REJECT, "NE", None),
    ],
)
def test_enhanced_mode_sends_the_commit_ack_msh_15_asks_for(
    code: AckCode, accept_ack_type: str, sent: AckCode | None
) -> None:
    commit = commit_acknowledgement(Acknowledgement(code, text="why"))
    answer = commit if accept_ack_sent(accept_ack_type, commit) else None
    assert (answer.code if answer else None) == sent
    if answer is not None:
        assert answer.text == "why"
