"""A patient summary shaped like the HL7 International Patient Summary (IPS), built from a
patient export (``ExportPatient``, docs/export-format.md): pure functions, no I/O.

:func:`build_summary` picks what a summary shows from the export's current resources:

- **problems** (LOINC 11450-4): Conditions whose clinical status is active, recurrence or
  relapse (or not stated); resolved, inactive and in-remission ones go to **past problems**
  (11348-0), a section only present when it has entries;
- **medications** (10160-0): MedicationRequests and MedicationStatements, active ones first;
- **allergies** (48765-2): AllergyIntolerances;
- **results** (30954-2) and **vital signs** (8716-3): the most recent Observation per code
  (the first coding's system and code, else the code's text), vital-signs category apart;
- **risk assessments**: the most recent RiskAssessment per model, as medledger's inference
  writes them (a section of medledger's own code: IPS has none for them).

Anything marked entered-in-error, refuted or cancelled is left out. Every other section is
always there; an empty one carries an ``emptyReason`` and a narrative saying so.

:func:`summary_bundle` writes it as a FHIR R4 Bundle of type ``document``: the Composition
first (LOINC 60591-5 Patient summary Document, each section with its code, a generated XHTML
table and ``entry`` references), then the Patient, the Device that assembled it (the author),
a Provenance (target the Composition, each source resource an entity), the sections'
resources, and the resources those refer to that the export holds (the Encounter, the
Observations a risk assessment was based on, its AI Provenance). Each resource from the export
is copied byte for byte with its ``fullUrl`` (``urn:uuid:<id>``) and its ``ledger-proof``
extension, so every line of the summary can be checked exactly as an export entry is
(:func:`proven_entries` gives them as a collection Bundle for
:func:`medledger.verify.export.verify_export`). The Composition refers to them by fullUrl,
which is how references resolve inside a Bundle.

Same export, same summary: its ids are derived from the export's content, its time is the
export's, and nothing depends on the clock or on dict order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final

from google.protobuf.message import DecodeError

from medledger.api.ledger.v1 import ledger_pb2
from medledger.verify.export import FULL_URL_PREFIX, LEDGER_PROOF_URL, is_pseudonymised

LOINC: Final = "http://loinc.org"
SECTION_SYSTEM: Final = "https://medledger.dev/fhir/CodeSystem/summary-section"
LIST_EMPTY_REASON: Final = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
PREDICTION_LEDGER_URL: Final = "https://medledger.dev/fhir/StructureDefinition/ledger-entry"
DOCUMENT_TYPE: Final = {"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}
TITLE: Final = "Patient summary"
AUTHOR_NAME: Final = "medledger report summary"
# The namespace of every id a summary derives (uuid5): the Bundle, the Composition, the
# Provenance, the author Device.
ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://medledger.dev/summary")
XHTML: Final = "http://www.w3.org/1999/xhtml"

_ERROR_STATUSES: Final = frozenset({"entered-in-error", "cancelled", "refuted"})
_CURRENT_PROBLEM: Final = frozenset({"active", "recurrence", "relapse"})
_ACTIVE_MEDICATION: Final = frozenset({"active", "on-hold", "intended"})
# A FHIR date or dateTime: year, month, day, time with an offset, each part after the year
# optional in order (https://hl7.org/fhir/R4/datatypes.html#dateTime).
_DATE_TIME: Final = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)


def _cli_version() -> str:
    try:
        return metadata.version("medledger-cli")
    except metadata.PackageNotFoundError:
        return "unknown"


class SummaryError(ValueError):
    """The export cannot be summarised (not an export, pseudonymised, no single Patient)."""


@dataclass(frozen=True)
class SectionSpec:
    """A summary section: its key, title, code and the columns of its table."""

    key: str
    title: str
    code: Mapping[str, str]
    columns: tuple[str, ...]
    always: bool = True
    """False: the section is left out when it has no entries."""


_LEDGER_COLUMN: Final = "Ledger"
SECTIONS: Final = (
    SectionSpec(
        "problems",
        "Active problems",
        {"system": LOINC, "code": "11450-4", "display": "Problem list - Reported"},
        ("Problem", "Status", "Onset", _LEDGER_COLUMN),
    ),
    SectionSpec(
        "past_problems",
        "Past problems",
        {"system": LOINC, "code": "11348-0", "display": "History of Past illness Narrative"},
        ("Problem", "Status", "Onset", _LEDGER_COLUMN),
        always=False,
    ),
    SectionSpec(
        "medications",
        "Medications",
        {"system": LOINC, "code": "10160-0", "display": "History of Medication use Narrative"},
        ("Medication", "Status", "Dosage", "Since", _LEDGER_COLUMN),
    ),
    SectionSpec(
        "allergies",
        "Allergies and intolerances",
        {"system": LOINC, "code": "48765-2", "display": "Allergies and adverse reactions Document"},
        ("Substance", "Kind", "Criticality", "Reaction", "Status", _LEDGER_COLUMN),
    ),
    SectionSpec(
        "results",
        "Results (latest of each test)",
        {
            "system": LOINC,
            "code": "30954-2",
            "display": "Relevant diagnostic tests/laboratory data Narrative",
        },
        ("Test", "Value", "When", _LEDGER_COLUMN),
    ),
    SectionSpec(
        "vital_signs",
        "Vital signs (latest of each)",
        {"system": LOINC, "code": "8716-3", "display": "Vital signs"},
        ("Measurement", "Value", "When", _LEDGER_COLUMN),
    ),
    SectionSpec(
        "risk_assessments",
        "Risk assessments (decision support, not a diagnosis)",
        {
            "system": SECTION_SYSTEM,
            "code": "risk-assessments",
            "display": "Risk assessments made by medledger's models",
        },
        ("Assessment", "Prediction", "When", "Model", _LEDGER_COLUMN),
    ),
)
SECTION_BY_KEY: Final = {spec.key: spec for spec in SECTIONS}


@dataclass(frozen=True)
class LedgerLine:
    """Where the version a summary line shows was ledgered, read from its ledger proof."""

    version: int
    leaf_index: int | None
    """None: the entry carries no (readable) ledger proof."""
    event: str
    prediction_leaf: int | None = None
    """A RiskAssessment's INFERENCE_MADE leaf, which proves the prediction itself."""

    def text(self) -> str:
        where = f"leaf {self.leaf_index}" if self.leaf_index is not None else "no ledger proof"
        line = f"v{self.version}, {where}"
        if self.prediction_leaf is not None:
            line += f"; prediction leaf {self.prediction_leaf}"
        return line


