"""CSV lab results in: RFC 4180 text, read a piece at a time, each row checked and turned
into a FHIR R4 Observation.

The first record is the header; :class:`LabMapping` names the columns (patient, LOINC code,
value, UCUM unit, effective date-time), matched to the header without regard to case or
surrounding blanks. Each later record is a data row, numbered from 1 (blank lines are not
rows). A row is accepted when every mapped field passes its check:

- patient: a Patient id (FHIR id syntax), or, when the mapping names an identifier system, a
  business identifier (printable text) that the caller resolves to a Patient;
- code: a LOINC code, digits, a hyphen and the LOINC mod-10 check digit (``2345-7``);
- value: a decimal number, optionally after a comparator (``<``, ``<=``, ``>=``, ``>``);
- unit: a UCUM code (:mod:`medledger.common.ucum`, case-sensitive: ``mmol/L``, ``10*9/L``);
- effective: an ISO 8601 date-time with a time zone (``2024-03-01T08:30:00+01:00``; the
  seconds may be left out), a real calendar date, not in the future.

A rejected row gets one :class:`RowIssue` per problem, located ``row N / column``; the
diagnostics are fixed sentences of ours and never repeat what the file holds.

Bounded memory: :class:`LabCsvReader` is fed bytes (or text) in pieces cut anywhere, even
inside a UTF-8 character or a quoted field, and keeps only the record it has not finished
reading; a record longer than :data:`MAX_RECORD_CHARS` (an unclosed quote swallowing the
file) stops the reading with a fatal issue instead of growing without end.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Any, Final

from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.ucum import is_ucum
from medledger.record.domain.fhir_references import is_fhir_id

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"

MAX_RECORD_CHARS: Final = 64 * 1024
"""One CSV record (a row, quoted line breaks included); a lab row is under 200 characters."""
MAX_COLUMNS: Final = 1024
MAX_COLUMN_NAME: Final = 128
MAX_IDENTIFIER_SYSTEM: Final = 1024
MAX_IDENTIFIER_VALUE: Final = 256
MAX_VALUE_MAGNITUDE: Final = Decimal(10) ** 15
MIN_VALUE_MAGNITUDE: Final = Decimal(10) ** -15
"""Values (other than 0) outside these are no laboratory result, and would not survive as the
doubles JSON numbers are read as."""
FUTURE_TOLERANCE: Final = timedelta(minutes=5)
"""Clocks disagree: an instrument's time a little ahead of ours is not in the future."""

_LOINC_CODE: Final = re.compile(r"([0-9]{1,7})-([0-9])")
_VALUE: Final = re.compile(
    r"(<=|>=|<|>)?[ ]*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?)"
)
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_DATE_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})"
)
_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+")
_CSV_DIALECT: Final = {
    "delimiter": ",",
    "quotechar": '"',
    "doublequote": True,
    "skipinitialspace": False,
    "strict": True,
}


