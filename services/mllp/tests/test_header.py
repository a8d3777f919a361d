"""The MSH as the listener reads it: separators, sender, control id, character set."""

from __future__ import annotations

import pytest

from medledger.mllp.domain.conditions import Condition
from medledger.mllp.domain.header import (
    HeaderError,
    decode_message,
    escape_text,
    normalise_segments,
    read_header,
    unescape,
)


def test_reads_the_routing_fields() -> None:
    header = read_header(
        b"MSH|^~\\&|EPIC^1.2.3^ISO|HOSP_A^2.16.840^ISO|MEDLEDGER|ML|20260101120000||"
        b"ADT^A01^ADT_A01|CTRL-1|P|2.5.1^HL7|||AL|NE||UNICODE UTF-8\rPID|1"
    )
    assert header.sending_facility_id == "HOSP_A"
    assert header.sending_application_id == "EPIC"
    assert header.message_code == "ADT"
    assert header.trigger_event == "A01"
    assert header.control_id == "CTRL-1"
    assert header.version == "2.5.1"
    assert header.processing_id == "P"
    assert header.character_set == "UNICODE UTF-8"


def test_other_separators_are_honoured() -> None:
    header = read_header(b"MSH#*~\\&#APP#FAC\\S\\X#####ORU*R01#C9#P#2.3")
    assert header.field_separator == "#"
    assert header.sending_facility_id == "FAC*X"  # \S\ is the component separator
    assert header.trigger_event == "R01"


@pytest.mark.parametrize(
    ("payload", "field", "condition"),
    [
        (b"PID|1||123\rMSH|^~\\&|A|B", 0, Condition.SEGMENT_SEQUENCE),
        # A batch (docs/hl7-v2.md): one message per frame; batches go to IngestHl7V2Batch.
        (
            b"BHS|^~\\&|LAB|HOSP-A\rMSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5",
            0,
            Condition.SEGMENT_SEQUENCE,
        ),
        (b"MSH", 0, Condition.SEGMENT_SEQUENCE),
        (b"MSHA^~\\&|A|B|C|D|E", 1, Condition.DATA_TYPE),
        (b"MSH|^^\\&|A|B|C|D|||ADT^A01|1|P|2.5", 2, Condition.DATA_TYPE),
        (b"MSH|^~|A|B|C|D|||ADT^A01|1|P|2.5", 2, Condition.DATA_TYPE),
        (b"MSH|^~\\&|A|B|C|D|||ADT^A01||P|2.5", 10, Condition.REQUIRED_FIELD_MISSING),
        (b"MSH|^~\\&|A|B|C|D||||1|P|2.5", 9, Condition.REQUIRED_FIELD_MISSING),
        (b"MSH|^~\\&|A||C|D|||ADT^A01|1|P|2.5", 4, Condition.REQUIRED_FIELD_MISSING),
    ],
)
def test_an_unreadable_header_is_located(payload: bytes, field: int, condition: Condition) -> None:
    with pytest.raises(HeaderError) as raised:
        read_header(payload)
    assert raised.value.field == field
    assert raised.value.condition is condition


def test_segments_are_normalised_to_cr() -> None:
    assert normalise_segments("MSH|x\r\nPID|1\nPV1|1\rOBX|1") == "MSH|x\rPID|1\rPV1|1\rOBX|1"


def test_the_character_set_decodes_the_message() -> None:
    latin = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||8859/1\nPID|1||||Müller".encode("latin-1")
    assert read_header(latin).character_set == "8859/1"
    assert decode_message(latin, read_header(latin)).endswith("PID|1||||Müller")
    # Undeclared and not UTF-8: read as Latin-1, as older engines send it.
    bare = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||||Müller".encode("latin-1")
    assert "Müller" in decode_message(bare, read_header(bare))
    # Declared UTF-8 but not: a located error, not a guess.
    wrong = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|Müller".encode("latin-1")
    with pytest.raises(HeaderError) as raised:
        decode_message(wrong, read_header(wrong))
    assert raised.value.field == 18


def test_escaping_round_trips() -> None:
    header = read_header(b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5")
    text = "a|b^c~d\\e&f"
    escaped = escape_text(text, header)
    assert escaped == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert unescape(escaped, "^~\\&", "|") == text
    assert escape_text("two\rlines", header) == "two lines"