@dataclass(frozen=True)
class Item:
    """One line of a section: the export entry it shows and the cells of its row (the last
    cell is the ledger column)."""

    entry: Mapping[str, Any]
    cells: tuple[str, ...]
    ledger: LedgerLine

    @property
    def full_url(self) -> str:
        return str(self.entry["fullUrl"])

    @property
    def reference(self) -> str:
        resource = self.entry["resource"]
        return f"{resource['resourceType']}/{resource['id']}"


@dataclass(frozen=True)
class Section:
    spec: SectionSpec
    items: tuple[Item, ...]


@dataclass(frozen=True)
class PatientHeader:
    """What the summary's header says about the patient."""

    patient_id: str
    name: str
    birth_date: str
    gender: str
    identifiers: tuple[str, ...]
    ledger: LedgerLine


@dataclass(frozen=True)
class Summary:
    bundle_id: str
    timestamp: str
    """The export's timestamp: the record as of then."""
    export_id: str
    patient: PatientHeader
    patient_entry: Mapping[str, Any]
    sections: tuple[Section, ...]
    supporting: tuple[Mapping[str, Any], ...]
    """Resources the sections' resources refer to, from the export, in its order."""
    author_version: str = field(default_factory=_cli_version)

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.spec.key == key), None)


# --- building ---------------------------------------------------------------------------------


