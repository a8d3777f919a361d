"""HL7 v2 messages (v2.3 to v2.8) read into what the record stores: ADT^A01/A04/A08 give a
Patient (and an Encounter), ORU^R01 Observations and a DiagnosticReport per order.

python-hl7 splits the message and decodes escapes (``\\T\\`` → ``&``); it checks nothing, so
the checks interface engines expect are here: required segments and fields, dates (HL7 DTM,
real calendar dates, birth dates not in the future), numeric OBX-5 for NM, units, codes,
status values. Each problem is an :class:`Hl7Issue` located the HL7 way (``PID-7``,
``OBX[2]-5``: the second OBX, field 5) whose text never repeats the value: messages carry
PHI, issues go back to the sender's logs.

Times without a UTC offset are read in the offset of MSH-7 (the message's own time), else
UTC, with a warning: FHIR requires an offset once a time has hours.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import hl7

SUPPORTED_VERSIONS: Final = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)
SUPPORTED_TYPES: Final = frozenset({"ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01"})
# Bigger messages are refused whole (a lab's ORU rarely passes a few hundred kB).
MAX_MESSAGE_BYTES: Final = 1 << 20
MAX_OBSERVATIONS: Final = 500

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
# Identifier systems for assigning authorities without a universal id, and visit numbers.
LOCAL_SYSTEM: Final = "urn:medledger:hl7v2:"

_CODING_SYSTEMS: Final = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "UCUM": UCUM,
}
_GENDER: Final = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown"}
_PATIENT_CLASS: Final = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
}
_RESULT_STATUS: Final = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "X": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
}
_REPORT_STATUS: Final = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "I": "registered",
    "S": "partial",
    "A": "partial",
    "X": "cancelled",
}
_INTERPRETATIONS: Final = frozenset({"H", "L", "N", "A", "HH", "LL", "AA", "<", ">", "S", "R", "I"})
_VALUE_TYPES: Final = frozenset(
    {"NM", "ST", "TX", "FT", "CE", "CWE", "CNE", "SN", "DT", "TS", "DTM"}
)
_DTM: Final = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})"
    r"(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$"
)
_NUMBER: Final = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
# UCUM's grammar uses printable ASCII without spaces; brackets must balance.
_UCUM_UNIT: Final = re.compile(r"^[!-~]{1,64}$")
_LOINC_CODE: Final = re.compile(r"^\d{1,7}-\d$")


@dataclass(frozen=True)
class Hl7Issue:
    severity: str  # "fatal" | "error" | "warning"
    code: str  # FHIR issue-type code
    location: str  # "PID-7", "OBX[2]-5"
    diagnostics: str  # never the value

    @property
    def blocking(self) -> bool:
        return self.severity in {"fatal", "error"}


@dataclass(frozen=True)
class Hl7Identifier:
    system: str
    value: str
    type_code: str = ""


@dataclass
class PatientData:
    identifiers: list[Hl7Identifier]
    resource: dict[str, Any]  # FHIR Patient without id


@dataclass
class OrderData:
    """One OBR with its OBX: a DiagnosticReport and its Observations (FHIR, without the
    subject, which the caller adds once the patient is known)."""

    report: dict[str, Any]
    observations: list[tuple[str, dict[str, Any]]]  # (location "OBX[n]", Observation)
    location: str


@dataclass
class Hl7Message:
    message_type: str = ""
    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    version: str = ""
    patient: PatientData | None = None
    encounter: dict[str, Any] | None = None  # FHIR Encounter without subject
    orders: list[OrderData] = field(default_factory=list)
    issues: list[Hl7Issue] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return any(issue.blocking for issue in self.issues)


def normalise_segments(text: str) -> str:
    """Segments separated by CR, as parsers expect: CRLF and LF become CR, blank lines go."""
    lines = re.split(r"\r\n|\n|\r", text)
    return "\r".join(line for line in lines if line.strip())


class _Reader:
    """Field access that never raises on a missing repetition or component."""

    def __init__(self, message: Any, issues: list[Hl7Issue], default_offset: timezone) -> None:
        self._message = message
        self.issues = issues
        self.offset = default_offset

    def add(self, severity: str, code: str, location: str, diagnostics: str) -> None:
        self.issues.append(Hl7Issue(severity, code, location, diagnostics))

    @staticmethod
    def value(segment: Any, field_no: int, component: int = 1, repetition: int = 1) -> str:
        try:
            return str(segment.extract_field(1, field_no, repetition, component, 1)).strip()
        except (IndexError, KeyError, TypeError, ValueError):
            return ""

    @staticmethod
    def repetitions(segment: Any, field_no: int) -> int:
        try:
            found = segment[field_no]
        except IndexError:
            return 0
        if not str(found):
            return 0
        return len(found) if isinstance(found, hl7.Repetition) or _is_repeated(found) else 1

    def required(self, segment: Any, field_no: int, where: str, what: str) -> str:
        text = self.value(segment, field_no)
        if not text:
            self.add("error", "required", where, f"{what} is required")
        return text

    def datetime_value(
        self, text: str, where: str, *, past_only: bool = False, as_date: bool = False
    ) -> str | None:
        """The FHIR date/dateTime of an HL7 DTM, or None (and an issue) when invalid."""
        if not text:
            return None
        parsed = _parse_dtm(text, self.offset)
        if isinstance(parsed, str):
            self.add("error", "value", where, parsed)
            return None
        parts, moment = parsed
        if past_only and moment > datetime.now(UTC) + timedelta(days=1):
            self.add("error", "value", where, "lies in the future")
            return None
        if "h" not in parts or as_date:
            return _date_text(parts)
        if "tz" not in parts:
            self.add(
                "warning", "value", where, "has no UTC offset: read in MSH-7's offset (else UTC)"
            )
        return moment.isoformat()


def _utc_offset(text: str) -> timezone:
    """``+HHMM`` / ``-HHMM`` as a timezone."""
    sign = 1 if text[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[3:5])))


def _parse_dtm(text: str, default_offset: timezone) -> tuple[dict[str, str], datetime] | str:
    """The DTM's parts and its moment (aware), or what is wrong with it."""
    match = _DTM.fullmatch(text)
    if match is None:
        return "is not an HL7 date/time (YYYY[MM[DD[HHMM[SS]]]][+ZZZZ])"
    parts = {k: v for k, v in match.groupdict().items() if v is not None}
    try:
        offset = _utc_offset(parts["tz"]) if "tz" in parts else default_offset
        moment = datetime(
            int(parts["y"]),
            int(parts.get("mo", 1)),
            int(parts.get("d", 1)),
            int(parts.get("h", 0)),
            int(parts.get("mi", 0)),
            int(parts.get("s", 0)),
            tzinfo=offset,
        )
    except ValueError:
        return "is not a calendar date/time"
    if moment.year < 1850:
        return "lies before 1850"
    return parts, moment


