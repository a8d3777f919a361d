"""Bulk load of stored resources, through the record's own storage layer.

Each resource goes the way a create's does below the RPC layer: validated
(``validate_resource``), given an id and ``meta``, canonicalised (RFC 8785), its search
values computed, then ``EncryptedRecords.prepare_write`` and ``commit_write`` with the real
Vault (one data key per patient, made by transit and stored wrapped; the record's digest
key) and the record's Mongo layout (``RecordStore``: patient rows written by it). Each
patient first gets their scan secret in the record's patient log (their key row, as a
Patient's create makes it) and is registered with identity with it, as a Patient's create
does: the benchmark's reads then find each patient as a real store has them, instead of
making their key row on the first read.

What the loader skips, so that 100,000 resources load in minutes on two cores:

- the RPC layer: no CheckAccess, no idempotency, no ledger append. Every loaded version's
  receipt is a copy of one real receipt (from a create through the API at the start of the
  run: same shape and size), not a receipt of its own entry, and the record's per-patient
  leaf index holds no rows for these creates;
- ``RecordStore``'s per-write round trips: :class:`BulkRecordStore` keeps pending versions
  in memory and writes the documents a commit leaves (``record_versions``,
  ``record_current``, ``record_index``) with ``insert_many``, and each patient's write
  counter at the end. What it writes is read back through ``RecordStore`` before the
  benchmark (a layout that drifted fails there as DATA_LOSS, not later).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bson.binary import Binary
from pymongo import AsyncMongoClient, UpdateOne

from bench.record import corpus
from medledger.common.errors import MedledgerError
from medledger.common.key_cache import DataKeyCache
from medledger.common.patient_log import PatientLog
from medledger.record.adapters.mongo_store import COMMITTED, RecordStore, _slot_id, index_document
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.domain.fhir_validation import validate_resource
from medledger.record.domain.peers import PatientDirectory
from medledger.record.domain.ports import (
    CurrentPointer,
    PatientKey,
    PendingInsert,
    ResourceWrite,
    SealedVersion,
    VersionCommit,
    VersionTaken,
)
from medledger.record.domain.records import EncryptedRecords
from medledger.record.domain.search_params import search_values
from medledger.verify.commitment import canonical_json

Document = dict[str, Any]
Item = tuple[str, str, str, str]  # type, id, patient id, JSON
BATCH: Final = 1000  # resources prepared (in a worker thread) and written per round
CHECKED: Final = 200  # loaded resources read back through RecordStore


@dataclass(frozen=True)
class Stored:
    resource_type: str
    resource_id: str
    patient_id: str


@dataclass(frozen=True)
class Loaded:
    patients: list[str]
    resources: list[Stored]  # clinical ones
    seconds: float
    documents: Counter[str]


class BulkRecordStore(RecordStore):
    """``RecordStore`` for a fresh database that only creates: versions are staged in
    memory and their committed documents buffered for :meth:`flush`. Patient rows, and
    every read, are the real store's."""

    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        super().__init__(client, database)
        self._db = client[database]
        self._rows: dict[bytes, PatientKey] = {}
        self._pending: dict[str, SealedVersion] = {}
        self._staged: set[bytes] = set()
        self._buffer: dict[str, list[Document]] = {"versions": [], "current": [], "index": []}
        self.writes: Counter[bytes] = Counter()
        self.documents: Counter[str] = Counter()

    async def patient_key(self, patient: bytes) -> PatientKey | None:
        return self._rows.get(patient)  # a fresh database: only the rows written here

    async def insert_patient_key(
        self,
        patient: bytes,
        wrapped: str,
        created: datetime,
        holder: str = "",
        holder_tag: bytes = b"",
    ) -> PatientKey:
        row = await super().insert_patient_key(patient, wrapped, created, holder, holder_tag)
        self._rows[patient] = row
        return row

    async def current(self, resource: bytes) -> CurrentPointer | None:
        if resource in self._staged:
            return CurrentPointer(resource, erased=False)  # taken (ids are fresh uuids)
        return None

    async def insert_pendings(self, pendings: Sequence[PendingInsert]) -> None:
        for pending in pendings:
            slot_id = _slot_id(pending.version.slot)
            if slot_id in self._pending:
                raise VersionTaken
            self._pending[slot_id] = pending.version

    async def commit(self, commit: VersionCommit) -> None:
        """The documents ``RecordStore.commit`` leaves for a version 1 without an
        idempotency key (pending fields unset, receipt sealed, pointer, index entries)."""
        slot = commit.slot
        version = self._pending.pop(_slot_id(slot))
        resource, patient = Binary(slot.resource), Binary(commit.patient)
        self._buffer["versions"].append(
            {
                "_id": _slot_id(slot),
                "resource": resource,
                "version": slot.version,
                "patient": patient,
                "state": COMMITTED,
                "nonce": Binary(version.content.nonce),
                "content": Binary(version.content.ciphertext),
                "receipt_nonce": Binary(commit.receipt.nonce),
                "receipt": Binary(commit.receipt.ciphertext),
            }
        )
        self._buffer["current"].append(
            {
                "_id": resource,
                "patient": patient,
                "version": slot.version,
                "tag": Binary(commit.tag),
            }
        )
        self._buffer["index"].append(
            index_document(slot.resource, commit.patient, commit.index_tokens)
        )
        self._staged.add(slot.resource)
        self.writes[commit.patient] += 1

    def take_buffer(self) -> dict[str, list[Document]]:
        taken, self._buffer = self._buffer, {name: [] for name in self._buffer}
        return taken

    async def flush(self, buffer: dict[str, list[Document]]) -> None:
        for name, documents in buffer.items():
            collection = self._db[f"record_{name}"]
            for chunk in range(0, len(documents), 5000):
                await collection.insert_many(documents[chunk : chunk + 5000], ordered=False)
            self.documents[f"record_{name}"] += len(documents)

    async def count_writes(self) -> None:
        """Each patient row's ``writes``, as the commits would have bumped it."""
        updates = [
            UpdateOne({"_id": Binary(patient)}, {"$inc": {"writes": count}})
            for patient, count in self.writes.items()
        ]
        for chunk in range(0, len(updates), 1000):
            await self._db["record_patients"].bulk_write(updates[chunk : chunk + 1000])


