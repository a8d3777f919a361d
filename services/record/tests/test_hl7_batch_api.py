"""IngestHl7V2Batch against real servers: a batch file's messages are written together, each
atomic and idempotent as if sent alone; one refused message does not stop the others; an
envelope that does not add up writes nothing; a step the ledger did not take is finished by
sending the batch again."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.testkit.tokens import authed_channel

from . import test_record_api
from .test_hl7_ingest import adt, errors, ingest, oru, patients_with_identifier
from .test_record_api import ORG_B, TREAT, Caller, RecordApi, get

api = test_record_api.api  # the module-scoped fixture: its servers, started for this module


def envelope(*messages: str, count: int | None = None) -> str:
    """A batch file: FHS, BHS, the messages, BTS (with ``count``, default theirs), FTS."""
    trailer = len(messages) if count is None else count
    return "\r".join(
        ["FHS|^~\\&|LAB|HOSP-A", "BHS|^~\\&|LAB|HOSP-A", *messages, f"BTS|{trailer}", "FTS|1"]
    )


async def ingest_batch(caller: Caller, batch: str) -> record_pb2.IngestHl7V2BatchResponse:
    return await caller.stub.IngestHl7V2Batch(
        record_pb2.IngestHl7V2BatchRequest(batch=batch, purpose=TREAT)
    )


def new_ids() -> tuple[str, str, str]:
    """A new MRN and two control ids."""
    return f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]


async def test_a_batch_is_written_message_by_message_in_few_ledger_steps(api: RecordApi) -> None:
    known, first_control, _ = new_ids()
    await ingest(api.a, adt("A01", first_control, known))
    mrn, admit, result = new_ids()
    other_result = uuid.uuid4().hex[:12]
    batch = envelope(adt("A01", admit, mrn), oru(result, mrn), oru(other_result, known))
    size = await api.size()
    reply = await ingest_batch(api.a, batch)
    assert list(reply.issues) == []
    assert [m.control_id for m in reply.messages] == [admit, result, other_result]
    assert [errors(m) for m in reply.messages] == [[], [], []]
    kinds = [[w.resource_type for w in m.written] for m in reply.messages]
    results = ["Observation", "Observation", "Observation", "DiagnosticReport"]
    assert kinds == [["Patient", "Encounter"], results, results]
    # The results for the patient admitted in this batch were planned once it was stored
    # (a step of their own after the admission); the other results went with them.
    patient_id = reply.messages[0].written[0].id
    glucose = json.loads(
        (await get(api.a, "Observation", reply.messages[1].written[0].id)).resource_json
    )
    assert glucose["subject"]["reference"] == f"Patient/{patient_id}"
    checkpoints = [{w.receipt.checkpoint for w in m.written} for m in reply.messages]
    assert all(len(c) == 1 for c in checkpoints)
    assert checkpoints[1] == checkpoints[2] != checkpoints[0]
    # An entry for every resource written, then the read above.
    kinds_logged = [e.entry.kind for e in await api.entries_since(size)]
    assert kinds_logged == [ledger_pb2.EVENT_KIND_RECORD_CREATED] * 10 + [
        ledger_pb2.EVENT_KIND_RECORD_READ
    ]
    after = await api.size()

    # The batch sent again writes nothing; so does one of its messages sent alone.
    again = await ingest_batch(api.a, batch)
    assert [[(w.id, w.version) for w in m.written] for m in again.messages] == [
        [(w.id, w.version) for w in m.written] for m in reply.messages
    ]
    alone = await ingest(api.a, oru(other_result, known))
    assert [w.id for w in alone.written] == [w.id for w in reply.messages[2].written]
    assert await api.size() == after


async def test_a_refused_message_does_not_stop_the_others(api: RecordApi) -> None:
    mrn, admit, good = new_ids()
    await ingest(api.a, adt("A01", admit, mrn))
    bad_value, unknown, reused = (uuid.uuid4().hex[:12] for _ in range(3))
    await ingest(api.a, oru(reused, mrn))
    batch = envelope(
        oru(bad_value, mrn, glucose="1O5"),
        oru(unknown, f"MRN{uuid.uuid4().hex[:8]}"),
        oru(reused, mrn, glucose="250"),  # a control id this sender used for another message
        oru(good, mrn),
        "MSH|^~\\&|LAB|HOSP-A|MEDLEDGER|ML|20261129||ORU^R01|x|P|9.9",
    )
    size = await api.size()
    reply = await ingest_batch(api.a, batch)
    assert list(reply.issues) == []
    assert [errors(m) for m in reply.messages] == [
        ["OBX[1]-5"],
        ["PID-3"],
        ["MSH-10"],
        [],
        ["MSH-12"],
    ]
    assert [i.code for i in reply.messages[2].issues] == ["duplicate"]
    assert [len(m.written) for m in reply.messages] == [0, 0, 0, 4, 0]
    assert await api.size() == size + 4
    for answer in reply.messages:  # no value of a message comes back
        assert all("1O5" not in i.diagnostics and "250" not in i.diagnostics for i in answer.issues)


async def test_another_organisations_patient_is_refused_for_that_message_only(
    api: RecordApi,
) -> None:
    held_by_a, admit, denied = new_ids()
    await ingest(api.a, adt("A01", admit, held_by_a))
    own, own_admit, _ = new_ids()
    token = await api.platform.token("system/*.cruds", ORG_B, [TREAT])  # B's interface engine
    channel = authed_channel(api.record_address, token)
    try:
        engine_b = Caller(record_pb2_grpc.RecordServiceStub(channel), "engine-b")
        batch = envelope(oru(denied, held_by_a), adt("A01", own_admit, own))
        reply = await ingest_batch(engine_b, batch)
    finally:
        await channel.close(None)
    assert [i.code for i in reply.messages[0].issues] == ["forbidden"]
    assert list(reply.messages[0].written) == []
    assert [w.resource_type for w in reply.messages[1].written] == ["Patient", "Encounter"]


async def test_an_envelope_that_does_not_add_up_writes_nothing(api: RecordApi) -> None:
    mrn, admit, _ = new_ids()
    size = await api.size()
    reply = await ingest_batch(api.a, envelope(adt("A01", admit, mrn), count=2))
    assert [i.location for i in reply.issues] == ["BTS-1"]
    assert reply.issues[0].severity == record_pb2.ISSUE_SEVERITY_FATAL
    assert list(reply.messages) == []
    cut = "\r".join(["BHS|^~\\&", adt("A01", admit, mrn)])  # the trailer never came
    assert [i.location for i in (await ingest_batch(api.a, cut)).issues] == ["BHS"]
    assert await api.size() == size


async def test_a_batch_whose_ledger_step_failed_is_finished_when_sent_again(
    api: RecordApi,
) -> None:
    mrn, admit, result = new_ids()
    batch = envelope(adt("A01", admit, mrn), oru(result, mrn))
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await ingest_batch(api.cut, batch)  # this record server's ledger does not answer
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await patients_with_identifier(api.a, mrn) == []  # nothing visible
    reply = await ingest_batch(api.a, batch)
    assert [[w.resource_type for w in m.written] for m in reply.messages] == [
        ["Patient", "Encounter"],
        ["Observation"] * 3 + ["DiagnosticReport"],
    ]


async def test_updates_of_one_patient_in_a_batch_each_build_on_the_last(api: RecordApi) -> None:
    mrn, admit, result = new_ids()
    admitted = await ingest(api.a, adt("A01", admit, mrn))
    patient_id = admitted.written[0].id
    first, second = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    batch = envelope(
        adt("A08", first, mrn, family="Okafor-Reid"),
        oru(result, mrn),
        adt("A08", second, mrn, family="Reid"),
    )
    reply = await ingest_batch(api.a, batch)
    assert [errors(m) for m in reply.messages] == [[], [], []]
    assert [(w.id, w.version) for w in reply.messages[0].written] == [(patient_id, 2)]
    assert [(w.id, w.version) for w in reply.messages[2].written] == [(patient_id, 3)]
    stored = json.loads((await get(api.a, "Patient", patient_id)).resource_json)
    assert stored["name"][0]["family"] == "Reid"