def _date_text(parts: dict[str, str]) -> str:
    """A FHIR date at the DTM's precision (year, month or day)."""
    text = parts["y"]
    for key in ("mo", "d"):
        if key not in parts:
            break
        text += "-" + parts[key]
    return text


def _is_repeated(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], list)


def _coding(reader: _Reader, segment: Any, field_no: int, where: str) -> dict[str, Any] | None:
    """A FHIR Coding from a CE/CWE field (code^text^system)."""
    code = reader.value(segment, field_no, 1)
    if not code:
        return None
    text = reader.value(segment, field_no, 2)
    system_name = reader.value(segment, field_no, 3).upper()
    system = _CODING_SYSTEMS.get(system_name)
    coding: dict[str, Any] = {"code": code}
    if system is None:
        system = f"{LOCAL_SYSTEM}codes:{_token(system_name) or 'local'}"
    if system == LOINC and not _LOINC_CODE.fullmatch(code):
        reader.add("error", "code-invalid", where, "is not a LOINC code (digits, '-', check digit)")
    coding["system"] = system
    if text:
        coding["display"] = text
    return coding


def _token(text: str) -> str:
    """``text`` reduced to what an identifier system URN may carry."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:64]


def _identifier_system(reader: _Reader, segment: Any, repetition: int, facility: str) -> str:
    """PID-3's assigning authority (CX-4, an HD) as a FHIR identifier system."""
    namespace = reader.value(segment, 3, 4, repetition)
    universal = ""
    kind = ""
    try:
        authority = segment[3][repetition - 1][3] if _is_repeated(segment[3]) else segment[3][3]
        universal = str(authority[1]).strip() if len(authority) > 1 else ""
        kind = str(authority[2]).strip().upper() if len(authority) > 2 else ""
    except (IndexError, TypeError):
        pass
    if universal and kind == "ISO":
        return f"urn:oid:{universal}"
    if universal and kind in {"URI", "URL"}:
        return universal
    return f"{LOCAL_SYSTEM}{_token(namespace or facility) or 'unknown'}"


