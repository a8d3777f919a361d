"""The demo hospitals' patient records: synthetic FHIR R4 from carebundle, written through the
record service's API by each hospital's own partner app (``medledger demo seed``).

carebundle (``generate_bundle(profile=..., seed=...)``) gives a byte-identical R4 transaction
Bundle for a seed: a Patient, an Encounter, LOINC Observations (the panels asked for and the
vital signs; the demo keeps :data:`DEMO_OBSERVATIONS`: BMI 39156-5, blood pressure, lipids,
glucose 2345-7, HbA1c...), the Conditions and MedicationRequests that follow from the values
drawn, sometimes AllergyIntolerances, and DiagnosticReports (left out). A transaction bundle
has no ids: its resources name each other by ``urn:uuid:`` fullUrls, and the record service
assigns ids. So the Patient is created first and every reference to it becomes
``Patient/<server id>``; the other resources are created once all they name exists (the
Encounter before the Observations), their references rewritten the same way. The
Practitioner is not a type the record stores (:mod:`medledger.record.domain.compartment`):
a reference to it keeps only its name as ``display``.

Seeding twice writes nothing twice. Every resource carries an identifier of the demo's own
(system :data:`DEMO_IDENTIFIER_SYSTEM`, value ``<patient key>`` for the Patient and
``<patient key>/<fullUrl uuid>`` for the rest): the Patient is found by it first (search
``identifier``), then the patient's resources of each type (search ``patient``), and only
what is missing is created. Each create carries an idempotency key derived from the same
names, so a retry after a lost answer is written once too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.calls import UNREACHABLE, CallFailed, Metadata, checked
from medledger.common.keyfiles import write_private

# Only in the generated type stubs; the runtime stub class is not generic.
RecordStub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"

DEMO_IDENTIFIER_SYSTEM: Final = "urn:medledger:demo"
"""The system of the identifier every demo resource carries (its key in the demo)."""
IDEMPOTENCY_PREFIX: Final = "medledger-demo-v1"
RECORD_SCOPE: Final = "system/*.cruds"
"""What a hospital's own app needs to write its records (and to search them first)."""
PURPOSE: Final = purpose_pb2.PURPOSE_OF_USE_TREAT
# The stored types of carebundle's resources that the demo writes (its DiagnosticReports only
# group the Observations by panel, and are left out). Each resource costs the record service
# a ledgered write, about 0.1 s on a laptop-sized stack, and `make up` should stay quick: so
# of the Observations only those in DEMO_OBSERVATIONS.
STORED_TYPES: Final = frozenset(
    {"Patient", "Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest"}
)
DEMO_PANELS: Final = ("cmp", "lipid", "hba1c")
DEMO_OBSERVATIONS: Final = {
    "8302-2": "body height",
    "29463-7": "body weight",
    "39156-5": "BMI",
    "85354-9": "blood pressure (systolic and diastolic components)",
    "8867-4": "heart rate",
    "2345-7": "glucose",
    "4548-4": "HbA1c",
    "2093-3": "total cholesterol",
    "2085-9": "HDL cholesterol",
    "13457-7": "LDL cholesterol",
    "2571-8": "triglycerides",
    "2160-0": "creatinine",
    "98979-8": "eGFR",
}
"""The LOINC codes of the Observations the demo writes: what a diabetes-progression model
reads (age and sex from the Patient; BMI, blood pressure, serum lipids, glucose), with HbA1c
and kidney function."""
FNA_CYTOLOGY: Final = "https://medledger.dev/fhir/CodeSystem/fna-cytology"
"""The local code system of the breast-cancer-malignancy model's features."""
UCUM: Final = "http://unitsofmeasure.org"
# (code, display, UCUM unit, value) of a fine-needle aspirate's nuclear measurements, as the
# breast-cancer-malignancy model card names them. The values are row 5 of scikit-learn's
# load_breast_cancer() (Breast Cancer Wisconsin (Diagnostic), columns 20-29, the "worst"
# features; diagnosis malignant), one of the rows the model was not trained on (its held-out
# split: train_test_split(test_size=0.25, random_state=13, stratify=diagnosis)).
FNA_SOURCE: Final = "scikit-learn load_breast_cancer() row 5 (Breast Cancer Wisconsin (Diagnostic))"
FNA_ROW_5: Final = (
    ("worst-radius", "Nuclear radius, worst (mean of the 3 largest)", "{image-length}", 15.47),
    ("worst-texture", "Nuclear texture, worst (mean of the 3 largest)", "{gray-level}", 23.75),
    (
        "worst-perimeter",
        "Nuclear perimeter, worst (mean of the 3 largest)",
        "{image-length}",
        103.4,
    ),
    ("worst-area", "Nuclear area, worst (mean of the 3 largest)", "{image-area}", 741.6),
    ("worst-smoothness", "Nuclear smoothness, worst (mean of the 3 largest)", "1", 0.1791),
    ("worst-compactness", "Nuclear compactness, worst (mean of the 3 largest)", "1", 0.5249),
    ("worst-concavity", "Nuclear concavity, worst (mean of the 3 largest)", "1", 0.5355),
    (
        "worst-concave-points",
        "Nuclear concave points, worst (mean of the 3 largest)",
        "1",
        0.1741,
    ),
    ("worst-symmetry", "Nuclear symmetry, worst (mean of the 3 largest)", "1", 0.3985),
    (
        "worst-fractal-dimension",
        "Nuclear fractal dimension, worst (mean of the 3 largest)",
        "1",
        0.1244,
    ),
)
# Named by display only: the record keeps no resource of these types.
DISPLAY_ONLY_TYPES: Final = frozenset({"Practitioner"})
CONCURRENT_WRITES: Final = 8
PAGE_SIZE: Final = 100
CALL_TIMEOUT_SECONDS: Final = 20.0
RETRY_SECONDS: Final = 30.0
LOINC: Final = "http://loinc.org"