def build_summary(export: Mapping[str, Any]) -> Summary:
    """The summary of the export (a FHIR collection Bundle as ``ExportPatient`` returns it);
    :class:`SummaryError` when it is not one, is pseudonymised or has not exactly one
    Patient."""
    if export.get("resourceType") != "Bundle" or export.get("type") != "collection":
        raise SummaryError("not a patient export: a FHIR Bundle of type collection is expected")
    if is_pseudonymised(export):
        raise SummaryError("the export is pseudonymised: a summary is built from the record")
    raw_entries = export.get("entry", [])
    if not isinstance(raw_entries, list):
        raise SummaryError("not a patient export: entry is not a list")
    entries = [e for e in raw_entries if _usable(e)]
    patients = [e for e in entries if e["resource"]["resourceType"] == "Patient"]
    if len(patients) != 1:
        raise SummaryError(f"the export holds {len(patients)} Patient resources, not exactly one")
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)

    def of(*types: str) -> list[Mapping[str, Any]]:
        return [e for t in types for e in by_type.get(t, []) if not _in_error(e["resource"])]

    conditions = of("Condition")
    current = [e for e in conditions if _condition_current(e["resource"])]
    past = [e for e in conditions if not _condition_current(e["resource"])]
    observations = of("Observation")
    vital = [e for e in observations if _is_vital_sign(e["resource"])]
    results = [e for e in observations if not _is_vital_sign(e["resource"])]
    items = {
        "problems": _items(_sorted(current, _onset_key), _problem_cells),
        "past_problems": _items(_sorted(past, _onset_key), _problem_cells),
        "medications": _items(
            _sorted(of("MedicationRequest", "MedicationStatement"), _medication_key),
            _medication_cells,
        ),
        "allergies": _items(_sorted(of("AllergyIntolerance"), _allergy_key), _allergy_cells),
        "results": _items(
            _sorted(_latest_per(results, _observation_code), _code_text), _observation_cells
        ),
        "vital_signs": _items(
            _sorted(_latest_per(vital, _observation_code), _code_text), _observation_cells
        ),
        "risk_assessments": _items(
            _sorted(_latest_per(of("RiskAssessment"), _model_key, _risk_time), _code_text),
            _risk_cells,
        ),
    }
    sections = tuple(
        Section(spec, tuple(items[spec.key])) for spec in SECTIONS if spec.always or items[spec.key]
    )
    shown = [item.entry for section in sections for item in section.items]
    patient_entry = patients[0]
    # The summary's ids come from the export's content, whatever the order of its entries.
    content = {**export, "entry": sorted(entries, key=lambda e: str(e["fullUrl"]))}
    digest = hashlib.sha256(
        json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()
    export_id = export.get("id")
    timestamp = export.get("timestamp")
    return Summary(
        bundle_id=str(uuid.uuid5(ID_NAMESPACE, f"bundle:{digest}")),
        timestamp=timestamp if isinstance(timestamp, str) else "",
        export_id=export_id if isinstance(export_id, str) else "",
        patient=_patient_header(patient_entry),
        patient_entry=patient_entry,
        sections=sections,
        supporting=tuple(_supporting(entries, [patient_entry, *shown])),
    )


def _usable(entry: object) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("fullUrl"), str):
        return False
    resource = entry.get("resource")
    return (
        isinstance(resource, dict)
        and isinstance(resource.get("resourceType"), str)
        and isinstance(resource.get("id"), str)
    )


def _items(
    entries: Iterable[Mapping[str, Any]], cells: Callable[[Mapping[str, Any]], tuple[str, ...]]
) -> list[Item]:
    found = []
    for entry in entries:
        ledger = ledger_line(entry)
        found.append(Item(entry, (*cells(entry["resource"]), ledger.text()), ledger))
    return found


def _sorted(
    entries: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any]
) -> list[Mapping[str, Any]]:
    """Sorted by ``key`` of the resource, then by id: the same order whatever the export's."""
    return sorted(entries, key=lambda e: (key(e["resource"]), e["resource"]["id"]))


def _latest_per(
    entries: Iterable[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], str],
    when: Callable[[Mapping[str, Any]], tuple[datetime, ...]] | None = None,
) -> list[Mapping[str, Any]]:
    """The most recent entry of each ``key`` (by :func:`observed_at` unless ``when``; ties by
    last update, then id)."""
    timing = when or observed_at
    latest: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        resource = entry["resource"]
        group = key(resource)
        rank = (*timing(resource), resource["id"])
        held = latest.get(group)
        if held is None or rank > (*timing(held["resource"]), held["resource"]["id"]):
            latest[group] = entry
    return [latest[group] for group in sorted(latest)]


def _in_error(resource: Mapping[str, Any]) -> bool:
    statuses = [resource.get("status")]
    statuses += _codes(resource.get("verificationStatus"))
    return any(s in _ERROR_STATUSES for s in statuses)


def _condition_current(resource: Mapping[str, Any]) -> bool:
    clinical = _codes(resource.get("clinicalStatus"))
    return not clinical or any(c in _CURRENT_PROBLEM for c in clinical)


def _is_vital_sign(resource: Mapping[str, Any]) -> bool:
    categories = resource.get("category")
    if not isinstance(categories, list):
        return False
    return any(
        coding.get("system") == OBSERVATION_CATEGORY and coding.get("code") == "vital-signs"
        for category in categories
        for coding in _codings(category)
    )


# --- reading FHIR values ------------------------------------------------------------------------


def _codings(concept: object) -> list[Mapping[str, Any]]:
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _codes(concept: object) -> list[str]:
    return [c["code"] for c in _codings(concept) if isinstance(c.get("code"), str)]