# -- the mapping ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabMapping:
    """Which header names the columns; an empty name in the request means the default."""

    patient_column: str = "patient_id"
    # When set, the patient column holds an identifier in this system, not a Patient id.
    patient_identifier_system: str = ""
    code_column: str = "loinc"
    value_column: str = "value"
    unit_column: str = "unit"
    effective_column: str = "effective"

    @classmethod
    def of(
        cls,
        *,
        patient_column: str = "",
        patient_identifier_system: str = "",
        code_column: str = "",
        value_column: str = "",
        unit_column: str = "",
        effective_column: str = "",
        field_prefix: str = "mapping.",
    ) -> LabMapping:
        """The mapping a request names (defaults filled in); INVALID_ARGUMENT naming each
        bad field (``mapping.code_column``)."""
        given = {
            "patient_column": patient_column,
            "code_column": code_column,
            "value_column": value_column,
            "unit_column": unit_column,
            "effective_column": effective_column,
        }
        defaults = cls()
        names = {f: v.strip() or getattr(defaults, f) for f, v in given.items()}
        problems: list[FieldViolation] = []
        seen: dict[str, str] = {}
        for field, name in names.items():
            if len(name) > MAX_COLUMN_NAME or not name.isprintable():
                problems.append(
                    FieldViolation(
                        field_prefix + field,
                        f"a column name of at most {MAX_COLUMN_NAME} printable characters",
                    )
                )
            elif (other := seen.setdefault(_folded(name), field)) != field:
                problems.append(
                    FieldViolation(
                        field_prefix + field,
                        f"names the same column as {field_prefix}{other}; each field needs "
                        "its own column",
                    )
                )
        system = patient_identifier_system.strip()
        if system and (len(system) > MAX_IDENTIFIER_SYSTEM or not _URI.fullmatch(system)):
            problems.append(
                FieldViolation(
                    field_prefix + "patient_identifier_system",
                    f"an absolute URI (at most {MAX_IDENTIFIER_SYSTEM} characters, no spaces)",
                )
            )
        if problems:
            raise InvalidArgument(problems, reason="MAPPING_INVALID")
        return cls(patient_identifier_system=system, **names)

    def columns(self) -> dict[str, str]:
        """Mapping field to column name, for the five columns."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "patient_identifier_system"
        }


def _folded(name: str) -> str:
    return name.strip().casefold()


@dataclass(frozen=True)
class _Header:
    """Where each mapped column is, and how many fields a row has."""

    width: int
    patient: int
    code: int
    value: int
    unit: int
    effective: int


def _resolve_header(
    record: list[str], mapping: LabMapping, field_prefix: str, csv_field: str
) -> _Header:
    if len(record) > MAX_COLUMNS:
        raise InvalidArgument(
            [FieldViolation(csv_field, f"the header has more than {MAX_COLUMNS} columns")],
            reason="CSV_INVALID",
        )
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(record):
        positions.setdefault(_folded(name), []).append(index)
    problems: list[FieldViolation] = []
    found: dict[str, int] = {}
    for field, name in mapping.columns().items():
        at = positions.get(_folded(name), [])
        if not at:
            problems.append(
                FieldViolation(field_prefix + field, "the CSV header has no column of this name")
            )
        elif len(at) > 1:
            problems.append(
                FieldViolation(
                    field_prefix + field, "the CSV header has more than one column of this name"
                )
            )
        else:
            found[field.removesuffix("_column")] = at[0]
    if problems:
        raise InvalidArgument(problems, reason="MAPPING_INVALID")
    return _Header(width=len(record), **found)


# -- rows -------------------------------------------------------------------------------------


class IssueCode(StrEnum):
    """FHIR issue-type codes used here."""

    REQUIRED = "required"
    VALUE = "value"
    CODE_INVALID = "code-invalid"
    STRUCTURE = "structure"
    NOT_FOUND = "not-found"
    MULTIPLE_MATCHES = "multiple-matches"
    FORBIDDEN = "forbidden"
    TOO_LONG = "too-long"


@dataclass(frozen=True)
class RowIssue:
    """One problem with a row; ``column`` is the mapped column's name, "" for the whole row.
    ``fatal``: the file was not read past this row."""

    row: int
    column: str
    code: IssueCode
    diagnostics: str
    fatal: bool = False

    @property
    def location(self) -> str:
        return f"row {self.row} / {self.column}" if self.column else f"row {self.row}"


@dataclass(frozen=True)
class LabRow:
    """A row whose every field passed its check."""

    row: int
    # The Patient id, or the identifier value in the mapping's system.
    patient: str
    code: str
    value: int | float
    # "" or one of FHIR's Quantity comparators.
    comparator: str
    unit: str
    effective: str


@dataclass(frozen=True)
class RejectedRow:
    row: int
    issues: tuple[RowIssue, ...]


ReadRow = LabRow | RejectedRow
Problem = tuple[IssueCode, str]
"""What is wrong with a field: the issue type and a fixed sentence."""


@dataclass(frozen=True)
class _Value:
    comparator: str
    number: int | float


def loinc_check_digit(digits: str) -> int:
    """The LOINC mod-10 check digit of the code's number part (Luhn: from the rightmost
    digit, every other digit doubled, the digits of all summed)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            digit = digit // 10 + digit % 10
        total += digit
    return (10 - total % 10) % 10


def is_loinc_code(code: str) -> bool:
    match = _LOINC_CODE.fullmatch(code)
    return match is not None and loinc_check_digit(match[1]) == int(match[2])


