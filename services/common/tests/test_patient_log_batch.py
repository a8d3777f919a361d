"""PatientLog.append_many: a batch of entries about several patients reads their key rows in
one step, unwraps their data keys side by side, and blinds each entry under its own
patient's keys (a new patient's row is still made)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Sequence

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.patient_log import PatientAppend, PatientLog, SealedLeaf, StoredKeys


class Subjects:
    async def subject(self, patient_id: str) -> bytes:
        return hashlib.sha256(patient_id.encode()).digest()


class Store:
    """The key rows and leaves in memory; counts the key reads."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredKeys] = {}
        self.erased: set[str] = set()
        self.single_reads = 0
        self.batch_reads = 0
        self.leaves: dict[str, list[SealedLeaf]] = {}

    async def keys(self, patient_key: str) -> StoredKeys | None:
        self.single_reads += 1
        return self.rows.get(patient_key)

    async def keys_of(self, patient_keys: Sequence[str]) -> dict[str, StoredKeys]:
        self.batch_reads += 1
        return {k: self.rows[k] for k in patient_keys if k in self.rows}

    async def add_wrapped_key(self, patient_key: str, wrapped: str) -> str:
        if patient_key in self.erased:
            return wrapped  # the row was never made again: keys() answers None
        return self.rows.setdefault(patient_key, StoredKeys(wrapped)).wrapped_key

    async def add_leaves(self, rows: Sequence[tuple[str, SealedLeaf]]) -> None:
        for patient_key, leaf in rows:
            self.leaves.setdefault(patient_key, []).append(leaf)

    async def replace_leaves(self, rows: Sequence[tuple[str, SealedLeaf]]) -> None:
        for patient_key, leaf in rows:
            kept = self.leaves[patient_key]
            kept[[row.leaf_id for row in kept].index(leaf.leaf_id)] = leaf


class Transit:
    """Wraps by base64 (a stand-in for Vault transit); unwraps side by side are seen."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0

    async def encrypt(self, key: str, plaintext: bytes, *, context: bytes | None = None) -> str:
        return base64.b64encode(plaintext).decode()

    async def decrypt(self, key: str, ciphertext: str, *, context: bytes | None = None) -> bytes:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return base64.b64decode(ciphertext)


class Ledger:
    def __init__(self) -> None:
        self.appended: list[ledger_pb2.LedgerEntry] = []

    def entry(self, event: LedgerEvent) -> ledger_pb2.LedgerEntry:
        return LedgerClient.entry(self, event)  # type: ignore[arg-type]

    async def append_entries(
        self, entries: Sequence[tuple[ledger_pb2.LedgerEntry, str]], *, timeout: float
    ) -> list[ledger_pb2.Receipt]:
        start = len(self.appended)
        self.appended += [e for e, _ in entries]
        return [ledger_pb2.Receipt(leaf_index=start + n) for n in range(len(entries))]


def _log() -> tuple[PatientLog, Store, Transit, Ledger]:
    store, transit, ledger = Store(), Transit(), Ledger()
    log = PatientLog(ledger, Subjects(), store, transit, "kek")  # type: ignore[arg-type]
    return log, store, transit, ledger


def _item(patient_id: str) -> PatientAppend:
    return PatientAppend(patient_id, LedgerEvent(kind=1, actor="app", organization="org"))


async def test_a_batch_reads_its_patients_key_rows_in_one_step() -> None:
    log, store, transit, ledger = _log()
    patients = ["p1", "p2", "p3"]
    await log.append_many([_item(p) for p in patients])  # their rows are made
    store.single_reads = store.batch_reads = 0
    log._keys = type(log._keys)()  # a cold key cache: every key is unwrapped
    receipts = await log.append_many([_item(p) for p in [*patients, "p1", "p2"]])
    assert [r.leaf_index for r in receipts] == [3, 4, 5, 6, 7]
    assert (store.batch_reads, store.single_reads) == (1, 0)
    assert transit.most_in_flight == len(patients)
    # Each entry's index row is kept under its own patient's key.
    per_patient = {k: len(rows) for k, rows in store.leaves.items()}
    keys = [log._patient_key(await Subjects().subject(p)) for p in patients]
    assert [per_patient[k] for k in keys] == [3, 3, 2]
    assert len(ledger.appended) == 8


async def test_a_new_patient_in_a_batch_gets_a_row_of_their_own() -> None:
    log, store, _, ledger = _log()
    await log.append_many([_item("known")])
    store.single_reads = store.batch_reads = 0
    await log.append_many([_item("known"), _item("new"), _item("new")])
    assert len(store.rows) == 2
    # The batch read found the known patient's row and none for the new one, which was made
    # without being looked for again.
    assert (store.batch_reads, store.single_reads) == (1, 0)
    assert len(ledger.appended) == 4