@dataclass(frozen=True)
class DemoRecord:
    """One demo patient: ``key`` names them in the demo (and in their identifier); the bundle
    is carebundle's for ``profile``, ``seed`` and ``sex``; ``organization`` holds the record."""

    key: str
    organization: str
    profile: str
    seed: int
    sex: str
    # The nuclear measurements of a breast fine-needle aspirate reported for this patient
    # (code, display, UCUM unit, value), beside carebundle's bundle; empty: none.
    cytology: tuple[tuple[str, str, str, float], ...] = ()


DEMO_RECORDS: Final = (
    DemoRecord("hospital-a-1", "hospital-a", "type2_diabetes", 1201, "F"),
    DemoRecord("hospital-a-2", "hospital-a", "hypertension", 1202, "M"),
    DemoRecord("hospital-a-3", "hospital-a", "healthy", 1203, "F", cytology=FNA_ROW_5),
    DemoRecord("hospital-b-1", "hospital-b", "ckd_stage3", 2201, "M"),
    DemoRecord("hospital-b-2", "hospital-b", "type2_diabetes", 2202, "M"),
)


class RecordSeedError(Exception):
    """A step of seeding the records failed; the message names it."""


@dataclass(frozen=True)
class Entry:
    """One bundle resource to store: its fullUrl, its demo identifier value and the JSON
    with the identifier added (references still ``urn:uuid:``)."""

    full_url: str
    resource_type: str
    demo_id: str
    resource: dict[str, Any]

    def names(self) -> set[str]:
        """The fullUrls this resource refers to."""
        return {r for r in _references(self.resource) if r.startswith("urn:uuid:")}


@dataclass
class SeededPatient:
    """What the demo holds for one patient after seeding."""

    record: DemoRecord
    patient_id: str = ""
    name: str = ""
    birth_date: str = ""
    created: int = 0  # resources this run created (the Patient included)
    counts: dict[str, int] = field(default_factory=dict)  # stored type -> resources
    observations: dict[str, str] = field(default_factory=dict)  # LOINC code -> Observation/id

    def as_json(self, client_id: str) -> dict[str, Any]:
        return {
            "key": self.record.key,
            "organization": self.record.organization,
            "client": client_id,
            "patient": f"Patient/{self.patient_id}",
            "name": self.name,
            "birthDate": self.birth_date,
            "profile": self.record.profile,
            "seed": self.record.seed,
            "resources": self.counts,
            "observations": self.observations,
        }