def _address(reader: _Reader, pid: Any) -> dict[str, Any]:
    """PID-11 (XAD: street^other^city^state^zip^country) as a FHIR Address; {} if empty."""
    lines = [line for line in (reader.value(pid, 11, 1), reader.value(pid, 11, 2)) if line]
    parts = {
        key: reader.value(pid, 11, component)
        for key, component in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6))
    }
    address: dict[str, Any] = {"line": lines} if lines else {}
    address.update({key: value for key, value in parts.items() if value})
    return address


def _name(reader: _Reader, pid: Any) -> dict[str, Any]:
    """PID-5 (XPN: family^given^middle) as a FHIR HumanName; {} and an issue if empty."""
    family, given = reader.value(pid, 5, 1), reader.value(pid, 5, 2)
    middle = reader.value(pid, 5, 3)
    if not family and not given:
        reader.add("error", "required", "PID-5", "a patient name is required")
        return {}
    name: dict[str, Any] = {"use": "official"}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, middle) if g]
    return name


def _patient(reader: _Reader, pid: Any, facility: str) -> PatientData:
    identifiers: list[Hl7Identifier] = []
    for repetition in range(1, max(reader.repetitions(pid, 3), 1) + 1):
        value = reader.value(pid, 3, 1, repetition)
        if not value:
            continue
        system = _identifier_system(reader, pid, repetition, facility)
        identifiers.append(Hl7Identifier(system, value, reader.value(pid, 3, 5, repetition)))
    if not identifiers:
        reader.add("error", "required", "PID-3", "a patient identifier is required")
    resource: dict[str, Any] = {"resourceType": "Patient"}
    resource["identifier"] = [
        {
            "system": i.system,
            "value": i.value,
            **(
                {"type": {"coding": [{"system": V2_0203, "code": i.type_code}]}}
                if i.type_code
                else {}
            ),
        }
        for i in identifiers
    ]
    name = _name(reader, pid)
    if name:
        resource["name"] = [name]
    birth = reader.datetime_value(reader.value(pid, 7), "PID-7", past_only=True, as_date=True)
    if birth:
        resource["birthDate"] = birth
    gender = reader.value(pid, 8).upper()
    if gender:
        if gender in _GENDER:
            resource["gender"] = _GENDER[gender]
        else:
            reader.add(
                "error", "code-invalid", "PID-8", "is not an HL7 administrative sex (M, F, O, A, U)"
            )
    address = _address(reader, pid)
    if address:
        resource["address"] = [address]
    phone = reader.value(pid, 13, 1)
    if phone:
        resource["telecom"] = [{"system": "phone", "value": phone}]
    return PatientData(identifiers, resource)


def _encounter(reader: _Reader, pv1: Any, event: str, facility: str) -> dict[str, Any]:
    patient_class = reader.required(pv1, 2, "PV1-2", "the patient class")
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "in-progress" if event == "A01" else "arrived",
    }
    if patient_class and patient_class.upper() not in _PATIENT_CLASS:
        reader.add(
            "error", "code-invalid", "PV1-2", "is not an HL7 patient class (I, O, E, P, R, B)"
        )
    code, display = _PATIENT_CLASS.get(patient_class.upper(), ("AMB", "ambulatory"))
    resource["class"] = {"system": ACT_CODE, "code": code, "display": display}
    visit = reader.value(pv1, 19)
    if visit:
        resource["identifier"] = [
            {"system": f"{LOCAL_SYSTEM}{_token(facility)}:visit", "value": visit}
        ]
    admitted = reader.datetime_value(reader.value(pv1, 44), "PV1-44", past_only=True)
    if admitted:
        resource["period"] = {"start": admitted}
    return resource