def concept_text(concept: object) -> str:
    """A CodeableConcept for a person: its text, else its first coding's display, else its
    first code with its system."""
    if not isinstance(concept, dict):
        return ""
    text = concept.get("text")
    if isinstance(text, str) and text:
        return text
    codings = _codings(concept)
    for coding in codings:
        if isinstance(coding.get("display"), str):
            return str(coding["display"])
    for coding in codings:
        if isinstance(coding.get("code"), str):
            system = coding.get("system")
            return f"{coding['code']} ({system})" if isinstance(system, str) else coding["code"]
    return ""


def parse_time(text: object) -> datetime | None:
    """A FHIR date or dateTime as an aware UTC datetime (a partial date: its start; no offset:
    UTC); None when it is not one."""
    if not isinstance(text, str):
        return None
    found = _DATE_TIME.fullmatch(text)
    if found is None:
        return None
    iso = f"{found['y']}-{found['m'] or '01'}-{found['d'] or '01'}"
    if found["time"]:
        time = found["time"] if found["time"].count(":") == 2 else found["time"] + ":00"
        iso += f"T{time}{(found['tz'] or 'Z').replace('Z', '+00:00')}"
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def time_text(text: object) -> str:
    """A FHIR date or dateTime for a person: a date as written, a time as UTC to the minute."""
    if not isinstance(text, str):
        return ""
    if "T" not in text:
        return text
    parsed = parse_time(text)
    return parsed.strftime("%Y-%m-%d %H:%M UTC") if parsed else text


def _effective(resource: Mapping[str, Any], prefix: str) -> object:
    """A choice element ``<prefix>[x]``'s time: the dateTime or instant, a period's start."""
    for suffix in ("DateTime", "Instant"):
        value = resource.get(prefix + suffix)
        if value is not None:
            return value
    period = resource.get(prefix + "Period")
    if isinstance(period, dict):
        return period.get("start") or period.get("end")
    return None


def observed_at(resource: Mapping[str, Any]) -> tuple[datetime, ...]:
    """When an Observation was made (effective[x], else issued), then when it was last
    updated: what "most recent" compares."""
    made = parse_time(_effective(resource, "effective")) or parse_time(resource.get("issued"))
    return (made or _EARLIEST, _last_updated(resource))


def _risk_time(resource: Mapping[str, Any]) -> tuple[datetime, ...]:
    return (
        parse_time(_effective(resource, "occurrence")) or _EARLIEST,
        _last_updated(resource),
    )


def _last_updated(resource: Mapping[str, Any]) -> datetime:
    meta = resource.get("meta")
    return (parse_time(meta.get("lastUpdated")) if isinstance(meta, dict) else None) or _EARLIEST


def _observation_code(resource: Mapping[str, Any]) -> str:
    for coding in _codings(resource.get("code")):
        if isinstance(coding.get("code"), str):
            return f"{coding.get('system', '')}|{coding['code']}"
    return f"text|{concept_text(resource.get('code'))}"


def _model_key(resource: Mapping[str, Any]) -> str:
    for coding in _codings(resource.get("method")):
        if isinstance(coding.get("code"), str):
            return f"{coding.get('system', '')}|{coding['code']}"
    return f"text|{concept_text(resource.get('code')) or concept_text(resource.get('method'))}"


def _onset_key(resource: Mapping[str, Any]) -> tuple[str, datetime]:
    onset = parse_time(_effective(resource, "onset")) or _EARLIEST
    return (concept_text(resource.get("code")).casefold(), onset)


def _medication_key(resource: Mapping[str, Any]) -> tuple[int, str]:
    active = resource.get("status") in _ACTIVE_MEDICATION
    return (0 if active else 1, _medication_name(resource).casefold())


def _code_text(resource: Mapping[str, Any]) -> str:
    return concept_text(resource.get("code")).casefold()


def _allergy_key(resource: Mapping[str, Any]) -> str:
    return concept_text(resource.get("code")).casefold()


def _medication_name(resource: Mapping[str, Any]) -> str:
    name = concept_text(resource.get("medicationCodeableConcept"))
    if name:
        return name
    reference = resource.get("medicationReference")
    if isinstance(reference, dict):
        return str(reference.get("display") or reference.get("reference") or "")
    return ""


def _quantity_text(quantity: object) -> str:
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        return ""
    unit = quantity.get("unit") or quantity.get("code") or ""
    comparator = quantity.get("comparator") or ""
    return f"{comparator}{_number(quantity['value'])} {unit}".strip()


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def value_text(element: Mapping[str, Any]) -> str:
    """An Observation's (or component's) value[x] for a person."""
    quantity = _quantity_text(element.get("valueQuantity"))
    if quantity:
        return quantity
    if "valueCodeableConcept" in element:
        return concept_text(element["valueCodeableConcept"])
    for name in ("valueString", "valueBoolean", "valueInteger", "valueDateTime", "valueTime"):
        if name in element:
            value = element[name]
            return ("yes" if value else "no") if isinstance(value, bool) else str(value)
    value_range = element.get("valueRange")
    if isinstance(value_range, dict):
        low, high = _quantity_text(value_range.get("low")), _quantity_text(value_range.get("high"))
        return f"{low} to {high}".strip()
    return ""