def bundle_entries(record: DemoRecord) -> tuple[list[Entry], dict[str, str]]:
    """The stored-type resources of the record's carebundle bundle, each with its demo
    identifier, and the display text of each display-only resource by fullUrl."""
    # Imported here, not at the top: numpy and carebundle take ~1 s to import, which every
    # other medledger command would pay.
    from carebundle import generate_bundle, to_json  # noqa: PLC0415

    generated = generate_bundle(
        profile=record.profile, seed=record.seed, sex=record.sex, panels=DEMO_PANELS
    )
    bundle = _quantities_as_numbers(json.loads(to_json(generated)))
    entries: list[Entry] = []
    displays: dict[str, str] = {}
    for item in bundle.get("entry", []):
        full_url, resource = item["fullUrl"], item["resource"]
        resource_type = resource["resourceType"]
        if resource_type in DISPLAY_ONLY_TYPES:
            displays[full_url] = _display(resource)
            continue
        if resource_type not in STORED_TYPES or (
            resource_type == "Observation" and _loinc(resource) not in DEMO_OBSERVATIONS
        ):
            continue
        demo_id = (
            record.key
            if resource_type == "Patient"
            else f"{record.key}/{full_url.removeprefix('urn:uuid:')}"
        )
        identifier = {"system": DEMO_IDENTIFIER_SYSTEM, "value": demo_id}
        resource["identifier"] = [*resource.get("identifier", []), identifier]
        entries.append(Entry(full_url, resource_type, demo_id, resource))
    patients = [e for e in entries if e.resource_type == "Patient"]
    if len(patients) != 1:
        raise RecordSeedError(f"{record.key}: carebundle's bundle has {len(patients)} Patients")
    entries.extend(cytology_entries(record, patients[0].full_url, _observed_at(entries)))
    return entries, displays


def _observed_at(entries: Iterable[Entry]) -> str | None:
    """When the bundle's Observations were made (the visit's time)."""
    for entry in entries:
        when = entry.resource.get("effectiveDateTime")
        if entry.resource_type == "Observation" and isinstance(when, str):
            return when
    return None


def cytology_entries(record: DemoRecord, patient_url: str, when: str | None) -> list[Entry]:
    """The record's FNA cytology Observations, as a cytology lab reports them: one final
    laboratory Observation per measurement, coded in :data:`FNA_CYTOLOGY`, with its UCUM
    unit. Their fullUrls and demo ids are derived from the patient key and the code, so
    seeding again finds them."""
    entries = []
    for code, display, unit, value in record.cytology:
        demo_id = f"{record.key}/fna-cytology/{code}"
        full_url = (
            f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, DEMO_IDENTIFIER_SYSTEM + ':' + demo_id)}"
        )
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "identifier": [{"system": DEMO_IDENTIFIER_SYSTEM, "value": demo_id}],
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
            "code": {
                "coding": [{"system": FNA_CYTOLOGY, "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": patient_url},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            "method": {"text": "Fine-needle aspirate of a breast mass, digitised image analysis"},
            "note": [{"text": f"Synthetic demo value: {FNA_SOURCE}"}],
        }
        if when is not None:
            resource["effectiveDateTime"] = when
        entries.append(Entry(full_url, "Observation", demo_id, resource))
    return entries


_DECIMAL: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _quantities_as_numbers(value: Any) -> Any:
    """``value`` with each Quantity's ``value`` a JSON number: carebundle writes decimals as
    strings ("141"), which FHIR JSON does not allow and the record service refuses."""
    if isinstance(value, list):
        return [_quantities_as_numbers(v) for v in value]
    if not isinstance(value, dict):
        return value
    copy = {k: _quantities_as_numbers(v) for k, v in value.items()}
    number = copy.get("value")
    if isinstance(number, str) and {"unit", "code"} & copy.keys() and _DECIMAL.fullmatch(number):
        copy["value"] = float(number) if "." in number or "e" in number.lower() else int(number)
    return copy


def _display(resource: Mapping[str, Any]) -> str:
    for name in resource.get("name", []):
        parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
        text = " ".join(p for p in parts if p)
        if text:
            return f"{text} (synthetic)"
    return f"{resource.get('resourceType', 'resource')} (synthetic)"


def _references(value: object) -> Iterable[str]:
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str):
            yield reference
        for member in value.values():
            yield from _references(member)
    elif isinstance(value, list):
        for element in value:
            yield from _references(element)