def _observation(
    reader: _Reader, obx: Any, where: str, fallback_time: str | None
) -> dict[str, Any] | None:
    value_type = reader.required(obx, 2, f"{where}-2", "the value type").upper()
    if value_type and value_type not in _VALUE_TYPES:
        reader.add("error", "code-invalid", f"{where}-2", "is not a supported value type")
    coding = _coding(reader, obx, 3, f"{where}-3")
    if coding is None:
        reader.add("error", "required", f"{where}-3", "the observation identifier is required")
    status_code = reader.required(obx, 11, f"{where}-11", "the result status").upper()
    status = _RESULT_STATUS.get(status_code)
    if status_code and status is None:
        reader.add("error", "code-invalid", f"{where}-11", "is not an HL7 result status")
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status or "final",
        "category": [
            {
                "coding": [
                    {"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}
                ]
            }
        ],
        "code": {"coding": [coding] if coding else []},
    }
    _observation_value(reader, obx, where, value_type, status, resource)
    reference_range = reader.value(obx, 7)
    if reference_range:
        resource["referenceRange"] = [{"text": reference_range}]
    flag = reader.value(obx, 8).upper()
    if flag:
        if flag in _INTERPRETATIONS:
            resource["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": flag}]}]
        else:
            reader.add(
                "warning", "code-invalid", f"{where}-8", "is not an HL7 abnormal flag; left out"
            )
    effective = reader.datetime_value(reader.value(obx, 14), f"{where}-14", past_only=True)
    if effective or fallback_time:
        resource["effectiveDateTime"] = effective or fallback_time
    return resource


def _observation_value(
    reader: _Reader,
    obx: Any,
    where: str,
    value_type: str,
    status: str | None,
    resource: dict[str, Any],
) -> None:
    """OBX-5 (with OBX-6 for NM) as the Observation's value[x]."""
    raw = reader.value(obx, 5)
    if not raw:
        if status not in {"cancelled", "entered-in-error"}:
            reader.add("error", "required", f"{where}-5", "the observation value is required")
        return
    if value_type == "NM":
        quantity = _quantity(reader, obx, where, raw)
        if quantity is not None:
            resource["valueQuantity"] = quantity
    elif value_type in {"CE", "CWE", "CNE"}:
        value_coding = _coding(reader, obx, 5, f"{where}-5")
        if value_coding:
            resource["valueCodeableConcept"] = {"coding": [value_coding]}
    elif value_type in {"DT", "TS", "DTM"}:
        when = reader.datetime_value(raw, f"{where}-5")
        if when:
            resource["valueDateTime"] = when
    else:
        resource["valueString"] = raw


def _quantity(reader: _Reader, obx: Any, where: str, raw: str) -> dict[str, Any] | None:
    if not _NUMBER.fullmatch(raw):
        reader.add("error", "value", f"{where}-5", "is not a number (value type NM)")
        return None
    quantity: dict[str, Any] = {"value": float(raw) if "." in raw else int(raw)}
    unit = reader.value(obx, 6)
    if not unit:
        reader.add("warning", "required", f"{where}-6", "a numeric result has no unit")
    elif not _UCUM_UNIT.fullmatch(unit) or unit.count("[") != unit.count("]"):
        reader.add("error", "value", f"{where}-6", "is not a UCUM unit")
    else:
        quantity.update({"unit": unit, "system": UCUM, "code": unit})
    return quantity


