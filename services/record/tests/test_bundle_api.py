"""ExecuteBundle over gRPC against the real platform: a FHIR transaction of creates stored
all or none in one ledger step, its entries naming each other by urn:uuid fullUrls;
problems located under their entry; consent enforced per patient; a retry with the same
key answered with the first result."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc

from medledger.api.record.v1 import record_pb2

from . import test_record_api
from .test_record_api import (
    ORG_A,
    TREAT,
    Caller,
    RecordApi,
    check_receipt,
    failure,
    get,
    new_patient,
    resource,
    search,
)

api = test_record_api.api
CREATED = test_record_api.ledger_pb2.EVENT_KIND_RECORD_CREATED


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def entry(document: str | dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    parsed = json.loads(document) if isinstance(document, str) else document
    made: dict[str, Any] = {
        "resource": parsed,
        "request": {"method": "POST", "url": parsed["resourceType"]},
    }
    if full_url is not None:
        made["fullUrl"] = full_url
    return made


def bundle(*entries: dict[str, Any], kind: str = "transaction") -> str:
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)})


async def execute(caller: Caller, text: str, key: str = "") -> list[record_pb2.StoredResource]:
    reply = await caller.stub.ExecuteBundle(
        record_pb2.ExecuteBundleRequest(bundle_json=text, purpose=TREAT, idempotency_key=key)
    )
    return list(reply.resources)


async def test_a_patient_and_its_resources_are_created_in_one_step(api: RecordApi) -> None:
    before = await api.size()
    patient_url, observation_url = urn(), urn()
    observation = json.loads(resource("Observation"))
    observation["subject"] = {"reference": patient_url}
    provenance = json.loads(resource("Provenance"))
    provenance["target"] = [{"reference": observation_url}, {"reference": patient_url}]
    stored = await execute(
        api.a,
        bundle(
            entry(resource("Patient"), patient_url),
            entry(observation, observation_url),
            entry(provenance),
        ),
    )
    assert [s.resource_type for s in stored] == ["Patient", "Observation", "Provenance"]
    assert [s.version for s in stored] == [1, 1, 1]
    patient, made, prov = stored
    # References to entries now name the created resources.
    assert json.loads(made.resource_json)["subject"] == {"reference": f"Patient/{patient.id}"}
    # A Provenance's targets, version-specific.
    assert [t["reference"] for t in json.loads(prov.resource_json)["target"]] == [
        f"Observation/{made.id}/_history/1",
        f"Patient/{patient.id}/_history/1",
    ]
    for each in stored:
        entry_ = await check_receipt(api, each, CREATED)
        assert entry_.organization == ORG_A
        assert (await get(api.a, each.resource_type, each.id)).resource_json == each.resource_json
    # One ledger step: every receipt on the same checkpoint.
    assert len({s.receipt.checkpoint for s in stored}) == 1
    assert len([e for e in await api.entries_since(before) if e.entry.kind == CREATED]) == 3
    found = await search(api.a, "Observation", patient=patient.id)
    assert [r.id for r in found.resources] == [made.id]


async def test_a_bad_entry_writes_nothing_and_is_located(api: RecordApi) -> None:
    patient = await new_patient(api)
    elsewhere = await test_record_api.create(
        api.a, resource("Observation", (await new_patient(api)).id)
    )
    before = await api.size()
    secret = "Ada-" + uuid.uuid4().hex
    good = entry(resource("Observation", patient.id))
    bad = entry(resource("Observation", patient.id, status=secret))
    refused = await failure(execute(api.a, bundle(good, bad)))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.violations] == ["entry[1].resource.status"]
    assert secret not in refused.message
    assert secret not in str(refused.violations)
    assert await api.entries_since(before) == []
    assert list((await search(api.a, "Observation", patient=patient.id)).resources) == []

    dangling = json.loads(resource("Observation"))
    dangling["subject"] = {"reference": urn()}
    provenance = json.loads(resource("Provenance"))
    provenance["target"] = [
        {"reference": f"Observation/{elsewhere.id}"},
        {"reference": f"Patient/{patient.id}"},
    ]
    # A Provenance naming a resource of this bundle that belongs to another patient.
    other_url, theirs_url = urn(), urn()
    mixed = json.loads(resource("Provenance"))
    mixed["target"] = [{"reference": theirs_url}, {"reference": f"Patient/{patient.id}"}]
    theirs = json.loads(resource("Observation"))
    theirs["subject"] = {"reference": other_url}
    cases = [
        (
            bundle(entry(resource("Patient"), other_url), entry(theirs, theirs_url), entry(mixed)),
            ["entry[2].resource.target[0].reference"],
        ),
        (bundle(good, kind="batch"), ["type"]),
        (json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []}), ["entry"]),
        ("[1]", ["resourceType"]),
        ("not json", ["bundle_json"]),
        (
            bundle({**good, "request": {"method": "DELETE", "url": "Observation/x"}}),
            ["entry[0].request.method"],
        ),
        (
            bundle({**good, "request": {"method": "POST", "url": "Patient"}}),
            ["entry[0].request.url"],
        ),
        (bundle(entry(dangling)), ["entry[0].resource.subject.reference"]),
        (
            bundle(good, entry(resource("Observation", "no-such-patient"))),
            ["entry[1].resource.subject.reference"],
        ),
        (bundle(entry(provenance)), ["entry[0].resource.target[0].reference"]),
        (bundle(entry(resource("Patient"), "urn:uuid:x"), good), ["entry[0].fullUrl"]),
    ]
    for text, fields in cases:
        refused = await failure(execute(api.a, text))
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [v.field for v in refused.violations] == fields
    assert await api.entries_since(before) == []


def put(document: dict[str, Any], version: int | None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "method": "PUT",
        "url": f"{document['resourceType']}/{document['id']}",
    }
    if version is not None:
        request["ifMatch"] = f'W/"{version}"'
    return {"resource": document, "request": request}


async def test_updates_go_with_creates_and_a_stale_one_writes_nothing(api: RecordApi) -> None:
    patient = await new_patient(api)
    stored = json.loads(patient.resource_json)
    changed = {**stored, "active": False}
    observation = entry(resource("Observation", patient.id))
    provenance = json.loads(resource("Provenance"))
    patient_url = urn()
    provenance["target"] = [{"reference": patient_url}]
    written = await execute(
        api.a,
        bundle({**put(changed, 1), "fullUrl": patient_url}, observation, entry(provenance)),
    )
    assert [(w.resource_type, w.version) for w in written] == [
        ("Patient", 2),
        ("Observation", 1),
        ("Provenance", 1),
    ]
    assert written[0].id == patient.id
    assert json.loads((await get(api.a, "Patient", patient.id)).resource_json)["active"] is False
    # The Provenance names the version this bundle wrote.
    targets = json.loads(written[2].resource_json)["target"]
    assert targets == [{"reference": f"Patient/{patient.id}/_history/2"}]

    before = await api.size()
    stale = await failure(execute(api.a, bundle(put(changed, 1), observation)))
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "STALE_VERSION")
    assert await api.entries_since(before) == []
    assert (await get(api.a, "Patient", patient.id)).version == 2
    before = await api.size()
    for text, fields in [
        (bundle(put(changed, None)), ["entry[0].request.ifMatch"]),
        (
            bundle(
                {
                    **put(changed, 2),
                    "request": {"method": "PUT", "url": "Patient/other", "ifMatch": 'W/"2"'},
                }
            ),
            ["entry[0].resource.id"],
        ),
        (bundle(put(changed, 2), put(changed, 2)), ["entry[1].request.url"]),
    ]:
        refused = await failure(execute(api.a, text))
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [v.field for v in refused.violations] == fields
    assert await api.entries_since(before) == []


async def test_another_organisation_needs_consent_for_every_entry(api: RecordApi) -> None:
    patient = await new_patient(api)
    before = await api.size()
    refused = await failure(execute(api.b, bundle(entry(resource("Observation", patient.id)))))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert await api.entries_since(before) == []


async def test_a_retry_with_the_same_key_returns_the_first_result(api: RecordApi) -> None:
    patient = await new_patient(api)
    text = bundle(*(entry(resource("Observation", patient.id)) for _ in range(3)))
    key = f"bundle-{uuid.uuid4()}"
    first = await execute(api.a, text, key)
    before = await api.size()
    again = await execute(api.a, text, key)
    assert [(s.id, s.version, s.receipt.leaf_index) for s in again] == [
        (s.id, s.version, s.receipt.leaf_index) for s in first
    ]
    assert await api.entries_since(before) == []
    reused = await failure(execute(api.a, bundle(entry(resource("Observation", patient.id))), key))
    assert (reused.code, reused.reason) == (grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED")


async def test_with_the_ledger_down_nothing_is_written(api: RecordApi) -> None:
    patient = await new_patient(api)
    down = await failure(execute(api.cut, bundle(entry(resource("Observation", patient.id)))))
    assert down.code == grpc.StatusCode.UNAVAILABLE
    found = await search(api.a, "Observation", patient=patient.id)
    assert list(found.resources) == []


async def test_a_bundle_resent_while_being_written_is_written_and_ledgered_once(
    api: RecordApi,
) -> None:
    """Resends of one transaction with one key, all in flight at once: every answer is the
    first attempt's resources, and the ledger holds their entries once."""
    patient = await new_patient(api)
    text = bundle(*(entry(resource("Observation", patient.id)) for _ in range(3)))
    key = f"bundle-resent-at-once-{patient.id}"
    before = await api.size()
    answers = await asyncio.gather(*(execute(api.a, text, key) for _ in range(4)))
    first = [(s.id, s.receipt.leaf_index) for s in answers[0]]
    assert len({s[0] for s in first}) == 3
    assert all([(s.id, s.receipt.leaf_index) for s in a] == first for a in answers)
    created = [e for e in await api.entries_since(before) if e.entry.kind == CREATED]
    assert sorted(e.leaf_index for e in created) == sorted(index for _, index in first)
