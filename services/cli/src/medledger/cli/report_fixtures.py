"""A fixed patient export for the reports' tests and the README's images: the same bytes on
every machine, so a report made from it can be compared byte for byte and its picture
regenerated (``scripts/render-report-images.py``).

The patient is the demo's ``hospital-a-1`` (carebundle's type 2 diabetes bundle, seed 1201,
as ``medledger demo seed`` writes it), with ids derived from the demo identifiers instead of
the server's, plus what the demo lacks: an earlier glucose result (so "latest per code" has
something to choose), a penicillin allergy, a resolved problem, and a diabetes-progression
RiskAssessment as medledger's inference writes it. Every entry carries a ledger proof that
verifies: its ledger entry commits to the resource with a salt derived from its id, and the
entries are the leaves of a log signed with a fixed key (:data:`FIXTURE_ORIGIN`;
:func:`fixture_policy` trusts it).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.demo_records import DEMO_RECORDS, bundle_entries, rewrite
from medledger.tlog import Checkpoint, Ed25519Signer, leaf_hash, sign_note
from medledger.tlog.reference import inclusion_proof, root_hash
from medledger.verify.blinding import blinded_resource_id, record_blinding_salt
from medledger.verify.commitment import commit_json
from medledger.verify.export import FULL_URL_PREFIX, ledger_proof_extension
from medledger.verify.trust import TrustPolicy

FIXTURE_ORIGIN: Final = "fixture.medledger.example/log"
FIXTURE_TIMESTAMP: Final = "2026-02-01T12:00:00.000Z"
_WRITTEN: Final = "2026-01-01T09:30:00.000Z"
_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://medledger.dev/fixtures/report")
_LOG_KEY: Final = bytes([0x21]) * 32
_SNOMED: Final = "http://snomed.info/sct"
_TERMINOLOGY: Final = "http://terminology.hl7.org/CodeSystem/"


def fixture_signer() -> Ed25519Signer:
    return Ed25519Signer(FIXTURE_ORIGIN, Ed25519PrivateKey.from_private_bytes(_LOG_KEY))


def fixture_policy() -> TrustPolicy:
    """Trusts the fixture's log key, no witnesses."""
    return TrustPolicy.parse([str(fixture_signer().verifier_key)], origin=FIXTURE_ORIGIN)


def _id(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


def _extra_resources(patient: str, glucose: dict[str, Any]) -> list[dict[str, Any]]:
    """What the demo patient lacks, for the summary to show every kind of line."""
    earlier = {
        **glucose,
        "id": _id("glucose-2025"),
        "identifier": [{"system": "urn:medledger:fixture", "value": "glucose-2025"}],
        "effectiveDateTime": "2025-06-15T08:10:00Z",
        "valueQuantity": {**glucose["valueQuantity"], "value": 118},
    }
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": _id("allergy-penicillin"),
        "clinicalStatus": {
            "coding": [{"system": _TERMINOLOGY + "allergyintolerance-clinical", "code": "active"}],
            "text": "Active",
        },
        "verificationStatus": {
            "coding": [
                {"system": _TERMINOLOGY + "allergyintolerance-verification", "code": "confirmed"}
            ]
        },
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "code": {"coding": [{"system": _SNOMED, "code": "764146007", "display": "Penicillin"}]},
        "patient": {"reference": patient},
        "recordedDate": "2015-02-03T10:00:00Z",
        "reaction": [
            {
                "manifestation": [
                    {"coding": [{"system": _SNOMED, "code": "247472004", "display": "Hives"}]}
                ],
                "severity": "moderate",
            }
        ],
    }
    resolved = {
        "resourceType": "Condition",
        "id": _id("condition-resolved"),
        "clinicalStatus": {
            "coding": [{"system": _TERMINOLOGY + "condition-clinical", "code": "resolved"}],
            "text": "Resolved",
        },
        "code": {
            "coding": [{"system": _SNOMED, "code": "195967001", "display": "Asthma"}],
            "text": "Asthma (childhood)",
        },
        "subject": {"reference": patient},
        "onsetDateTime": "1968",
    }
    risk = {
        "resourceType": "RiskAssessment",
        "id": _id("risk-diabetes"),
        "meta": {
            "security": [
                {
                    "system": _TERMINOLOGY + "v3-ObservationValue",
                    "code": "AIAST",
                    "display": "Artificial Intelligence asserted",
                }
            ]
        },
        "extension": [
            {
                "url": "https://medledger.dev/fhir/StructureDefinition/ledger-entry",
                "extension": [
                    {"url": "kind", "valueCode": "INFERENCE_MADE"},
                    {"url": "leafIndex", "valueString": "40"},
                ],
            }
        ],
        "status": "final",
        "method": {
            "coding": [
                {
                    "system": "https://medledger.dev/fhir/CodeSystem/model",
                    "code": "diabetes-progression|1",
                    "display": "Diabetes progression at one year",
                }
            ],
            "text": "diabetes-progression version 1: linear regression",
        },
        "code": {"text": "Diabetes progression at one year"},
        "subject": {"reference": patient},
        "occurrenceDateTime": "2026-01-20T14:05:00Z",
        "basis": [{"reference": f"Observation/{glucose['id']}/_history/1"}],
        "prediction": [
            {
                "extension": [
                    {
                        "url": "https://medledger.dev/fhir/StructureDefinition/predicted-value",
                        "valueDecimal": 182.4,
                    }
                ],
                "outcome": {"text": "disease progression one year after baseline (score)"},
                "rationale": "score 182.4, base score 152.1",
            }
        ],
    }
    return [earlier, allergy, resolved, risk]