def _write(
    resource_type: str, resource_id: str, patient_id: str, text: str, holder: str
) -> ResourceWrite:
    """What the RPC layer hands storage for a create (CPU-bound: a worker thread)."""
    valid = validate_resource(text)
    when = datetime.now(UTC)
    document: dict[str, Any] = dict(valid.resource)
    document["id"] = resource_id
    document["meta"] = {
        **document.get("meta", {}),
        "versionId": "1",
        "lastUpdated": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return ResourceWrite(
        resource_type=resource_type,
        resource_id=resource_id,
        patient_id=patient_id,
        resource_json=canonical_json(document).decode(),
        search_values=search_values(valid),
        holder_organization=holder,
        updated_time=when,
    )


def _batch(items: Iterable[Item], holder: str) -> list[ResourceWrite]:
    return [_write(*item, holder) for item in items]


async def _store(records: EncryptedRecords, writes: list[ResourceWrite], receipt: bytes) -> None:
    for write in writes:
        pending = await records.prepare_write(write)
        await records.commit_write(pending, receipt)


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    while chunk := [item for _, item in zip(range(size), items, strict=False)]:
        yield chunk


async def load(
    client: AsyncMongoClient[Document],
    database: str,
    keys: VaultPatientKeys,
    directory: PatientDirectory,
    patient_log: PatientLog,
    *,
    count: int,
    holder: str,
    receipt: bytes,
    progress: bool = True,
) -> Loaded:
    """Stores ``count`` resources (one Patient per :data:`corpus.PER_PATIENT`) for
    organisation ``holder``, each version carrying ``receipt``."""
    started = time.perf_counter()
    rng = random.Random(12)
    store = BulkRecordStore(client, database)
    await store.ensure_indexes()
    records = EncryptedRecords(store, keys, cache=DataKeyCache(max_keys=1_000_000))
    patients = [str(uuid.uuid4()) for _ in range(max(1, count // corpus.PER_PATIENT))]
    limit = asyncio.Semaphore(16)

    async def register(patient_id: str) -> None:
        async with limit:
            secret = await patient_log.new_scan_secret(patient_id)
            await directory.register_holder(patient_id, holder, secret)

    await asyncio.gather(*(register(p) for p in patients))
    patient_items = (
        ("Patient", p, p, json.dumps(corpus.patient(rng))) for p in patients
    )  # a Patient's id is its patient id
    loaded: list[Stored] = []

    def clinical_items() -> Iterator[Item]:
        for resource in corpus.resources(rng, patients, count - len(patients)):
            resource_id = str(uuid.uuid4())
            loaded.append(Stored(resource.resource_type, resource_id, resource.patient_id))
            yield resource.resource_type, resource_id, resource.patient_id, resource.text

    flushing: asyncio.Task[None] | None = None
    done = 0
    for items in (patient_items, clinical_items()):
        for chunk in _chunks(items, BATCH):
            writes = await asyncio.to_thread(_batch, chunk, holder)
            await _store(records, writes, receipt)
            if flushing is not None:
                await flushing
            flushing = asyncio.create_task(store.flush(store.take_buffer()))
            done += len(chunk)
            if progress and done % (20 * BATCH) == 0:
                rate = done / (time.perf_counter() - started)
                print(f"    loaded {done:,} / {count:,} ({rate:.0f}/s)", flush=True)
    if flushing is not None:
        await flushing
    await store.count_writes()
    await _check(client, database, keys, loaded)
    return Loaded(patients, loaded, time.perf_counter() - started, store.documents)


async def _check(
    client: AsyncMongoClient[Document],
    database: str,
    keys: VaultPatientKeys,
    loaded: list[Stored],
) -> None:
    """Reads a sample back through the real store: the documents open and verify."""
    records = EncryptedRecords(RecordStore(client, database), keys, cache=DataKeyCache())
    for stored in random.Random(3).sample(loaded, min(CHECKED, len(loaded))):
        try:
            version = await records.read(stored.resource_type, stored.resource_id)
        except MedledgerError as error:
            raise RuntimeError(
                f"a loaded resource does not open through RecordStore ({error.reason}): "
                "its document layout changed, and BulkRecordStore.commit must follow it"
            ) from error
        assert version.patient_id == stored.patient_id
        assert json.loads(version.resource_json)["id"] == stored.resource_id
