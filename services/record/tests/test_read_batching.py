"""Ledger entries are appended together when they arrive together: a lone one goes at once;
those arriving while a batch is in flight go in the next one; one call's trouble never fails
another's; and through the service, every concurrent read and write is ledgered once, a
resent write included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from medledger.common.batching import Batcher
from medledger.common.errors import Aborted, FailedPrecondition, Unavailable
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import PatientAppend
from medledger.record.adapters.ledger_events import PatientLogLedger, _one_entrys_trouble
from medledger.record.domain.peers import RecordEvent

from . import test_record_api
from .test_record_api import RecordApi, get, new_patient, resource

api = test_record_api.api


def item(patient: str) -> PatientAppend:
    return PatientAppend(patient, LedgerEvent(kind=1, actor="app", organization="org"))


class Ledger:
    """Appends by patient id; a patient named "erased-*" is refused, as PatientLog refuses
    an erased patient, and "down" makes the ledger unavailable."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()

    def _answer(self, patient: str) -> bytes:
        if patient.startswith("erased"):
            raise FailedPrecondition("the patient was erased", reason="PATIENT_ERASED")
        if patient == "down":
            raise Unavailable("ledger")
        return f"receipt of {patient}".encode()

    async def flush(self, items: list[PatientAppend]) -> list[bytes]:
        self.batches.append([i.patient_id for i in items])
        await self.release.wait()
        return [self._answer(i.patient_id) for i in items]

    async def single(self, one: PatientAppend) -> bytes:
        (receipt,) = await self.flush([one])
        return receipt


def ledger_batcher(
    flush: Callable[[list[PatientAppend]], Awaitable[list[bytes]]],
    single: Callable[[PatientAppend], Awaitable[bytes]],
) -> Batcher[PatientAppend, bytes]:
    """As the record's ledger adapter batches its appends."""
    return Batcher(flush, single, alone=_one_entrys_trouble, dependency="ledger")


async def behind_a_batch(
    ledger: Ledger, batcher: Batcher[PatientAppend, bytes], names: tuple[str, ...]
) -> tuple[asyncio.Task[bytes], list[asyncio.Task[bytes]]]:
    """A read ("p") in flight, held by the ledger, and ``names`` submitted behind it; the
    ledger not yet released."""
    ledger.release.clear()
    blocker = asyncio.create_task(batcher.submit(item("p")))
    await asyncio.sleep(0.01)
    behind = [asyncio.create_task(batcher.submit(item(name))) for name in names]
    await asyncio.sleep(0.01)
    return blocker, behind


async def test_a_lone_read_goes_at_once_and_the_next_ones_together() -> None:
    ledger = Ledger()
    batcher = ledger_batcher(ledger.flush, ledger.single)
    assert await batcher.submit(item("p0")) == b"receipt of p0"
    ledger.release.clear()
    first = asyncio.create_task(batcher.submit(item("p1")))
    await asyncio.sleep(0.01)  # p1's batch is in flight
    rest = [asyncio.create_task(batcher.submit(item(f"q{n}"))) for n in range(9)]
    await asyncio.sleep(0.01)
    ledger.release.set()
    assert await first == b"receipt of p1"
    assert await asyncio.gather(*rest) == [f"receipt of q{n}".encode() for n in range(9)]
    assert ledger.batches == [["p0"], ["p1"], [f"q{n}" for n in range(9)]]


async def test_a_lone_refused_read_is_not_appended_twice() -> None:
    ledger = Ledger()
    batcher = ledger_batcher(ledger.flush, ledger.single)
    with pytest.raises(FailedPrecondition):
        await batcher.submit(item("erased-1"))
    assert ledger.batches == [["erased-1"]]