def _interpretation(resource: Mapping[str, Any]) -> str:
    interpretations = resource.get("interpretation")
    if not isinstance(interpretations, list):
        return ""
    texts = [concept_text(i) for i in interpretations]
    return ", ".join(t for t in texts if t)


def _observation_cells(resource: Mapping[str, Any]) -> tuple[str, ...]:
    value = value_text(resource)
    components = resource.get("component")
    if isinstance(components, list):
        parts = [
            f"{concept_text(c.get('code'))} {value_text(c)}".strip()
            for c in components
            if isinstance(c, dict) and value_text(c)
        ]
        value = "; ".join(p for p in [value, *parts] if p)
    flag = _interpretation(resource)
    if flag:
        value = f"{value} ({flag})" if value else flag
    return (
        concept_text(resource.get("code")),
        value or "(no value)",
        time_text(_effective(resource, "effective") or resource.get("issued")),
    )


def _problem_cells(resource: Mapping[str, Any]) -> tuple[str, ...]:
    status = "; ".join(
        concept_text(resource.get(name))
        for name in ("clinicalStatus", "verificationStatus")
        if concept_text(resource.get(name))
    )
    onset = _effective(resource, "onset") or resource.get("onsetString") or ""
    return (concept_text(resource.get("code")), status, time_text(onset))


def _medication_cells(resource: Mapping[str, Any]) -> tuple[str, ...]:
    dosages = resource.get("dosageInstruction") or resource.get("dosage")
    dosage = ""
    if isinstance(dosages, list):
        dosage = "; ".join(
            str(d["text"])
            for d in dosages
            if isinstance(d, dict) and isinstance(d.get("text"), str)
        )
    since = (
        resource.get("authoredOn")
        or _effective(resource, "effective")
        or resource.get("dateAsserted")
    )
    return (
        _medication_name(resource),
        str(resource.get("status", "")),
        dosage,
        time_text(since),
    )


def _allergy_cells(resource: Mapping[str, Any]) -> tuple[str, ...]:
    kinds = [str(resource["type"])] if isinstance(resource.get("type"), str) else []
    category = resource.get("category")
    if isinstance(category, list):
        kinds += [str(c) for c in category]
    reactions = resource.get("reaction")
    reaction = ""
    if isinstance(reactions, list):
        texts = []
        for r in reactions:
            if not isinstance(r, dict):
                continue
            manifestations = r.get("manifestation")
            names = (
                [concept_text(m) for m in manifestations]
                if isinstance(manifestations, list)
                else []
            )
            text = ", ".join(n for n in names if n)
            if isinstance(r.get("severity"), str):
                text = f"{text} ({r['severity']})" if text else str(r["severity"])
            texts.append(text)
        reaction = "; ".join(t for t in texts if t)
    return (
        concept_text(resource.get("code")),
        ", ".join(kinds),
        str(resource.get("criticality", "")),
        reaction,
        concept_text(resource.get("clinicalStatus")),
    )


def _risk_cells(resource: Mapping[str, Any]) -> tuple[str, ...]:
    predictions = resource.get("prediction")
    texts = []
    if isinstance(predictions, list):
        for prediction in predictions:
            if not isinstance(prediction, dict):
                continue
            outcome = concept_text(prediction.get("outcome"))
            chance = ""
            if isinstance(prediction.get("probabilityDecimal"), int | float):
                chance = f"probability {_number(prediction['probabilityDecimal'])}"
            elif isinstance(prediction.get("qualitativeRisk"), dict):
                chance = concept_text(prediction["qualitativeRisk"])
            for extension in prediction.get("extension", []):
                if isinstance(extension, dict) and "valueDecimal" in extension:
                    chance = f"value {_number(extension['valueDecimal'])}"
            texts.append(f"{outcome}: {chance}" if outcome and chance else outcome or chance)
    method = resource.get("method")
    model = ""
    for coding in _codings(method):
        if isinstance(coding.get("code"), str):
            model = str(coding["code"])
            break
    return (
        concept_text(resource.get("code")) or concept_text(method),
        "; ".join(t for t in texts if t),
        time_text(_effective(resource, "occurrence")),
        model or concept_text(method),
    )


