"""IngestHl7V2 against real servers: ADT and ORU messages become FHIR resources in one
ledger step, resends write nothing new, bad fields are located without echoing values, and
a message whose ledger step failed is finished by its resend."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from medledger.api.record.v1 import record_pb2
from medledger.common.errors import from_rpc_error

from . import test_record_api
from .test_record_api import TREAT, Caller, RecordApi, get

api = test_record_api.api  # the module-scoped fixture: its servers, started for this module

STAMP = "20261129101500+0100"


def adt(
    event: str, control: str, mrn: str, *, family: str = "Okafor", version: str = "2.5.1"
) -> str:
    segments = [
        f"MSH|^~\\&|ADT1|HOSP-A|MEDLEDGER|ML|{STAMP}||ADT^{event}^ADT_{event}|{control}|P|{version}",
        "EVN|" + event + "|" + STAMP,
        f"PID|1||{mrn}^^^HOSP-A^MR||{family}^Adaeze^N||19790412|F"
        "|||12 Elm Rd^^Leeds^^LS1 4AB||0113 496 0000",
        "PV1|1|I|WARD1^101^A||||||||||||||||V" + control + "|||||||||||||||||||||||||" + STAMP,
    ]
    return "\r".join(segments)


def oru(control: str, mrn: str, glucose: str = "105", *, separator: str = "\r") -> str:
    segments = [
        f"MSH|^~\\&|LAB|HOSP-A|MEDLEDGER|ML|{STAMP}||ORU^R01^ORU_R01|{control}|P|2.3",
        f"PID|1||{mrn}^^^HOSP-A^MR||Okafor^Adaeze",
        f"OBR|1||ACC-{control}|24323-8^Metabolic panel^LN|||{STAMP}|||||||||||||||||F",
        f"OBX|1|NM|2345-7^Glucose^LN||{glucose}|mg/dL|70-99|H|||F|||{STAMP}",
        f"OBX|2|NM|2160-0^Creatinine^LN||0.9|mg/dL|0.6-1.1|N|||F|||{STAMP}",
        "OBX|3|ST|8251-1^Comment^LN||haemolysed \\T\\ repeated||||||F",
    ]
    return separator.join(segments)


async def ingest(caller: Caller, message: str, key: str = "") -> record_pb2.IngestHl7V2Response:
    return await caller.stub.IngestHl7V2(
        record_pb2.IngestHl7V2Request(message=message, purpose=TREAT, idempotency_key=key)
    )


def errors(reply: record_pb2.IngestHl7V2Response) -> list[str]:
    blocking = (record_pb2.ISSUE_SEVERITY_ERROR, record_pb2.ISSUE_SEVERITY_FATAL)
    return [i.location for i in reply.issues if i.severity in blocking]


async def test_admission_creates_patient_and_encounter_in_one_ledger_step(api: RecordApi) -> None:
    mrn, control = f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:12]
    size = await api.size()
    reply = await ingest(api.a, adt("A01", control, mrn))
    assert errors(reply) == []
    assert reply.message_type == "ADT^A01"
    assert [w.resource_type for w in reply.written] == ["Patient", "Encounter"]
    receipts = [w.receipt for w in reply.written]
    assert len({r.checkpoint for r in receipts}) == 1  # one durable ledger step
    assert [r.leaf_index for r in receipts] == [receipts[0].leaf_index, receipts[0].leaf_index + 1]
    # Both entries, and identity's registration of who holds the new patient.
    after = await api.size()
    assert after == size + 3
    patient = json.loads((await get(api.a, "Patient", reply.written[0].id)).resource_json)
    assert patient["name"][0]["family"] == "Okafor"
    assert patient["birthDate"] == "1979-04-12"
    assert patient["identifier"][0]["value"] == mrn
    encounter = json.loads((await get(api.a, "Encounter", reply.written[1].id)).resource_json)
    assert encounter["subject"]["reference"] == f"Patient/{reply.written[0].id}"
    assert encounter["status"] == "in-progress"
    assert encounter["period"]["start"] == "2026-11-29T10:15:00+01:00"

    # The interface engine resends the same message (its ACK was lost): nothing new.
    again = await ingest(api.a, adt("A01", control, mrn))
    assert [(w.id, w.version) for w in again.written] == [(w.id, w.version) for w in reply.written]
    assert await api.size() == after + 2  # the two reads above, nothing written
    # The same control id for another message is refused, not silently replayed.
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await ingest(api.a, adt("A01", control, mrn, family="Other"))
    assert reused.value.code() == grpc.StatusCode.ABORTED
    assert from_rpc_error(reused.value).reason == "IDEMPOTENCY_KEY_REUSED"

    # A registration of the same patient adds an Encounter only; an A08 updates the Patient.
    registered = await ingest(api.a, adt("A04", uuid.uuid4().hex[:12], mrn))
    assert [w.resource_type for w in registered.written] == ["Encounter"]
    updated = await ingest(api.a, adt("A08", uuid.uuid4().hex[:12], mrn, family="Okafor-Reid"))
    assert [(w.resource_type, w.id, w.version) for w in updated.written] == [
        ("Patient", reply.written[0].id, 2)
    ]
    patient = json.loads((await get(api.a, "Patient", reply.written[0].id)).resource_json)
    assert patient["name"][0]["family"] == "Okafor-Reid"


async def test_lab_results_become_observations_and_a_report(api: RecordApi) -> None:
    mrn = f"MRN{uuid.uuid4().hex[:8]}"
    admitted = await ingest(api.a, adt("A01", uuid.uuid4().hex[:12], mrn))
    patient_id = admitted.written[0].id
    # LF between segments, as files and some engines send them; escapes decoded.
    reply = await ingest(api.a, oru(uuid.uuid4().hex[:12], mrn, separator="\n"))
    assert errors(reply) == []
    kinds = [w.resource_type for w in reply.written]
    assert kinds == ["Observation", "Observation", "Observation", "DiagnosticReport"]
    assert len({w.receipt.checkpoint for w in reply.written}) == 1
    glucose = json.loads((await get(api.a, "Observation", reply.written[0].id)).resource_json)
    assert glucose["valueQuantity"] == {
        "value": 105,
        "unit": "mg/dL",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
    }
    assert glucose["code"]["coding"][0] == {
        "code": "2345-7",
        "system": "http://loinc.org",
        "display": "Glucose",
    }
    assert glucose["subject"]["reference"] == f"Patient/{patient_id}"
    assert glucose["interpretation"][0]["coding"][0]["code"] == "H"
    comment = json.loads((await get(api.a, "Observation", reply.written[2].id)).resource_json)
    assert comment["valueString"] == "haemolysed & repeated"
    report = json.loads((await get(api.a, "DiagnosticReport", reply.written[3].id)).resource_json)
    assert [r["reference"] for r in report["result"]] == [
        f"Observation/{w.id}" for w in reply.written[:3]
    ]


async def test_a_bad_field_refuses_the_whole_message_without_echoing_it(api: RecordApi) -> None:
    mrn = f"MRN{uuid.uuid4().hex[:8]}"
    await ingest(api.a, adt("A01", uuid.uuid4().hex[:12], mrn))
    size = await api.size()
    reply = await ingest(api.a, oru(uuid.uuid4().hex[:12], mrn, glucose="1O5"))
    assert errors(reply) == ["OBX[1]-5"]
    assert list(reply.written) == []
    assert all("1O5" not in i.diagnostics for i in reply.issues)
    assert await api.size() == size
    bad_date = adt("A01", uuid.uuid4().hex[:12], f"MRN{uuid.uuid4().hex[:8]}").replace(
        "19790412", "19791312"
    )
    assert errors(await ingest(api.a, bad_date)) == ["PID-7"]
    unknown = await ingest(api.a, oru(uuid.uuid4().hex[:12], f"NOBODY{uuid.uuid4().hex[:6]}"))
    assert errors(unknown) == ["PID-3"]
    assert [i.code for i in unknown.issues if i.location == "PID-3"] == ["not-found"]
    old = await ingest(api.a, adt("A01", uuid.uuid4().hex[:12], "X", version="2.2"))
    assert errors(old) == ["MSH-12"]
    assert await api.size() == size


async def test_versions_23_to_28_are_read(api: RecordApi) -> None:
    for version in ("2.3", "2.4", "2.6", "2.7.1", "2.8"):
        reply = await ingest(
            api.a, adt("A04", uuid.uuid4().hex[:12], f"MRN{uuid.uuid4().hex[:8]}", version=version)
        )
        assert errors(reply) == [], version
        assert [w.resource_type for w in reply.written] == ["Patient", "Encounter"]


async def patients_with_identifier(
    caller: Caller, identifier: str
) -> list[record_pb2.StoredResource]:
    """The Patients ``caller`` finds by ``identifier`` (an MRN)."""
    found = await caller.stub.SearchResources(
        record_pb2.SearchResourcesRequest(
            resource_type="Patient",
            params=[record_pb2.SearchParam(name="identifier", value=identifier)],
            purpose=TREAT,
        )
    )
    return list(found.resources)


async def test_a_message_whose_ledger_step_failed_is_finished_by_its_resend(
    api: RecordApi,
) -> None:
    mrn, control = f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:12]
    message = adt("A01", control, mrn)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await ingest(api.cut, message)  # this record server's ledger does not answer
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await patients_with_identifier(api.a, mrn) == []  # nothing visible
    size = await api.size()
    reply = await ingest(api.a, message)
    assert [w.resource_type for w in reply.written] == ["Patient", "Encounter"]
    assert await api.size() == size + 2
    stored = await get(api.a, "Patient", reply.written[0].id)
    assert json.loads(stored.resource_json)["identifier"][0]["value"] == mrn
