"""Faults, caused for real: Vault and Mongo servers of the test's own, stopped mid-write.
A dependency that does not answer is UNAVAILABLE (retryable), and nothing is half-visible."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.errors import Aborted, NotFound, Unavailable
from medledger.common.mongo import create_mongo_client
from medledger.common.vault import VaultTransit
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port
from medledger.devstack.vault import DevVault
from medledger.record.adapters.mongo_store import RecordStore
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.domain.ports import ResourceWrite
from medledger.record.domain.records import EncryptedRecords


def new_id() -> str:
    return uuid.uuid4().hex


def write(rid: str, patient: str, value: int, expected: int = 0, key: str = "") -> ResourceWrite:
    return ResourceWrite(
        resource_type="Observation",
        resource_id=rid,
        patient_id=patient,
        resource_json=f'{{"valueInteger":{value}}}',
        search_values={"code": {"c"}},
        expected_version=expected,
        idempotency_key=key,
    )


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[DevVault]:
    """A Vault of the test's own: it is stopped, and dev mode forgets everything."""
    vault = DevVault(
        port=free_port(with_next=True), log_file=tmp_path / "vault.log", die_with_parent=True
    )
    vault.start()
    vault.provision()
    yield vault
    vault.stop()


@pytest.fixture
async def own_mongo(tmp_path: Path) -> AsyncIterator[MongoServer]:
    server = MongoServer(
        port=free_port(),
        storage_path=tmp_path / "mongo",
        log_file=tmp_path / "mongo.log",
        sync_on_commit=False,
        die_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


async def test_vault_stopped_mid_write_is_unavailable_and_nothing_shows(
    records: Any, own_vault: DevVault
) -> None:
    vault = VaultTransit(VaultSettings(addr=own_vault.addr, token=own_vault.token_for("record")))
    keys = VaultPatientKeys(vault)
    storage = EncryptedRecords(records.store, keys)
    known, newcomer = new_id(), new_id()
    kept = new_id()
    pending = await storage.prepare_write(write(kept, known, 1))
    await storage.commit_write(pending, b"receipt")

    own_vault.stop()

    # A new patient needs a data key from Vault: refused before anything is stored.
    with pytest.raises(Unavailable) as refused:
        await storage.prepare_write(write(new_id(), newcomer, 2))
    assert refused.value.metadata == {"dependency": "vault"}
    assert await records.db["record_patients"].count_documents({}) == 1
    assert await records.db["record_versions"].count_documents({}) == 1
    assert await records.db["record_current"].count_documents({}) == 1
    # A replica whose cache does not hold the key cannot read or write either.
    cold = EncryptedRecords(records.store, keys)
    with pytest.raises(Unavailable):
        await cold.read("Observation", kept)
    with pytest.raises(Unavailable):
        await cold.prepare_write(write(kept, known, 3, expected=1))
    assert await records.db["record_versions"].count_documents({}) == 1
    # Nor can a process that never loaded the index key do anything.
    with pytest.raises(Unavailable):
        await EncryptedRecords(records.store, VaultPatientKeys(vault)).read("Observation", kept)
    # The replica that still holds the key (until its TTL) keeps serving.
    assert (await storage.read("Observation", kept)).resource_json == '{"valueInteger":1}'
    vault.close()


async def test_mongo_stopped_mid_write_is_unavailable_and_nothing_shows(
    own_mongo: MongoServer, record_keys: Any
) -> None:
    client = create_mongo_client(
        MongoSettings(**{"MONGODB_URI": own_mongo.uri}), app_name="record-tests", timeout_seconds=1
    )
    store = RecordStore(client, "record", transaction_seconds=2)
    storage = EncryptedRecords(store, record_keys)
    rid, patient = new_id(), new_id()
    first = await storage.prepare_write(write(rid, patient, 1))
    await storage.commit_write(first, b"receipt 1")
    update = await storage.prepare_write(write(rid, patient, 2, expected=1, key="retry-me"))

    own_mongo.stop()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            await storage.commit_write(update, b"receipt 2")  # the ledger answered; Mongo not
        assert refused.value.metadata == {"dependency": "mongodb"}
        assert time.monotonic() - started < 5
        with pytest.raises(Unavailable):
            await storage.abort_write(update)
        with pytest.raises(Unavailable):
            await storage.read("Observation", rid)
    finally:
        own_mongo.start()

    # Back: the update is not visible ...
    latest = await storage.read("Observation", rid)
    assert (latest.ref.version, latest.resource_json) == (1, '{"valueInteger":1}')
    with pytest.raises(NotFound):
        await storage.read("Observation", rid, 2)
    history = await storage.history("Observation", rid, page_size=5, page_token="")
    assert [v.ref.version for v in history.items] == [1]
    # ... and the client's retry with the same idempotency key finishes the failed attempt
    # (the same version: the ledger holds its entry), which keeps its slot until then.
    with pytest.raises(Aborted) as held:
        await storage.prepare_write(write(rid, patient, 2, expected=1, key="retry-me"))
    assert held.value.reason == "CONCURRENT_WRITE"
    retry = await storage.resume_write("retry-me", b"")
    assert retry is not None
    assert retry.write_id == update.write_id
    stored = await storage.commit_write(retry, b"receipt 2")
    assert stored.ref.version == 2
    assert (await storage.read("Observation", rid)).receipt == b"receipt 2"
    await client.close()