def _patient_header(entry: Mapping[str, Any]) -> PatientHeader:
    patient = entry["resource"]
    names = patient.get("name")
    name = ""
    if isinstance(names, list):
        official = [n for n in names if isinstance(n, dict) and n.get("use") == "official"]
        for candidate in official or [n for n in names if isinstance(n, dict)]:
            if isinstance(candidate.get("text"), str):
                name = candidate["text"]
            else:
                given = candidate.get("given")
                parts = [*(given if isinstance(given, list) else []), candidate.get("family")]
                name = " ".join(str(p) for p in parts if p)
            if name:
                break
    identifiers = []
    for identifier in patient.get("identifier", []):
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            system = identifier.get("system")
            identifiers.append(
                f"{identifier['value']} ({system})" if system else identifier["value"]
            )
    return PatientHeader(
        patient_id=str(patient["id"]),
        name=name,
        birth_date=str(patient.get("birthDate", "")),
        gender=str(patient.get("gender", "")),
        identifiers=tuple(identifiers),
        ledger=ledger_line(entry),
    )


# --- the ledger proof ---------------------------------------------------------------------------


def ledger_line(entry: Mapping[str, Any]) -> LedgerLine:
    """The version, leaf index and event of an export entry, read from its ledger-proof
    extension (unchecked: :func:`medledger.verify.export.verify_export` checks it)."""
    resource = entry["resource"]
    meta = resource.get("meta")
    version_id = meta.get("versionId") if isinstance(meta, dict) else None
    version = int(version_id) if isinstance(version_id, str) and version_id.isdigit() else 0
    leaf_index: int | None = None
    event = ""
    parts = _proof_parts(entry)
    try:
        if "receipt" in parts:
            leaf_index = ledger_pb2.Receipt.FromString(parts["receipt"]).leaf_index
        if "entry" in parts:
            kind = ledger_pb2.LedgerEntry.FromString(parts["entry"]).kind
            event = ledger_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_")
    except (DecodeError, ValueError):
        leaf_index, event = None, ""
    return LedgerLine(version, leaf_index, event, _prediction_leaf(resource))


def _proof_parts(entry: Mapping[str, Any]) -> dict[str, bytes]:
    parts: dict[str, bytes] = {}
    extensions = entry.get("extension")
    for extension in extensions if isinstance(extensions, list) else []:
        if not isinstance(extension, dict) or extension.get("url") != LEDGER_PROOF_URL:
            continue
        for part in extension.get("extension", []):
            if isinstance(part, dict) and isinstance(part.get("valueBase64Binary"), str):
                try:
                    parts[str(part.get("url"))] = base64.b64decode(
                        part["valueBase64Binary"], validate=True
                    )
                except (binascii.Error, ValueError):
                    continue
    return parts


def _prediction_leaf(resource: Mapping[str, Any]) -> int | None:
    """The INFERENCE_MADE leaf a RiskAssessment names (medledger.inference writes it)."""
    if resource.get("resourceType") != "RiskAssessment":
        return None
    for extension in resource.get("extension", []):
        if not isinstance(extension, dict) or extension.get("url") != PREDICTION_LEDGER_URL:
            continue
        for part in extension.get("extension", []):
            value = part.get("valueString") if isinstance(part, dict) else None
            if part.get("url") == "leafIndex" and isinstance(value, str) and value.isdigit():
                return int(value)
    return None


# --- references ---------------------------------------------------------------------------------


def references(value: object) -> Iterator[str]:
    """Every ``reference`` string in a resource (its contained resources' too)."""
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str):
            yield reference
        for member in value.values():
            yield from references(member)
    elif isinstance(value, list):
        for element in value:
            yield from references(element)


def _target(reference: str) -> tuple[str, str, str | None] | None:
    """``Type/id`` or ``Type/id/_history/v`` as (type, id, version); None for another form."""
    parts = reference.split("/")
    if len(parts) == 2:
        return parts[0], parts[1], None
    if len(parts) == 4 and parts[2] == "_history":
        return parts[0], parts[1], parts[3]
    return None