def rewrite(value: Any, stored: Mapping[str, str], displays: Mapping[str, str]) -> Any:
    """``value`` with each ``urn:uuid:`` reference to a stored resource as ``Type/id`` and
    each one to a display-only resource as its ``display`` (a copy; the input is kept)."""
    if isinstance(value, list):
        return [rewrite(v, stored, displays) for v in value]
    if not isinstance(value, dict):
        return value
    reference = value.get("reference")
    if isinstance(reference, str) and reference in displays:
        rest = {k: rewrite(v, stored, displays) for k, v in value.items() if k != "reference"}
        return {**rest, "display": rest.get("display", displays[reference])}
    copy = {k: rewrite(v, stored, displays) for k, v in value.items()}
    if isinstance(reference, str) and reference in stored:
        copy["reference"] = stored[reference]
    return copy


def idempotency_key(client_id: str, demo_id: str) -> str:
    """The same for every seeding of this resource by this client (keys are scoped by the
    caller and the operation)."""
    digest = hashlib.sha256(f"{client_id}\0{demo_id}".encode()).hexdigest()[:32]
    return f"{IDEMPOTENCY_PREFIX}-{digest}"


def _demo_id(resource: Mapping[str, Any]) -> str | None:
    for identifier in resource.get("identifier", []):
        if isinstance(identifier, dict) and identifier.get("system") == DEMO_IDENTIFIER_SYSTEM:
            value = identifier.get("value")
            return value if isinstance(value, str) else None
    return None


def _loinc(resource: Mapping[str, Any]) -> str | None:
    for coding in resource.get("code", {}).get("coding", []):
        if coding.get("system") == LOINC and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