async def test_one_reads_refusal_is_its_own_and_an_outage_is_everyones() -> None:
    ledger = Ledger()
    batcher = ledger_batcher(ledger.flush, ledger.single)
    blocker, mixed = await behind_a_batch(ledger, batcher, ("a", "erased-1", "b"))
    ledger.release.set()
    await blocker
    a, erased, b = await asyncio.gather(*mixed, return_exceptions=True)
    assert (a, b) == (b"receipt of a", b"receipt of b")
    assert isinstance(erased, FailedPrecondition)
    # The batch, then each read again on its own.
    assert ledger.batches[1:] == [["a", "erased-1", "b"], ["a"], ["erased-1"], ["b"]]

    ledger.batches.clear()
    blocker, together = await behind_a_batch(ledger, batcher, ("c", "down"))
    ledger.release.set()
    await blocker
    outcomes = await asyncio.gather(*together, return_exceptions=True)
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert ledger.batches[1:] == [["c", "down"]]  # not retried one by one


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    ledger = Ledger()
    batcher = ledger_batcher(ledger.flush, ledger.single)
    blocker, (gone, stays) = await behind_a_batch(ledger, batcher, ("gone", "stays"))
    gone.cancel()
    ledger.release.set()
    await blocker
    assert await stays == b"receipt of stays"
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_concurrent_reads_are_each_ledgered_once(api: RecordApi) -> None:
    patients = [await new_patient(api) for _ in range(3)]
    stored: list[Any] = []
    for patient in patients:
        for _ in range(4):
            reply = await api.a.stub.CreateResource(
                test_record_api.record_pb2.CreateResourceRequest(
                    resource_json=resource("Observation", patient.id),
                    purpose=test_record_api.TREAT,
                )
            )
            stored.append(reply.resource)
    before = await api.size()
    read = await asyncio.gather(*(get(api.a, "Observation", s.id) for s in stored))
    assert [r.id for r in read] == [s.id for s in stored]
    reads = await api.reads_since(before, api.a)
    # One entry per read (their resource ids are blinded: each its own digest).
    assert len(reads) == len(stored)
    assert {e.resource.type for e in reads} == {"Observation"}
    assert len({e.resource.id for e in reads}) == len(stored)


async def test_concurrent_writes_and_their_resends_are_each_ledgered_once(
    api: RecordApi,
) -> None:
    patient = await new_patient(api)
    texts = [resource("Observation", patient.id) for _ in range(10)]
    keys = [f"batch-{n}-{patient.id}" for n in range(10)]

    async def create(text: str, key: str) -> Any:
        reply = await api.a.stub.CreateResource(
            test_record_api.record_pb2.CreateResourceRequest(
                resource_json=text, purpose=test_record_api.TREAT, idempotency_key=key
            )
        )
        return reply.resource

    before = await api.size()
    first = await asyncio.gather(*(create(t, k) for t, k in zip(texts, keys, strict=True)))
    assert len({c.id for c in first}) == 10
    # Resent together (answers lost): the first results, and nothing new in the ledger.
    middle = await api.size()
    again = await asyncio.gather(*(create(t, k) for t, k in zip(texts, keys, strict=True)))
    assert list(again) == list(first)
    entries = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == test_record_api.ledger_pb2.EVENT_KIND_RECORD_CREATED
    ]
    assert sorted(e.leaf_index for e in entries) == sorted(c.receipt.leaf_index for c in first)
    assert all(e.leaf_index < middle for e in entries)


async def test_every_call_of_a_batch_is_answered_whatever_a_retry_raises() -> None:
    ledger = Ledger()

    async def single(one: PatientAppend) -> bytes:
        if one.patient_id == "broken":
            raise RuntimeError("not a MedledgerError")
        return await ledger.single(one)

    batcher = ledger_batcher(ledger.flush, single)
    blocker, behind = await behind_a_batch(ledger, batcher, ("erased-1", "broken", "c"))
    ledger.release.set()
    await blocker
    erased, broken, c = await asyncio.wait_for(
        asyncio.gather(*behind, return_exceptions=True), timeout=5
    )
    assert isinstance(erased, FailedPrecondition)
    assert isinstance(broken, RuntimeError)
    assert c == b"receipt of c"