def resolve(reference: str, entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The entry ``reference`` lands on among ``entries``: by fullUrl for an absolute one
    (``urn:uuid:...``); a relative ``Type/id`` on the entry of that type and id, and a
    ``Type/id/_history/v`` only when that entry is version ``v``."""
    if ":" in reference.split("/", 1)[0]:
        return next((e for e in entries if e.get("fullUrl") == reference), None)
    target = _target(reference)
    if target is None:
        return None
    kind, resource_id, version = target
    for entry in entries:
        resource = entry["resource"]
        if resource.get("resourceType") == kind and resource.get("id") == resource_id:
            meta = resource.get("meta")
            held = meta.get("versionId") if isinstance(meta, dict) else None
            return entry if version is None or version == held else None
    return None


def _supporting(
    entries: Sequence[Mapping[str, Any]], shown: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The export's entries that the shown ones refer to, and the Provenances about a shown
    resource, transitively; in the export's order."""
    kept = {id(e) for e in shown}
    queue = list(shown)
    while queue:
        entry = queue.pop()
        found = [resolve(r, entries) for r in references(entry["resource"])]
        # A Provenance refers to what it is about: take the ones about what is kept.
        for candidate in entries:
            resource = candidate["resource"]
            if resource["resourceType"] == "Provenance" and id(candidate) not in kept:
                targets = [resolve(r, entries) for r in references(resource.get("target", []))]
                if any(t is entry for t in targets):
                    found.append(candidate)
        for target in found:
            if target is not None and id(target) not in kept:
                kept.add(id(target))
                queue.append(target)
    shown_ids = {id(e) for e in shown}
    return [e for e in entries if id(e) in kept and id(e) not in shown_ids]


# --- the FHIR document --------------------------------------------------------------------------


def _derived_id(summary: Summary, what: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{what}:{summary.bundle_id}"))


def author_device_id(summary: Summary) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"device:{AUTHOR_NAME}:{summary.author_version}"))


def _narrative(spec: SectionSpec, items: Sequence[Item]) -> dict[str, str]:
    if not items:
        body = f"<p>None in the record as exported: no {html.escape(spec.title.lower())}.</p>"
    else:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in spec.columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in item.cells) + "</tr>"
            for item in items
        )
        body = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _section(section: Section) -> dict[str, Any]:
    spec = section.spec
    document: dict[str, Any] = {
        "title": spec.title,
        "code": {"coding": [dict(spec.code)], "text": spec.title},
        "text": _narrative(spec, section.items),
    }
    if section.items:
        document["entry"] = [{"reference": item.full_url} for item in section.items]
    else:
        document["emptyReason"] = {
            "coding": [
                {"system": LIST_EMPTY_REASON, "code": "unavailable", "display": "Unavailable"}
            ],
            "text": "The record as exported to the reader holds none",
        }
    return document


def summary_bundle(summary: Summary) -> dict[str, Any]:
    """The summary as a FHIR R4 document Bundle (see the module's docstring)."""
    composition_id = _derived_id(summary, "composition")
    provenance_id = _derived_id(summary, "provenance")
    device_id = author_device_id(summary)
    device_url = FULL_URL_PREFIX + device_id
    composition_url = FULL_URL_PREFIX + composition_id
    patient_url = str(summary.patient_entry["fullUrl"])
    shown = [item.entry for section in summary.sections for item in section.items]
    sources = [summary.patient_entry, *shown]
    composition = {
        "resourceType": "Composition",
        "id": composition_id,
        "status": "final",
        "type": {"coding": [dict(DOCUMENT_TYPE)], "text": TITLE},
        "subject": {"reference": patient_url},
        "date": summary.timestamp,
        "author": [{"reference": device_url, "display": AUTHOR_NAME}],
        "title": TITLE,
        "section": [_section(section) for section in summary.sections],
    }
    device = {
        "resourceType": "Device",
        "id": device_id,
        "deviceName": [{"name": AUTHOR_NAME, "type": "user-friendly-name"}],
        "type": {"text": "Software that assembled this summary from the patient's export"},
        "version": [{"value": summary.author_version}],
    }
    provenance = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": composition_url}],
        "recorded": summary.timestamp,
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ]
        },
        "agent": [{"who": {"reference": device_url, "display": AUTHOR_NAME}}],
        "entity": [
            {"role": "source", "what": {"reference": str(entry["fullUrl"])}} for entry in sources
        ],
    }
    entries: list[dict[str, Any]] = [
        {"fullUrl": composition_url, "resource": composition},
        _copy(summary.patient_entry),
        {"fullUrl": device_url, "resource": device},
        {"fullUrl": FULL_URL_PREFIX + provenance_id, "resource": provenance},
    ]
    seen = {e["fullUrl"] for e in entries}
    for entry in [*shown, *summary.supporting]:
        if entry["fullUrl"] not in seen:
            seen.add(entry["fullUrl"])
            entries.append(_copy(entry))
    return {
        "resourceType": "Bundle",
        "id": summary.bundle_id,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{summary.bundle_id}"},
        "type": "document",
        "timestamp": summary.timestamp,
        "entry": entries,
    }


