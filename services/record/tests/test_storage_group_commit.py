"""Group commit: single writes' commits that arrive while another commit is in flight go
together in ONE transaction; a lone one goes at once; a conflict in a group is decided for
each write alone (one erased patient fails only its own write); an outage is everyone's."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from medledger.common.errors import MedledgerError, Unavailable
from medledger.common.key_cache import DataKeyCache
from medledger.record.adapters.mongo_store import RecordStore
from medledger.record.domain.ports import PendingWrite, ResourceWrite, VersionCommit
from medledger.record.domain.records import EncryptedRecords


class _WatchedStore(RecordStore):
    """The real store, noting each commit transaction (its size, grouped or alone); the
    first commit waits for ``release`` so that others queue behind it."""

    def __init__(self, *args: Any, groups_fail: bool = False) -> None:
        super().__init__(*args)
        self.transactions: list[tuple[str, int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.held = asyncio.Event()
        self.groups_fail = groups_fail

    async def _hold(self) -> None:
        self.held.set()
        await self.release.wait()

    async def commit(self, commit: VersionCommit) -> None:
        self.transactions.append(("alone", 1))
        await self._hold()
        await super().commit(commit)

    async def commit_many(self, commits: Sequence[VersionCommit], *, grouped: bool = False) -> None:
        self.transactions.append(("group" if grouped else "bulk", len(commits)))
        await self._hold()
        if self.groups_fail and grouped:
            raise Unavailable("mongodb")
        await super().commit_many(commits, grouped=grouped)


async def _watched(records: Any, **options: Any) -> tuple[_WatchedStore, EncryptedRecords]:
    store = _WatchedStore(records.store._client, records.db.name, **options)
    return store, EncryptedRecords(store, records.keys, cache=DataKeyCache())


async def _behind_the_first(
    store: _WatchedStore, commits: Sequence[Callable[[], Awaitable[Any]]]
) -> list[Any]:
    """The first commit held in flight, the others submitted meanwhile; then all released.
    Each one's outcome, in order."""
    store.release.clear()
    store.held.clear()
    first = asyncio.create_task(commits[0]())
    await asyncio.wait_for(store.held.wait(), timeout=10)
    rest = [asyncio.create_task(commit()) for commit in commits[1:]]
    await asyncio.sleep(0.05)
    store.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def _behind_one(
    records: Any, store: _WatchedStore, writer: EncryptedRecords, pending: list[PendingWrite]
) -> list[Any]:
    """Single writes' commits, the first held in flight."""
    return await _behind_the_first(
        store,
        [functools.partial(writer.commit_write, p, records.receipt_for(p.ref)) for p in pending],
    )


async def test_concurrent_single_commits_go_in_one_transaction(records: Any) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    store, writer = await _watched(records)
    pending = [
        await records.prepare("Observation", f"o-{n}", patient, records=writer) for n in range(6)
    ]
    outcomes = await _behind_one(records, store, writer, pending)
    assert [o.ref.resource_id for o in outcomes] == [f"o-{n}" for n in range(6)]
    assert store.transactions == [("alone", 1), ("group", 5)]
    for n in range(6):
        read = await records.records.read("Observation", f"o-{n}")
        assert read.receipt == records.receipt_for(read.ref)
    # A lone commit goes at once, not as a group.
    store.transactions.clear()
    await records.write("Observation", "o-lone", patient, records=writer)
    assert store.transactions == [("alone", 1)]


async def test_one_writes_conflict_in_a_group_is_its_own(records: Any) -> None:
    kept, erased = (f"p-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for patient in (kept, erased):
        await records.write("Patient", patient, patient)
    store, writer = await _watched(records)
    pending = [
        await records.prepare("Observation", "first", kept, records=writer),
        await records.prepare("Observation", "a", kept, records=writer),
        await records.prepare("Observation", "gone", erased, records=writer),
        await records.prepare("Observation", "b", kept, records=writer),
    ]
    await records.records.erase_patient(erased)  # meanwhile: the group's transaction fails
    first, a, gone, b = await _behind_one(records, store, writer, pending)
    assert [v.ref.resource_id for v in (first, a, b)] == ["first", "a", "b"]
    assert isinstance(gone, MedledgerError)
    assert gone.reason == "ERASED"
    # The group failed whole, then each of its writes was decided alone.
    assert store.transactions == [("alone", 1), ("group", 3)] + [("alone", 1)] * 3
    assert (await records.records.read("Observation", "b")).ref.version == 1


async def test_an_outage_fails_the_whole_group_at_once(records: Any) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    store, writer = await _watched(records, groups_fail=True)
    pending = [
        await records.prepare("Observation", f"u-{n}", patient, records=writer) for n in range(4)
    ]
    first, *grouped = await _behind_one(records, store, writer, pending)
    assert first.ref.resource_id == "u-0"
    assert all(isinstance(o, Unavailable) for o in grouped)
    assert store.transactions == [("alone", 1), ("group", 3)]  # not retried one by one
    with pytest.raises(MedledgerError) as hidden:
        await records.records.read("Observation", "u-1")
    assert hidden.value.reason == "RESOURCE_NOT_FOUND"


def _observations(patient: str, prefix: str, count: int) -> list[ResourceWrite]:
    return [
        ResourceWrite(
            resource_type="Observation",
            resource_id=f"{prefix}-{n}",
            patient_id=patient,
            resource_json="{}",
            search_values={},
        )
        for n in range(count)
    ]


async def _bulk_behind_one(
    records: Any, store: _WatchedStore, writer: EncryptedRecords, requests: list[list[Any]]
) -> list[Any]:
    """Bulk writes' commits, the first request's held in flight."""
    return await _behind_the_first(
        store,
        [
            functools.partial(
                writer.commit_writes, pending, [records.receipt_for(p.ref) for p in pending]
            )
            for pending in requests
        ],
    )


async def test_concurrent_bulk_writes_commit_together_each_whole(records: Any) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    store, writer = await _watched(records)
    requests = [
        await writer.prepare_writes(_observations(patient, name, count))
        for name, count in (("a", 2), ("b", 3), ("c", 1))
    ]
    outcomes = await _bulk_behind_one(records, store, writer, requests)
    assert [[v.ref.resource_id for v in o] for o in outcomes] == [
        ["a-0", "a-1"],
        ["b-0", "b-1", "b-2"],
        ["c-0"],
    ]
    assert store.transactions == [("bulk", 2), ("bulk", 4)]
    assert (await records.records.read("Observation", "b-2")).ref.version == 1


async def test_one_bulk_writes_conflict_leaves_the_others_committed(records: Any) -> None:
    kept, erased = (f"p-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for patient in (kept, erased):
        await records.write("Patient", patient, patient)
    store, writer = await _watched(records)
    requests = [
        await writer.prepare_writes(_observations(patient, name, 2))
        for patient, name in ((kept, "k"), (erased, "e"), (kept, "l"))
    ]
    await records.records.erase_patient(erased)
    first, gone, last = await _bulk_behind_one(records, store, writer, requests)
    assert [v.ref.resource_id for v in (*first, *last)] == ["k-0", "k-1", "l-0", "l-1"]
    assert isinstance(gone, MedledgerError)
    assert gone.reason == "ERASED"
    # Together, then each request alone; the erased one then version by version.
    assert store.transactions == [
        ("bulk", 2),
        ("bulk", 4),
        ("bulk", 2),
        ("bulk", 2),
        ("alone", 1),
        ("alone", 1),
    ]