class GroupLog:
    """Stands for PatientLog.append_many: notes each AppendBatch's patients; the first waits
    for ``release``; a patient named "erased-*" makes the whole batch refused."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def append_many(self, items: list[PatientAppend], *, timeout: float) -> list[Any]:
        self.batches.append([i.patient_id for i in items])
        self.held.set()
        await self.release.wait()
        if any(i.patient_id.startswith("erased") for i in items):
            raise FailedPrecondition("the patient was erased", reason="PATIENT_ERASED")
        return [test_record_api.ledger_pb2.Receipt(leaf_index=n) for n in range(len(items))]


def _events(*patients: str) -> list[tuple[str, RecordEvent, str]]:
    event = RecordEvent(
        kind=1, actor="app", organization="org", purpose=1, resource_type="Observation"
    )
    return [(p, event, "") for p in patients]


async def test_bulk_writes_entries_go_together_never_split() -> None:
    log = GroupLog()
    ledger = PatientLogLedger(log)  # type: ignore[arg-type]
    first = asyncio.create_task(ledger.append_many(_events("a", "a")))
    await asyncio.wait_for(log.held.wait(), timeout=5)
    rest = [
        asyncio.create_task(ledger.append_many(_events(*group)))
        for group in (("b", "b", "b"), ("erased-1", "e"), ("c", "c"))
    ]
    await asyncio.sleep(0.01)
    log.release.set()
    a = await first
    b, erased, c = await asyncio.gather(*rest, return_exceptions=True)
    assert len(a) == 2
    assert isinstance(b, list)
    assert len(b) == 3
    assert isinstance(c, list)
    assert len(c) == 2
    assert isinstance(erased, FailedPrecondition)
    # Together in one AppendBatch, then (one refused) each request's alone, whole.
    assert log.batches == [
        ["a", "a"],
        ["b", "b", "b", "erased-1", "e", "c", "c"],
        ["b", "b", "b"],
        ["erased-1", "e"],
        ["c", "c"],
    ]


async def test_concurrent_creates_with_one_key_ledger_one_entry(api: RecordApi) -> None:
    """A client that resends while its first request is still being written (a timeout,
    then at once a retry) gets the first result, and the ledger holds one RECORD_CREATED:
    no entry about a version that was never stored."""
    patient = await new_patient(api)
    text = resource("Observation", patient.id)
    key = f"resent-at-once-{patient.id}"

    async def create() -> Any:
        reply = await api.a.stub.CreateResource(
            test_record_api.record_pb2.CreateResourceRequest(
                resource_json=text, purpose=test_record_api.TREAT, idempotency_key=key
            )
        )
        return reply.resource

    before = await api.size()
    answers = await asyncio.gather(*(create() for _ in range(4)))
    assert len({a.id for a in answers}) == 1
    assert len({a.receipt.leaf_index for a in answers}) == 1
    created = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == test_record_api.ledger_pb2.EVENT_KIND_RECORD_CREATED
    ]
    assert [e.leaf_index for e in created] == [answers[0].receipt.leaf_index]


async def test_a_batch_sends_each_key_once_and_answers_every_caller() -> None:
    """A write and a resend finishing it can meet in one batch: the ledger gets the entry
    once (it refuses a batch that repeats a key) and both callers get its receipt; the
    same key with another entry sends the batch's entries one at a time instead."""
    sent: list[list[str]] = []

    class Log:
        async def append_many(self, items: list[PatientAppend], *, timeout: float) -> list[Any]:
            sent.append([i.idempotency_key for i in items])
            return [test_record_api.ledger_pb2.Receipt(leaf_index=n) for n in range(len(items))]

        async def append(self, patient_id: str, event: LedgerEvent, **_: Any) -> Any:
            sent.append([_["idempotency_key"]])
            return test_record_api.ledger_pb2.Receipt(leaf_index=99)

    ledger = PatientLogLedger(Log())  # type: ignore[arg-type]

    def keyed(key: str, actor: str = "app") -> PatientAppend:
        return PatientAppend("p", LedgerEvent(kind=1, actor=actor, organization="org"), "", key)

    receipts = await ledger._append_batch([keyed("k1"), keyed(""), keyed("k1"), keyed("")])
    assert sent == [["k1", "", ""]]
    indices = [test_record_api.ledger_pb2.Receipt.FromString(r).leaf_index for r in receipts]
    assert indices == [0, 1, 0, 2]
    with pytest.raises(Aborted):
        await ledger._append_batch([keyed("k2"), keyed("k2", actor="someone else")])
    assert sent == [["k1", "", ""]]  # nothing sent: the batcher retries them one at a time


async def test_concurrent_updates_with_one_key_ledger_one_entry(api: RecordApi) -> None:
    """The same for an update resent while the first is being written: one new version,
    one RECORD_UPDATED, every answer the same."""
    patient = await new_patient(api)
    stored = await test_record_api.create(api.a, resource("Observation", patient.id))
    changed = json.loads(stored.resource_json)
    changed["status"] = "amended"
    key = f"update-resent-at-once-{patient.id}"

    async def update() -> Any:
        reply = await api.a.stub.UpdateResource(
            test_record_api.record_pb2.UpdateResourceRequest(
                resource_json=json.dumps(changed),
                expected_version=1,
                purpose=test_record_api.TREAT,
                idempotency_key=key,
            )
        )
        return reply.resource

    before = await api.size()
    answers = await asyncio.gather(*(update() for _ in range(4)))
    assert {(a.id, a.version) for a in answers} == {(stored.id, 2)}
    assert len({a.receipt.leaf_index for a in answers}) == 1
    updated = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == test_record_api.ledger_pb2.EVENT_KIND_RECORD_UPDATED
    ]
    assert [e.leaf_index for e in updated] == [answers[0].receipt.leaf_index]
