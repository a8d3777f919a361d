"""Bulk writes in storage (HL7 v2 messages, CSV chunks): every version prepared in a few
steps and committed in ONE transaction; a taken slot prepares nothing; a conflict at commit
falls back to committing one by one, so each version is decided as a single write is."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from medledger.common.errors import MedledgerError, Unavailable
from medledger.common.key_cache import DataKeyCache
from medledger.record.adapters.mongo_store import RecordStore
from medledger.record.domain.ports import ResourceWrite
from medledger.record.domain.records import EncryptedRecords


def write(resource_id: str, patient_id: str, expected_version: int = 0, **search: str) -> Any:
    return ResourceWrite(
        resource_type="Observation",
        resource_id=resource_id,
        patient_id=patient_id,
        resource_json=json.dumps({"resourceType": "Observation", "id": resource_id}),
        search_values={name: {value} for name, value in search.items()},
        expected_version=expected_version,
    )


async def test_a_chunk_is_prepared_and_committed_together(records: Any) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    writes = [write(f"obs-{n}", patient, code=f"http://loinc.org|{n}") for n in range(40)]
    pending = await records.records.prepare_writes(writes)
    assert [p.ref.version for p in pending] == [1] * 40
    # Prepared, not visible.
    with pytest.raises(MedledgerError):
        await records.records.read("Observation", "obs-0")
    stored = await records.records.commit_writes(
        pending, [records.receipt_for(p.ref) for p in pending]
    )
    assert [s.ref.resource_id for s in stored] == [f"obs-{n}" for n in range(40)]
    for n in (0, 17, 39):
        read = await records.records.read("Observation", f"obs-{n}")
        assert read.receipt == records.receipt_for(read.ref)
    found = await records.records.search(
        "Observation", [("code", ("http://loinc.org|17",))], page_size=5, page_token=""
    )
    assert [v.ref.resource_id for v in found.items] == ["obs-17"]
    # The next versions, in bulk too, moving each pointer from version 1.
    updates = [write(f"obs-{n}", patient, expected_version=1) for n in range(3)]
    pending = await records.records.prepare_writes(updates)
    stored = await records.records.commit_writes(
        pending, [records.receipt_for(p.ref) for p in pending]
    )
    assert [s.ref.version for s in stored] == [2, 2, 2]
    assert (await records.records.read("Observation", "obs-2")).ref.version == 2


async def test_a_taken_slot_prepares_nothing(records: Any) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    held = await records.prepare("Observation", "obs-held", patient)  # another writer's
    with pytest.raises(MedledgerError) as taken:
        await records.records.prepare_writes(
            [write("obs-a", patient), write("obs-held", patient), write("obs-b", patient)]
        )
    assert taken.value.reason == "CONCURRENT_WRITE"
    raw = await records.db["record_versions"].count_documents({"state": "pending"})
    assert raw == 1  # only the other writer's
    await records.records.commit_write(held, records.receipt_for(held.ref))


async def test_a_conflict_at_commit_decides_each_version_alone(records: Any) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    pending = await records.records.prepare_writes([write(f"o-{n}", patient) for n in range(3)])
    await records.records.erase_patient(patient)  # meanwhile: the transaction must fail
    with pytest.raises(MedledgerError) as refused:
        await records.records.commit_writes(pending, [records.receipt_for(p.ref) for p in pending])
    assert refused.value.reason == "ERASED"
    assert await records.db["record_versions"].count_documents({"state": "committed"}) == 0


class _BulkTransactionsGiveUp(RecordStore):
    """The real store, whose bulk transaction gives up (as one whose time runs out on a
    loaded server does); every single commit works."""

    async def commit_many(self, commits: Any, *, grouped: bool = False) -> None:
        raise Unavailable("mongodb")


async def test_a_bulk_transaction_that_gives_up_commits_one_by_one(records: Any) -> None:
    """The entries are ledgered before the commit: the versions must become visible."""
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    store = _BulkTransactionsGiveUp(records.store._client, records.db.name)
    flaky = EncryptedRecords(store, records.keys, cache=DataKeyCache())
    pending = await flaky.prepare_writes([write(f"x-{n}", patient) for n in range(5)])
    stored = await flaky.commit_writes(pending, [records.receipt_for(p.ref) for p in pending])
    assert [s.ref.resource_id for s in stored] == [f"x-{n}" for n in range(5)]
    assert (await records.records.read("Observation", "x-4")).ref.version == 1


async def test_one_version_failing_alone_leaves_the_others_committed(records: Any) -> None:
    """The fallback commits every version it can (each is ledgered), then answers with the
    first failure."""
    patient = f"p-{uuid.uuid4().hex[:8]}"
    await records.write("Patient", patient, patient)
    pending = await records.records.prepare_writes([write(f"v-{n}", patient) for n in range(3)])
    # Meanwhile another writer takes v-1's slot (this writer's pending version counts as a
    # crashed one's for a replica with no patience): v-1's commit fails, alone.
    hasty = records.replica(pending_timeout=timedelta(0))
    await records.write("Observation", "v-1", patient, records=hasty)
    with pytest.raises(MedledgerError) as expired:
        await records.records.commit_writes(pending, [records.receipt_for(p.ref) for p in pending])
    assert expired.value.reason == "WRITE_EXPIRED"
    for n in (0, 2):
        read = await records.records.read("Observation", f"v-{n}")
        assert read.receipt == records.receipt_for(read.ref)