class RecordSeeder:
    """Seeds one hospital's demo patients through the record service, as its own client."""

    def __init__(self, record: str, stub: RecordStub, metadata: Metadata, client_id: str) -> None:
        self.record = record
        self.stub = stub
        self.metadata = metadata
        self.client_id = client_id
        self.limit = asyncio.Semaphore(CONCURRENT_WRITES)

    async def _call(self, what: str, call: str, start: Callable[[], Awaitable[Any]]) -> Any:
        """The answer of ``start()``; UNAVAILABLE (the record service just started, or the
        ledger busy) is retried for a while: every write carries its idempotency key."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_SECONDS
        while True:
            try:
                return await checked(call, self.record, start())
            except CallFailed as failure:
                if failure.code in UNREACHABLE and loop.time() < deadline:
                    await asyncio.sleep(0.5)
                    continue
                raise RecordSeedError(f"{what}: {failure}") from None

    async def _search(
        self, resource_type: str, params: dict[str, str], what: str
    ) -> list[record_pb2.StoredResource]:
        found: list[record_pb2.StoredResource] = []
        token = ""
        while True:
            request = record_pb2.SearchResourcesRequest(
                resource_type=resource_type,
                params=[record_pb2.SearchParam(name=k, value=v) for k, v in params.items()],
                page_size=PAGE_SIZE,
                page_token=token,
                purpose=PURPOSE,
            )
            reply = await self._call(
                what,
                "SearchResources",
                functools.partial(
                    self.stub.SearchResources,
                    request,
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                ),
            )
            found.extend(reply.resources)
            token = reply.next_page_token
            if not token:
                return found

    async def _create(self, entry: Entry, resource: dict[str, Any]) -> record_pb2.StoredResource:
        request = record_pb2.CreateResourceRequest(
            resource_json=json.dumps(resource, ensure_ascii=False, separators=(",", ":")),
            idempotency_key=idempotency_key(self.client_id, entry.demo_id),
            purpose=PURPOSE,
        )
        async with self.limit:
            reply = await self._call(
                f"{entry.resource_type} {entry.demo_id}",
                "CreateResource",
                functools.partial(
                    self.stub.CreateResource,
                    request,
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                ),
            )
        stored: record_pb2.StoredResource = reply.resource
        return stored

    async def seed(self, record: DemoRecord) -> SeededPatient:
        entries, displays = await asyncio.to_thread(bundle_entries, record)
        result = SeededPatient(record)
        patient_entry = next(e for e in entries if e.resource_type == "Patient")
        result.name = _display(patient_entry.resource).removesuffix(" (synthetic)")
        result.birth_date = str(patient_entry.resource.get("birthDate", ""))
        found = await self._search(
            "Patient",
            {"identifier": f"{DEMO_IDENTIFIER_SYSTEM}|{record.key}"},
            f"Patient {record.key}",
        )
        if len(found) > 1:
            raise RecordSeedError(
                f"Patient {record.key}: {len(found)} Patients carry its demo identifier"
            )
        # fullUrl -> Type/id of what is stored; demo id -> the stored resource.
        stored: dict[str, str] = {}
        existing: dict[str, record_pb2.StoredResource] = {}
        if found:
            existing[record.key] = found[0]
            reference = f"Patient/{found[0].id}"
            types = sorted({e.resource_type for e in entries} - {"Patient"})
            pages = await asyncio.gather(
                *(self._search(t, {"patient": reference}, f"{record.key}'s {t}s") for t in types)
            )
            for item in (item for page in pages for item in page):
                demo_id = _demo_id(json.loads(item.resource_json))
                if demo_id is not None:
                    existing[demo_id] = item
        for entry in entries:
            if entry.demo_id in existing:
                item = existing[entry.demo_id]
                stored[entry.full_url] = f"{item.resource_type}/{item.id}"
        pending = [e for e in entries if e.full_url not in stored]
        written: list[record_pb2.StoredResource] = []
        while pending:
            ready = [
                e for e in pending if e.names() <= stored.keys() | displays.keys() | {e.full_url}
            ]
            if not ready:
                raise RecordSeedError(f"{record.key}: a bundle resource names one not in it")
            created = await asyncio.gather(
                *(self._create(e, rewrite(e.resource, stored, displays)) for e in ready)
            )
            for entry, item in zip(ready, created, strict=True):
                stored[entry.full_url] = f"{item.resource_type}/{item.id}"
                written.append(item)
            pending = [e for e in pending if e.full_url not in stored]
        result.created = len(written)
        result.patient_id = stored[patient_entry.full_url].removeprefix("Patient/")
        for entry in entries:
            result.counts[entry.resource_type] = result.counts.get(entry.resource_type, 0) + 1
            code = _loinc(entry.resource) if entry.resource_type == "Observation" else None
            if code is not None:
                result.observations.setdefault(code, stored[entry.full_url])
        return result


async def seed_records(
    record: str,
    channel_stub: RecordStub,
    metadata: Metadata,
    client_id: str,
    records: Iterable[DemoRecord],
) -> list[SeededPatient]:
    """Seeds ``records`` (one organisation's, as ``client_id``), the patients concurrently."""
    seeder = RecordSeeder(record, channel_stub, metadata, client_id)
    return list(await asyncio.gather(*(seeder.seed(r) for r in records)))


def write_patients(path: Path, patients: list[tuple[str, SeededPatient]]) -> None:
    """``patients.json``: each demo patient's server-assigned ids (they differ per stack)."""
    document = {
        "about": "The demo patients `medledger demo seed` wrote to the record service; ids are "
        "the server's, so they differ per stack.",
        "patients": [p.as_json(client) for client, p in patients],
    }
    # The stack's state is its user's only (0700 folders, 0600 files), this list too.
    write_private(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def read_patients(path: Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    patients = document.get("patients") if isinstance(document, dict) else None
    if not isinstance(patients, list):
        raise ValueError(f"{path} has no patients list")
    return [p for p in patients if isinstance(p, dict)]