def _patient_issue(value: str, identifier_system: str) -> Problem | None:
    if not value:
        return IssueCode.REQUIRED, "the patient is required"
    if identifier_system:
        if len(value) > MAX_IDENTIFIER_VALUE or not value.isprintable():
            return IssueCode.VALUE, (
                f"not an identifier (at most {MAX_IDENTIFIER_VALUE} printable characters)"
            )
        return None
    if not is_fhir_id(value):
        return IssueCode.VALUE, "not a Patient id (1 to 64 of A-Z a-z 0-9 - .)"
    return None


def _code_issue(code: str) -> Problem | None:
    if not code:
        return IssueCode.REQUIRED, "the LOINC code is required"
    match = _LOINC_CODE.fullmatch(code)
    if match is None:
        return IssueCode.CODE_INVALID, (
            "not a LOINC code (up to 7 digits, a hyphen and a check digit, like 2345-7)"
        )
    if loinc_check_digit(match[1]) != int(match[2]):
        return IssueCode.CODE_INVALID, "the LOINC check digit does not match the code"
    return None


def _parse_value(text: str) -> _Value | Problem:
    if not text:
        return IssueCode.REQUIRED, "the value is required"
    match = _VALUE.fullmatch(text)
    if match is None:
        return IssueCode.VALUE, "not a number (digits, an optional decimal point and exponent)"
    try:
        number = Decimal(match[2])
    except InvalidOperation:  # the pattern admits only what Decimal reads
        return IssueCode.VALUE, "not a number"
    if number and not MIN_VALUE_MAGNITUDE <= abs(number) < MAX_VALUE_MAGNITUDE:
        return IssueCode.VALUE, "the value is out of range for a laboratory result"
    comparator = match[1] or ""
    if _INTEGER.fullmatch(match[2]):  # an integer as written: kept one
        return _Value(comparator, int(number))
    return _Value(comparator, float(number))


def _parse_effective(text: str, now: datetime) -> str | Problem:
    """The FHIR dateTime (seconds always given), or (issue code, diagnostics)."""
    if not text:
        return IssueCode.REQUIRED, "the effective date-time is required"
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        return IssueCode.VALUE, (
            "not an ISO 8601 date-time with a time zone (like 2024-03-01T08:30:00+01:00 or "
            "2024-03-01T07:30:00Z)"
        )
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return IssueCode.VALUE, "not a calendar date and time of day"
    offset = when.utcoffset()
    if offset is None or abs(offset) > timedelta(hours=14):
        return IssueCode.VALUE, "the time zone offset is beyond ±14:00"
    if when > now + FUTURE_TOLERANCE:
        return IssueCode.VALUE, "the effective date-time is in the future"
    if len(text) - len(match["zone"]) == len("2024-03-01T08:30"):  # no seconds: FHIR needs them
        text = text[: -len(match["zone"])] + ":00" + match["zone"]
    return text


def read_row(
    row: int, record: list[str], header: _Header, mapping: LabMapping, now: datetime
) -> ReadRow:
    """Checks one data record; every problem is reported, not just the first."""
    if len(record) != header.width:
        return RejectedRow(
            row,
            (
                RowIssue(
                    row,
                    "",
                    IssueCode.STRUCTURE,
                    f"has {len(record)} fields where the header has {header.width}",
                ),
            ),
        )
    patient = record[header.patient].strip()
    code = record[header.code].strip()
    value_text = record[header.value].strip()
    unit = record[header.unit].strip()
    effective_text = record[header.effective].strip()
    issues: list[RowIssue] = []

    def issue(column: str, found: Problem | None) -> None:
        if found is not None:
            issues.append(RowIssue(row, column, *found))

    issue(mapping.patient_column, _patient_issue(patient, mapping.patient_identifier_system))
    issue(mapping.code_column, _code_issue(code))
    value = _parse_value(value_text)
    if not isinstance(value, _Value):
        issue(mapping.value_column, value)
    if not unit:
        issue(mapping.unit_column, (IssueCode.REQUIRED, "the unit is required"))
    elif not is_ucum(unit):
        issue(
            mapping.unit_column,
            (IssueCode.CODE_INVALID, "not a UCUM unit code (case-sensitive, like mmol/L)"),
        )
    effective = _parse_effective(effective_text, now)
    if isinstance(effective, tuple):
        issue(mapping.effective_column, effective)
    if issues or not isinstance(value, _Value) or not isinstance(effective, str):
        return RejectedRow(row, tuple(issues))
    return LabRow(row, patient, code, value.number, value.comparator, unit, effective)