def _orders(reader: _Reader, message: Any) -> list[OrderData]:
    orders: list[OrderData] = []
    current: OrderData | None = None
    obr_count = obx_count = 0
    observed_at: str | None = None
    for segment in message:
        name = str(segment[0])
        if name == "OBR":
            obr_count += 1
            where = f"OBR[{obr_count}]" if obr_count > 1 else "OBR"
            coding = _coding(reader, segment, 4, f"{where}-4")
            if coding is None:
                reader.add(
                    "error",
                    "required",
                    f"{where}-4",
                    "the universal service identifier is required",
                )
            observed_at = reader.datetime_value(
                reader.value(segment, 7), f"{where}-7", past_only=True
            )
            status_code = reader.value(segment, 25).upper()
            status = _REPORT_STATUS.get(status_code or "F")
            if status is None:
                reader.add("error", "code-invalid", f"{where}-25", "is not an HL7 result status")
            report: dict[str, Any] = {
                "resourceType": "DiagnosticReport",
                "status": status or "final",
                "category": [
                    {"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}
                ],
                "code": {"coding": [coding] if coding else []},
            }
            filler = reader.value(segment, 3)
            if filler:
                report["identifier"] = [{"system": f"{LOCAL_SYSTEM}filler-order", "value": filler}]
            if observed_at:
                report["effectiveDateTime"] = observed_at
            current = OrderData(report, [], where)
            orders.append(current)
        elif name == "OBX":
            obx_count += 1
            where = f"OBX[{obx_count}]"
            if current is None:
                reader.add("error", "structure", where, "an OBX must follow an OBR")
                continue
            observation = _observation(reader, segment, where, observed_at)
            if observation is not None:
                current.observations.append((where, observation))
    if not orders:
        reader.add("error", "required", "OBR", "an ORU^R01 needs at least one OBR")
    elif obx_count > MAX_OBSERVATIONS:
        reader.add(
            "error", "too-costly", "OBX", f"at most {MAX_OBSERVATIONS} OBX segments a message"
        )
    return orders


def parse_message(text: str) -> Hl7Message:
    """Reads and checks one message; ``refused`` when any issue is an error."""
    result = Hl7Message()
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_MESSAGE_BYTES:
        result.issues.append(
            Hl7Issue("fatal", "too-long", "MSH", f"a message is at most {MAX_MESSAGE_BYTES} bytes")
        )
        return result
    normalised = normalise_segments(text)
    if not normalised.startswith("MSH") or len(normalised) < 8:
        result.issues.append(
            Hl7Issue("fatal", "structure", "MSH", "a message starts with an MSH segment")
        )
        return result
    try:
        message = hl7.parse(normalised)
    except Exception:  # noqa: BLE001 - python-hl7 raises assorted errors on bad framing
        result.issues.append(Hl7Issue("fatal", "structure", "MSH", "the message cannot be parsed"))
        return result
    msh = message.segment("MSH")
    reader = _Reader(message, result.issues, UTC)
    _read_header(reader, msh, result)
    if any(i.severity == "fatal" for i in result.issues):
        return result
    sent = _DTM.fullmatch(reader.value(msh, 7))
    if sent and sent.group("tz"):
        reader.offset = _utc_offset(sent.group("tz"))
    _read_body(reader, message, result)
    return result


def _read_body(reader: _Reader, message: Any, result: Hl7Message) -> None:
    """PID, then PV1 (ADT) or the OBR/OBX groups (ORU)."""
    facility = result.sending_facility or result.sending_application
    pids = list(_segments(message, "PID"))
    if not pids:
        reader.add("error", "required", "PID", "a PID segment is required")
        return
    if len(pids) > 1:
        reader.add("error", "structure", "PID[2]", "one patient a message")
    result.patient = _patient(reader, pids[0], facility)
    event = result.message_type.split("^")[1]
    if not result.message_type.startswith("ADT"):
        result.orders = _orders(reader, message)
    elif event in {"A01", "A04"}:
        pv1s = list(_segments(message, "PV1"))
        if pv1s:
            result.encounter = _encounter(reader, pv1s[0], event, facility)
        else:
            reader.add(
                "error", "required", "PV1", "an admission or registration needs a PV1 segment"
            )


def _read_header(reader: _Reader, msh: Any, result: Hl7Message) -> None:
    """MSH: type, control id, sender, version (fatal issues when unusable)."""
    result.message_type = "^".join(
        p for p in (reader.value(msh, 9, 1), reader.value(msh, 9, 2)) if p
    )
    result.control_id = reader.value(msh, 10)
    result.sending_application = reader.value(msh, 3)
    result.sending_facility = reader.value(msh, 4)
    result.version = reader.value(msh, 12)
    if not result.control_id:
        reader.add("fatal", "required", "MSH-10", "the message control id is required")
    if result.version not in SUPPORTED_VERSIONS:
        reader.add("fatal", "not-supported", "MSH-12", "HL7 versions 2.3 to 2.8 are read")
    if result.message_type not in SUPPORTED_TYPES:
        reader.add(
            "fatal", "not-supported", "MSH-9", "ADT^A01, ADT^A04, ADT^A08 and ORU^R01 are read"
        )


def _segments(message: Any, name: str) -> Iterator[Any]:
    for segment in message:
        if str(segment[0]) == name:
            yield segment
