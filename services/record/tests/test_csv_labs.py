"""CSV lab results (medledger.record.domain.csv_labs): the mapping, each row's checks, the
Observation a row becomes, and reading a file fed in pieces cut anywhere."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.common.errors import InvalidArgument
from medledger.record.domain.csv_labs import (
    MAX_RECORD_CHARS,
    IssueCode,
    LabCsvReader,
    LabMapping,
    LabRow,
    ReadRow,
    RecordSplitter,
    RejectedRow,
    is_loinc_code,
    loinc_check_digit,
    observation,
)
from medledger.record.domain.fhir_validation import validate_resource

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HEADER = "patient_id,loinc,value,unit,effective\r\n"
GOOD = "p-1,2345-7,5.4,mmol/L,2024-03-01T08:30:00+01:00\r\n"


def read(text: str | bytes, mapping: LabMapping | None = None) -> list[ReadRow]:
    reader = LabCsvReader(mapping or LabMapping(), now=lambda: NOW)
    rows = reader.feed(text) if isinstance(text, bytes) else reader.feed_text(text)
    return rows + reader.finish()


def in_pieces(data: bytes, cuts: list[int], mapping: LabMapping | None = None) -> list[ReadRow]:
    reader = LabCsvReader(mapping or LabMapping(), now=lambda: NOW)
    rows: list[ReadRow] = []
    start = 0
    for cut in sorted(set(cuts)):
        rows += reader.feed(data[start:cut])
        start = cut
    rows += reader.feed(data[start:])
    return rows + reader.finish()


def issues_of(row: ReadRow) -> list[tuple[str, IssueCode]]:
    assert isinstance(row, RejectedRow)
    return [(i.location, i.code) for i in row.issues]


# -- the mapping ------------------------------------------------------------------------------


def test_an_empty_mapping_means_the_default_headers() -> None:
    assert LabMapping.of() == LabMapping()
    [row] = read(HEADER + GOOD)
    assert row == LabRow(1, "p-1", "2345-7", 5.4, "", "mmol/L", "2024-03-01T08:30:00+01:00")


def test_the_mapping_names_columns_in_any_order_and_case() -> None:
    mapping = LabMapping.of(
        patient_column="MRN",
        patient_identifier_system="urn:oid:1.2.3.4",
        code_column="Test Code",
        value_column="Result",
        unit_column="Units",
        effective_column="Collected",
    )
    text = (
        " collected ,units,extra,result,test code,mrn\n"
        "2024-03-01T08:30:00Z,mg/dL,anything,99,2345-7,MRN 0042\n"
    )
    [row] = read(text, mapping)
    assert row == LabRow(1, "MRN 0042", "2345-7", 99, "", "mg/dL", "2024-03-01T08:30:00Z")


def test_a_bad_mapping_is_refused_naming_each_field() -> None:
    with pytest.raises(InvalidArgument) as raised:
        LabMapping.of(
            value_column="loinc",  # the code column's default
            unit_column="x" * 200,
            patient_identifier_system="not a uri",
        )
    assert set(raised.value.field_names) == {
        "mapping.value_column",
        "mapping.unit_column",
        "mapping.patient_identifier_system",
    }
    assert raised.value.reason == "MAPPING_INVALID"
    assert "not a uri" not in str(raised.value.violations)


def test_a_header_without_a_mapped_column_is_refused_naming_the_mapping_field() -> None:
    with pytest.raises(InvalidArgument) as raised:
        read("patient_id,loinc,val,unit,effective,loinc\n" + GOOD)
    assert set(raised.value.field_names) == {"mapping.value_column", "mapping.code_column"}
    descriptions = {v.field: v.description for v in raised.value.violations}
    assert "no column" in descriptions["mapping.value_column"]
    assert "more than one" in descriptions["mapping.code_column"]


def test_an_empty_file_has_no_header() -> None:
    for text in ("", "\r\n\r\n", "\ufeff"):
        with pytest.raises(InvalidArgument) as raised:
            read(text)
        assert raised.value.field_names == ["csv"]
    assert read(HEADER) == []


# -- each row's checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["2345-7", "718-7", "4548-4", "2160-0", "39156-5", "8480-6", "2093-3", "13457-7", "2571-8"],
)
def test_real_loinc_codes_pass_their_check_digit(code: str) -> None:
    assert is_loinc_code(code)


@given(st.integers(min_value=0, max_value=9_999_999))
def test_exactly_one_check_digit_fits_and_a_changed_digit_is_caught(number: int) -> None:
    digits = str(number)
    fitting = [d for d in range(10) if is_loinc_code(f"{digits}-{d}")]
    assert fitting == [loinc_check_digit(digits)]
    for position in range(len(digits)):
        for other in "0123456789":
            changed = digits[:position] + other + digits[position + 1 :]
            if changed != digits:
                assert loinc_check_digit(changed) != loinc_check_digit(digits)


@pytest.mark.parametrize(
    "code", ["2345-8", "2345", "2345-77", "12345678-0", "A2345-7", "\u0662\u0663\u0664\u0665-7"]
)
def test_what_is_not_a_loinc_code_is_refused(code: str) -> None:
    assert not is_loinc_code(code)


def row_with(**fields: str) -> str:
    values = {
        "patient_id": "p-1",
        "loinc": "2345-7",
        "value": "5.4",
        "unit": "mmol/L",
        "effective": "2024-03-01T08:30:00Z",
    }
    values.update(fields)
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values.values())
    return HEADER + buffer.getvalue()


@pytest.mark.parametrize(
    ("value", "comparator", "number"),
    [
        ("5.4", "", 5.4),
        ("12", "", 12),
        ("+12", "", 12),
        ("-0.5", "", -0.5),
        (".5", "", 0.5),
        ("1e3", "", 1000.0),
        ("<5", "<", 5),
        ("<= 0.01", "<=", 0.01),
        (">1000", ">", 1000),
        (" 7 ", "", 7),
    ],
)
def test_values_and_comparators(value: str, comparator: str, number: float) -> None:
    [row] = read(row_with(value=value))
    assert isinstance(row, LabRow)
    assert (row.comparator, row.value) == (comparator, number)
    assert type(row.value) is type(number)


@pytest.mark.parametrize(
    "value", ["abc", "5,4", "1/2", "NaN", "inf", "1e999", "1e-999", "--1", "<", "5 mmol", "١٢"]
)
def test_what_is_not_a_number_is_refused(value: str) -> None:
    [row] = read(row_with(value=value))
    assert issues_of(row) == [("row 1 / value", IssueCode.VALUE)]
    assert isinstance(row, RejectedRow)
    assert value.strip() not in row.issues[0].diagnostics


@pytest.mark.parametrize(
    ("effective", "stored"),
    [
        ("2024-03-01T08:30:00Z", "2024-03-01T08:30:00Z"),
        ("2024-03-01T08:30:00.125+05:30", "2024-03-01T08:30:00.125+05:30"),
        ("2024-03-01T08:30Z", "2024-03-01T08:30:00Z"),  # FHIR needs the seconds
        ("2024-03-01T08:30-04:00", "2024-03-01T08:30:00-04:00"),
        ("2025-06-01T12:04:00Z", "2025-06-01T12:04:00Z"),  # within the clock tolerance
    ],
)
def test_effective_date_times(effective: str, stored: str) -> None:
    [row] = read(row_with(effective=effective))
    assert isinstance(row, LabRow)
    assert row.effective == stored


@pytest.mark.parametrize(
    "effective",
    [
        "2024-03-01T08:30:00",  # no time zone
        "2024-03-01",
        "2024-02-30T08:30:00Z",
        "2024-03-01T25:00:00Z",
        "2024-03-01 08:30:00Z",
        "20240301T083000Z",
        "2024-03-01T08:30:00+15:00",
        "2025-06-01T12:06:00Z",  # in the future
        "2024-03-01T08:30:00.1234567891Z",
    ],
)
def test_effective_date_times_refused(effective: str) -> None:
    [row] = read(row_with(effective=effective))
    assert issues_of(row) == [("row 1 / effective", IssueCode.VALUE)]


def test_every_problem_of_a_row_is_reported_by_column_without_its_values() -> None:
    text = row_with(patient_id="", loinc="2345-8", value="high", unit="mmHg", effective="today")
    [row] = read(text)
    assert issues_of(row) == [
        ("row 1 / patient_id", IssueCode.REQUIRED),
        ("row 1 / loinc", IssueCode.CODE_INVALID),
        ("row 1 / value", IssueCode.VALUE),
        ("row 1 / unit", IssueCode.CODE_INVALID),
        ("row 1 / effective", IssueCode.VALUE),
    ]
    assert isinstance(row, RejectedRow)
    said = " ".join(i.diagnostics for i in row.issues)
    for value in ("2345-8", "high", "mmHg", "today"):
        assert value not in said


def test_patient_ids_and_identifiers() -> None:
    [bad_id] = read(row_with(patient_id="not an id!"))
    assert issues_of(bad_id) == [("row 1 / patient_id", IssueCode.VALUE)]
    mapping = LabMapping.of(patient_identifier_system="https://hospital.example/mrn")
    [by_identifier] = read(row_with(patient_id="not an id!"), mapping)
    assert isinstance(by_identifier, LabRow)
    assert by_identifier.patient == "not an id!"
    [control] = read(row_with(patient_id="a\tb"), mapping)
    assert issues_of(control) == [("row 1 / patient_id", IssueCode.VALUE)]


def test_a_row_with_too_few_or_too_many_fields() -> None:
    rows = read(HEADER + "p-1,2345-7,5.4\n" + GOOD.rstrip() + ",extra\n" + GOOD)
    assert issues_of(rows[0]) == [("row 1", IssueCode.STRUCTURE)]
    assert issues_of(rows[1]) == [("row 2", IssueCode.STRUCTURE)]
    assert isinstance(rows[2], LabRow)
    assert rows[2].row == 3


# -- the Observation --------------------------------------------------------------------------


def test_a_row_becomes_a_laboratory_observation_the_record_service_accepts() -> None:
    [row] = read(row_with(value="<0.5", unit="10*9/L"))
    assert isinstance(row, LabRow)
    document = observation(row, "patient-7")
    assert document == {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/patient-7"},
        "effectiveDateTime": "2024-03-01T08:30:00Z",
        "valueQuantity": {
            "value": 0.5,
            "comparator": "<",
            "unit": "10*9/L",
            "system": "http://unitsofmeasure.org",
            "code": "10*9/L",
        },
    }
    valid = validate_resource(json.dumps(document), expected_type="Observation")
    assert valid.patient_id == "patient-7"


# -- reading RFC 4180 a piece at a time ------------------------------------------------------


def test_bom_crlf_lf_quotes_and_blank_lines() -> None:
    text = (
        "\ufeff" + HEADER + "\r\n"
        '"p-1","2345-7","5.4","mmol/L","2024-03-01T08:30:00Z"\n'
        "\n"
        "p-2,718-7,13,g/dL,2024-03-01T08:30:00Z"  # no line end at the end
    )
    rows = read(text.encode())
    assert [r.row for r in rows] == [1, 2]
    assert all(isinstance(r, LabRow) for r in rows)
    assert [r.patient for r in rows if isinstance(r, LabRow)] == ["p-1", "p-2"]
    assert read(text.encode("utf-8")[3:]) == rows  # without the BOM


def test_a_quoted_line_break_stays_in_its_row() -> None:
    rows = read(HEADER + 'p-1,2345-7,5.4,"mmol/\r\nL",2024-03-01T08:30:00Z\r\n' + GOOD)
    assert issues_of(rows[0]) == [("row 1 / unit", IssueCode.CODE_INVALID)]
    assert isinstance(rows[1], LabRow)
    assert rows[1].row == 2


def test_what_is_not_rfc_4180_is_a_row_issue() -> None:
    rows = read(HEADER + 'p-1,"2345-7"x,5.4,mmol/L,2024-03-01T08:30:00Z\n' + GOOD + '"p-1,')
    assert issues_of(rows[0]) == [("row 1", IssueCode.STRUCTURE)]
    assert isinstance(rows[1], LabRow)
    assert issues_of(rows[2]) == [("row 3", IssueCode.STRUCTURE)]  # a quote left open


def test_an_endless_record_stops_the_reading() -> None:
    reader = LabCsvReader(LabMapping(), now=lambda: NOW)
    rows = reader.feed((HEADER + GOOD + 'p-1,"').encode())
    for _ in range(20):
        rows += reader.feed(b"x" * 8192 + b"\n")
        assert reader.pending_chars <= MAX_RECORD_CHARS
    rows += reader.feed(GOOD.encode()) + reader.finish()
    assert isinstance(rows[0], LabRow)
    assert len(rows) == 2
    assert isinstance(rows[1], RejectedRow)
    assert rows[1].issues[0].fatal
    assert reader.stopped
    assert reader.rows_read == 2


def test_bytes_that_are_not_utf8() -> None:
    rows = read((HEADER + GOOD).encode() + b"p-1,\xff\xfe\n" + GOOD.encode())
    assert isinstance(rows[0], LabRow)
    assert issues_of(rows[1]) == [("row 2", IssueCode.STRUCTURE)]
    assert isinstance(rows[1], RejectedRow)
    assert rows[1].issues[0].fatal
    assert len(rows) == 2  # nothing after
    cut = (HEADER + GOOD).encode() + "p-é".encode()[:-1]  # the piece ends inside a character
    assert in_pieces(cut + b"\xff\n" + GOOD.encode(), [len(cut)]) == rows
    with pytest.raises(InvalidArgument) as raised:
        read(b"\xffpatient_id\n")
    assert raised.value.field_names == ["csv"]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_cutting_into_pieces_reads_the_same(data: st.DataObject) -> None:
    mapping = LabMapping.of(patient_identifier_system="https://hospital.example/mrn")
    text = (
        "\ufeff" + HEADER + 'Åsa-1,"2345-7",5.4,mmol/L,2024-03-01T08:30:00Z\r\n'
        '"Zoë ""Z""",718-7,<13,g/dL,2024-03-01T08:30:00+02:00\n'
        '"李, 2",4548-4,"6,1",%,2024-03-01T08:30Z\n'
        "\r\n"
        '"x\r\ny",2345-7,1,mg/dL,2024-03-01T08:30:00Z\n'
        "bad,bad,bad,bad,bad\n"
        "last,2345-7,1,mg/dL,2024-03-01T08:30:00Z"
    )
    raw = text.encode()
    whole = read(raw, mapping)
    assert [r.row for r in whole] == [1, 2, 3, 4, 5, 6]
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=12))
    assert in_pieces(raw, cuts, mapping) == whole


csv_text = st.lists(
    st.sampled_from(['"', ",", "\n", "\r\n", "a", "b", " ", "é", "x"]), max_size=8
).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(csv_text, min_size=1, max_size=4), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_records_split_as_the_csv_module_reads_them(
    table: list[list[str]], cuts: list[int]
) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(table)
    text = buffer.getvalue()
    splitter = RecordSplitter()
    records: list[str] = []
    start = 0
    for cut in sorted({min(c, len(text)) for c in cuts}):
        records += splitter.feed(text[start:cut])
        start = cut
    records += splitter.feed(text[start:])
    assert splitter.finish() == ""
    assert len(records) == len(table)
    assert [next(csv.reader([r], strict=True)) for r in records] == table


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(['"', ",", "\n", "\r\n", "a", " "]), max_size=40).map("".join))
def test_any_text_splits_as_the_csv_module_reads_it(text: str) -> None:
    """Not only RFC 4180: stray quotes too (the csv module takes a quote inside an unquoted
    field as text, and a quote after a closing one as more of the field)."""
    splitter = RecordSplitter()
    records = [*splitter.feed(text), splitter.finish()]
    split = [next(csv.reader([r]), []) for r in records if r]
    assert split == list(csv.reader(io.StringIO(text, newline="")))