def observation(row: LabRow, patient_id: str) -> dict[str, Any]:
    """The row as a FHIR R4 Observation (JSON object) about Patient ``patient_id``."""
    quantity: dict[str, Any] = {"value": row.value}
    if row.comparator:
        quantity["comparator"] = row.comparator
    quantity.update({"unit": row.unit, "system": UCUM, "code": row.unit})
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY,
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": row.code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": row.effective,
        "valueQuantity": quantity,
    }


# -- reading the file a piece at a time -------------------------------------------------------


class _State(Enum):
    FIELD_START = 0
    UNQUOTED = 1
    QUOTED = 2
    QUOTE_IN_QUOTED = 3  # a quote inside a quoted field: closing it, or the first of ""


class RecordSplitter:
    """Cuts text into whole CSV records (each with its line end), as the csv module would
    read them: a line feed ends the record unless it is inside a quoted field, and a quote
    opens a quoted field only at the start of a field. Keeps the unfinished record only."""

    def __init__(self) -> None:
        self._partial: list[str] = []
        self._partial_chars = 0
        self._state = _State.FIELD_START

    @property
    def pending_chars(self) -> int:
        return self._partial_chars

    def feed(self, text: str) -> Iterator[str]:
        start = 0
        while start < len(text):
            end = text.find("\n", start)
            line = text[start:] if end < 0 else text[start : end + 1]
            start += len(line)
            if self._partial_chars + len(line) > MAX_RECORD_CHARS:
                self.clear()
                raise RecordTooLong
            self._scan(line)
            self._partial.append(line)
            self._partial_chars += len(line)
            if end >= 0 and self._state is not _State.QUOTED:
                yield self._take()

    def finish(self) -> str:
        """What is left: the last record, without a line end (may be ""). A record is never
        longer than :data:`MAX_RECORD_CHARS`: :meth:`feed` raises :class:`RecordTooLong`
        first."""
        return self._take()

    def clear(self) -> None:
        self._partial.clear()
        self._partial_chars = 0
        self._state = _State.FIELD_START

    def _take(self) -> str:
        record = "".join(self._partial)
        self.clear()
        return record

    def _scan(self, line: str) -> None:
        state = self._state
        if '"' not in line:  # most lines: only the last character matters
            if state is not _State.QUOTED and line:
                self._state = self._after_field(line[-1])
            return
        for char in line:
            if state is _State.QUOTED:
                if char == '"':
                    state = _State.QUOTE_IN_QUOTED
            elif state is _State.QUOTE_IN_QUOTED:
                state = _State.QUOTED if char == '"' else self._after_field(char)
            elif char == '"' and state is _State.FIELD_START:
                state = _State.QUOTED
            else:
                state = self._after_field(char)
        self._state = state

    @staticmethod
    def _after_field(char: str) -> _State:
        return _State.FIELD_START if char == "," else _State.UNQUOTED


class RecordTooLong(Exception):
    """A record passed :data:`MAX_RECORD_CHARS`."""


class _Records:
    """The iterator the csv module reads from: one whole record at a time, pushed in."""

    def __init__(self) -> None:
        self.queue: deque[str] = deque()

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> str:
        if not self.queue:
            raise StopIteration
        return self.queue.popleft()