def fixture_resources() -> list[dict[str, Any]]:
    """The fixture patient's resources as the record holds them (ids, meta, references
    ``Type/id``); the Patient first."""
    record = DEMO_RECORDS[0]
    entries, displays = bundle_entries(record)
    stored = {e.full_url: f"{e.resource_type}/{_id(e.demo_id)}" for e in entries}
    resources = []
    for entry in entries:
        resource = rewrite(entry.resource, stored, displays)
        resource["id"] = _id(entry.demo_id)
        resources.append(resource)
    patient = stored[next(e.full_url for e in entries if e.resource_type == "Patient")]
    glucose = next(
        r
        for r in resources
        if r["resourceType"] == "Observation"
        and any(c.get("code") == "2345-7" for c in r["code"].get("coding", []))
    )
    resources += _extra_resources(patient, glucose)
    for resource in resources:
        meta = resource.get("meta", {})
        resource["meta"] = {**meta, "versionId": "1", "lastUpdated": _WRITTEN}
    resources.sort(key=lambda r: (r["resourceType"] != "Patient", r["resourceType"], r["id"]))
    return resources


def fixture_export() -> dict[str, Any]:
    """The fixture patient's export: a collection Bundle whose every entry carries a ledger
    proof that verifies under :func:`fixture_policy`. Runs its own event loop to sign the
    checkpoint: call it outside one."""
    resources = fixture_resources()
    salts = [hashlib.sha256(f"fixture salt {r['id']}".encode()).digest() for r in resources]
    written = Timestamp()
    written.FromJsonString(_WRITTEN.replace(".000", ""))
    ledger_entries = [
        ledger_pb2.LedgerEntry(
            kind=ledger_pb2.EVENT_KIND_RECORD_CREATED,
            resource=ledger_pb2.ResourceRef(
                type=r["resourceType"],
                id=blinded_resource_id(record_blinding_salt(salt), r["resourceType"], r["id"], 1),
            ),
            content_commitment=commit_json(salt, r),
            actor="hospital-a-app",
            organization="hospital-a",
            time=written,
        ).SerializeToString(deterministic=True)
        for r, salt in zip(resources, salts, strict=True)
    ]
    # Leaf 0 is another event, as in any real log; the fixture's entries follow.
    leaves = [leaf_hash(b"fixture: an earlier event"), *map(leaf_hash, ledger_entries)]
    body = Checkpoint(FIXTURE_ORIGIN, len(leaves), root_hash(leaves)).body()
    note = asyncio.run(sign_note(body, [fixture_signer()]))
    entries = []
    for index, (resource, salt, entry_bytes) in enumerate(
        zip(resources, salts, ledger_entries, strict=True), start=1
    ):
        receipt = ledger_pb2.Receipt(
            leaf_index=index,
            leaf_hash=leaves[index],
            checkpoint=note,
            inclusion_proof=inclusion_proof(index, leaves),
        )
        entries.append(
            {
                "fullUrl": FULL_URL_PREFIX + resource["id"],
                "resource": resource,
                "extension": [ledger_proof_extension(receipt, entry_bytes, salt)],
            }
        )
    return {
        "resourceType": "Bundle",
        "id": _id("export"),
        "type": "collection",
        "timestamp": FIXTURE_TIMESTAMP,
        "entry": entries,
    }
