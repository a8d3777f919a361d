"""The record's storage against the real servers: secantusdb and OpenBao (the record's own
Vault token), each test in a fresh database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.key_cache import DataKeyCache
from medledger.common.mongo import create_mongo_client
from medledger.common.vault import VaultTransit
from medledger.record.adapters.mongo_store import RecordStore
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.domain.ports import PendingWrite, ResourceWrite, VersionRef
from medledger.record.domain.records import EncryptedRecords


def mongo_client(uri: str) -> AsyncMongoClient[dict[str, Any]]:
    return create_mongo_client(
        MongoSettings(**{"MONGODB_URI": uri}), app_name="record-tests", timeout_seconds=3
    )


def record_vault(vault: Any) -> VaultTransit:
    return VaultTransit(VaultSettings(addr=vault.addr, token=vault.token_for("record")))


@dataclass
class Records:
    """The storage under test and what the tests inspect it with."""

    records: EncryptedRecords
    store: RecordStore
    keys: VaultPatientKeys
    db: AsyncDatabase[dict[str, Any]]

    @staticmethod
    def receipt_for(ref: VersionRef) -> bytes:
        """Stands for the serialised ledger receipt: storage keeps it as opaque bytes."""
        return f"receipt of {ref}".encode()

    def replica(self, **options: Any) -> EncryptedRecords:
        """Another process on the same database and Vault (its own key cache)."""
        return EncryptedRecords(self.store, self.keys, **options)

    async def write(
        self,
        resource_type: str,
        resource_id: str,
        patient_id: str,
        resource: str = "{}",
        *,
        search: Mapping[str, Collection[str]] | None = None,
        expected_version: int = 0,
        idempotency_key: str = "",
        fingerprint: bytes = b"",
        records: EncryptedRecords | None = None,
    ) -> VersionRef:
        """prepare, then commit with a receipt: what the RPC layer will do."""
        pending = await self.prepare(
            resource_type,
            resource_id,
            patient_id,
            resource,
            search=search,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            records=records,
        )
        stored = await (records or self.records).commit_write(
            pending, self.receipt_for(pending.ref)
        )
        return stored.ref

    async def prepare(
        self,
        resource_type: str,
        resource_id: str,
        patient_id: str,
        resource: str = "{}",
        *,
        search: Mapping[str, Collection[str]] | None = None,
        expected_version: int = 0,
        idempotency_key: str = "",
        fingerprint: bytes = b"",
        records: EncryptedRecords | None = None,
    ) -> PendingWrite:
        return await (records or self.records).prepare_write(
            ResourceWrite(
                resource_type=resource_type,
                resource_id=resource_id,
                patient_id=patient_id,
                resource_json=resource,
                search_values=search or {},
                expected_version=expected_version,
                idempotency_key=idempotency_key,
                request_fingerprint=fingerprint,
            )
        )


@pytest.fixture(scope="session")
async def record_mongo(mongo_server: Any) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client = mongo_client(mongo_server.uri)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def record_keys(vault_server: Any) -> VaultPatientKeys:
    return VaultPatientKeys(record_vault(vault_server))


@pytest.fixture
async def records(
    record_mongo: AsyncMongoClient[dict[str, Any]], record_keys: VaultPatientKeys
) -> Records:
    database = f"record{uuid.uuid4().hex[:10]}"
    store = RecordStore(record_mongo, database)
    await store.ensure_indexes()
    return Records(
        EncryptedRecords(store, record_keys, cache=DataKeyCache()),
        store,
        record_keys,
        record_mongo[database],
    )