class LabCsvReader:
    """Reads a CSV lab file fed in pieces: :meth:`feed` (bytes, UTF-8 with or without a
    byte order mark) or :meth:`feed_text`, then :meth:`finish`; each returns the rows
    completed by then, in file order. The header is read (and the mapping checked against it,
    INVALID_ARGUMENT naming the mapping's field) before the first row comes out.

    After a fatal issue (bytes that are not UTF-8, a record too long) nothing more is read;
    :attr:`stopped` says so.
    """

    def __init__(
        self,
        mapping: LabMapping,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        field_prefix: str = "mapping.",
        csv_field: str = "csv",
    ) -> None:
        self._mapping = mapping
        self._now = now
        self._field_prefix = field_prefix
        self._csv_field = csv_field
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._first_text = True
        self._splitter = RecordSplitter()
        self._records = _Records()
        self._csv = csv.reader(self._records, **_CSV_DIALECT)  # type: ignore[arg-type]
        self._header: _Header | None = None
        self.rows_read = 0
        self.stopped = False

    @property
    def header_read(self) -> bool:
        return self._header is not None

    @property
    def pending_chars(self) -> int:
        """The characters held of a record not yet complete: all the reader keeps of the
        file (at most :data:`MAX_RECORD_CHARS`)."""
        return self._splitter.pending_chars

    def feed(self, data: bytes) -> list[ReadRow]:
        if self.stopped:
            return []
        held, _ = self._decoder.getstate()  # the start of a character cut by the last piece
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as error:
            # The rows before the bad bytes are read; the row holding them stops the reading.
            rows = self.feed_text((held + data)[: error.start].decode("utf-8"))
            if self.stopped:
                return rows
            return rows + self._stop("the file is not UTF-8 text; nothing after this row was read")
        return self.feed_text(text)

    def feed_text(self, text: str) -> list[ReadRow]:
        if self.stopped or not text:
            return []
        if self._first_text:
            self._first_text = False
            text = text.removeprefix("\ufeff")
        return self._read(self._splitter.feed(text))

    def finish(self) -> list[ReadRow]:
        """The last row (one without a line end), once the whole file was fed; the file
        must have had a header."""
        if self.stopped:
            return []
        try:
            text = self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return self._stop("the file is not UTF-8 text (it ends inside a character)")
        rows = self.feed_text(text)
        if not self.stopped:
            rows += self._read(self._last_record())
        if self._header is None and not self.stopped:
            raise InvalidArgument(
                [FieldViolation(self._csv_field, "no header row: the CSV file is empty")],
                reason="CSV_INVALID",
            )
        return rows

    def _last_record(self) -> Iterator[str]:
        if last := self._splitter.finish():
            yield last

    def _read(self, records: Iterator[str]) -> list[ReadRow]:
        rows: list[ReadRow] = []
        try:
            for record in records:
                if not record.strip():
                    continue  # a blank line is no row
                self._records.queue.append(record)
                try:
                    parsed: list[str] | None = next(self._csv)
                except csv.Error:
                    parsed = None
                finally:
                    self._records.queue.clear()
                if self._header is None:
                    self._header = self._read_header(parsed)
                    continue
                self.rows_read += 1
                rows.append(self._read_row(parsed))
        except RecordTooLong:
            rows += self._stop(
                f"a row longer than {MAX_RECORD_CHARS} characters (an unclosed quote?)"
            )
        return rows

    def _read_header(self, parsed: list[str] | None) -> _Header:
        if parsed is None:
            raise InvalidArgument(
                [FieldViolation(self._csv_field, "the header row is not RFC 4180 CSV")],
                reason="CSV_INVALID",
            )
        return _resolve_header(parsed, self._mapping, self._field_prefix, self._csv_field)

    def _read_row(self, parsed: list[str] | None) -> ReadRow:
        row = self.rows_read
        assert self._header is not None
        if parsed is None:
            return RejectedRow(
                row,
                (
                    RowIssue(
                        row,
                        "",
                        IssueCode.STRUCTURE,
                        "not RFC 4180 CSV (text after a closing quote, a quote left open, or "
                        "a bare carriage return)",
                    ),
                ),
            )
        return read_row(row, parsed, self._header, self._mapping, self._now())

    def _stop(self, diagnostics: str) -> list[ReadRow]:
        """Reads nothing more: the row being read gets a fatal issue (it counts as read).
        Before the header, the whole file is refused (INVALID_ARGUMENT)."""
        self.stopped = True
        self._splitter.clear()
        if self._header is None:
            raise InvalidArgument(
                [FieldViolation(self._csv_field, diagnostics)], reason="CSV_INVALID"
            )
        self.rows_read += 1
        row = self.rows_read
        issue = RowIssue(row, "", IssueCode.STRUCTURE, diagnostics, fatal=True)
        return [RejectedRow(row, (issue,))]