def _copy(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An export entry as the summary carries it: fullUrl, resource and its ledger proof."""
    copied = {"fullUrl": entry["fullUrl"], "resource": entry["resource"]}
    if "extension" in entry:
        copied["extension"] = entry["extension"]
    return json.loads(json.dumps(copied))  # type: ignore[no-any-return]


def proven_entries(document: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's entries that carry a ledger proof, as the collection Bundle that
    :func:`medledger.verify.export.verify_export` checks: each line's resource exactly as
    ledgered."""
    entries = [
        e
        for e in document.get("entry", [])
        if isinstance(e, dict)
        and any(
            isinstance(x, dict) and x.get("url") == LEDGER_PROOF_URL for x in e.get("extension", [])
        )
    ]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": document.get("id", ""),
        "type": "collection",
        "timestamp": document.get("timestamp", ""),
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def document_problems(document: Mapping[str, Any]) -> list[str]:
    """What keeps ``document`` from being a well-formed FHIR document Bundle (empty: none):
    type document with an identifier and a timestamp (bdl-9, bdl-10), a Composition first
    (bdl-11), a unique fullUrl on every entry (bdl-7), every reference the Composition and
    its Provenance make resolving inside the Bundle, sections with text (cmp-1) and with
    entries or else an emptyReason (cmp-2)."""
    problems = []
    if document.get("resourceType") != "Bundle" or document.get("type") != "document":
        problems.append("not a Bundle of type document")
    identifier = document.get("identifier")
    if not (isinstance(identifier, dict) and identifier.get("system") and identifier.get("value")):
        problems.append("bdl-9: no identifier with a system and a value")
    if not isinstance(document.get("timestamp"), str) or not document["timestamp"]:
        problems.append("bdl-10: no timestamp")
    entries = document.get("entry")
    if not isinstance(entries, list) or not entries:
        return [*problems, "no entries"]
    urls = [e.get("fullUrl") for e in entries]
    if any(not isinstance(u, str) for u in urls):
        problems.append("an entry has no fullUrl")
    if len(set(urls)) != len(urls):
        problems.append("bdl-7: a fullUrl appears twice")
    composition = entries[0].get("resource", {})
    if composition.get("resourceType") != "Composition":
        return [*problems, "bdl-11: the first entry is not a Composition"]
    return problems + _composition_problems(composition, entries)


def _composition_problems(
    composition: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]
) -> list[str]:
    problems = [
        f"the Composition's reference {reference} resolves to no entry"
        for reference in references(composition)
        if resolve(reference, entries) is None
    ]
    composition_url = FULL_URL_PREFIX + str(composition.get("id", ""))
    for entry in entries:
        resource = entry.get("resource", {})
        about = list(references(resource.get("target", [])))
        if resource.get("resourceType") == "Provenance" and composition_url in about:
            problems += [
                f"the Provenance's reference {reference} resolves to no entry"
                for reference in references(resource)
                if resolve(reference, entries) is None
            ]
    for index, section in enumerate(composition.get("section", [])):
        if "text" not in section:
            problems.append(f"cmp-1: section[{index}] has no text")
        if bool(section.get("entry")) == ("emptyReason" in section):
            problems.append(f"cmp-2: section[{index}] needs entries or an emptyReason, not both")
    return problems


# --- checking a summary offline -----------------------------------------------------------------


class SummaryInvalid(ValueError):
    """A file that is not a well-formed summary document, or a line without a ledger proof."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            # Parsers disagree on which of two equal names wins: a viewer could show one
            # value while the verifier checked the other.
            raise SummaryInvalid(f"member name {name!r} appears twice in one object")
        document[name] = value
    return document


def parse_document(data: bytes) -> dict[str, Any]:
    """The summary document in ``data`` (UTF-8 JSON, no member name twice in an object)."""
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members)
    except SummaryInvalid:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise SummaryInvalid(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise SummaryInvalid("not a FHIR Bundle: the JSON is not an object")
    return document


def check_summary_lines(document: Mapping[str, Any]) -> dict[str, Any]:
    """The collection Bundle of the summary's proven entries for
    :func:`medledger.verify.export.verify_export`, once the document is well formed and every
    line of every section lands on an entry that carries a ledger proof (else
    :class:`SummaryInvalid` naming what is wrong)."""
    problems = document_problems(document)
    if problems:
        raise SummaryInvalid("not a well-formed summary document: " + "; ".join(problems))
    proven = proven_entries(document)
    by_url = {e["fullUrl"]: e for e in proven.get("entry", [])}
    for section in document["entry"][0]["resource"].get("section", []):
        for line in section.get("entry", []):
            if line.get("reference") not in by_url:
                raise SummaryInvalid(
                    f"section {section.get('title', '?')!r}: the line {line.get('reference')} "
                    "has no ledger proof"
                )
    return proven
