"""The cache of unwrapped data keys: bounded, short-lived, keyed by what the patient's row
holds, emptied of a patient by erasure; and how often the storage really asks Vault."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from medledger.common.key_cache import DataKeyCache
from medledger.record.domain.ports import NewDataKey
from medledger.record.domain.records import EncryptedRecords


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_keys_leave_first() -> None:
    cache = DataKeyCache(max_keys=2, ttl_seconds=60)
    cache.put(b"a", "wa", b"ka")
    cache.put(b"b", "wb", b"kb")
    assert cache.get(b"a", "wa") == b"ka"  # a is now the most recently used
    cache.put(b"c", "wc", b"kc")
    assert len(cache) == 2
    assert cache.get(b"b", "wb") is None
    assert cache.get(b"a", "wa") == b"ka"
    assert cache.get(b"c", "wc") == b"kc"


def test_keys_expire_however_often_they_are_used() -> None:
    clock = Clock()
    cache = DataKeyCache(max_keys=10, ttl_seconds=30, clock=clock)
    cache.put(b"a", "wa", b"ka")
    cache.put(b"b", "wb", b"kb")
    clock.now += 29
    assert cache.get(b"a", "wa") == b"ka"
    clock.now += 1
    assert cache.get(b"a", "wa") is None
    assert len(cache) == 1
    cache.put(b"c", "wc", b"kc")  # an insertion drops what has expired
    assert len(cache) == 1


def test_a_key_is_found_only_with_the_wrapped_key_it_came_from() -> None:
    cache = DataKeyCache()
    cache.put(b"a", "vault:v1:old", b"ka")
    assert cache.get(b"a", "vault:v1:other") is None
    assert len(cache) == 0
    cache.put(b"a", "vault:v1:old", b"ka")
    cache.evict(b"a")
    assert cache.get(b"a", "vault:v1:old") is None


def test_a_cache_needs_room_and_a_lifetime() -> None:
    with pytest.raises(ValueError, match="key cache"):
        DataKeyCache(max_keys=0)
    with pytest.raises(ValueError, match="key cache"):
        DataKeyCache(ttl_seconds=0)


class CountingKeys:
    """The real Vault adapter, counting the unwraps it is asked for."""

    def __init__(self, keys: Any) -> None:
        self._keys = keys
        self.unwraps = 0

    async def new_data_key(self) -> NewDataKey:
        key: NewDataKey = await self._keys.new_data_key()
        return key

    async def unwrap(self, wrapped: str) -> bytes:
        self.unwraps += 1
        key: bytes = await self._keys.unwrap(wrapped)
        return key

    async def index_key(self) -> bytes:
        key: bytes = await self._keys.index_key()
        return key


async def test_reads_ask_vault_once_per_patient_and_ttl(records: Any) -> None:
    clock = Clock()
    keys = CountingKeys(records.keys)
    cache = DataKeyCache(max_keys=1, ttl_seconds=60, clock=clock)
    storage = EncryptedRecords(records.store, keys, cache=cache)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    await records.write("Observation", first, uuid.uuid4().hex)
    await records.write("Observation", second, uuid.uuid4().hex)
    await storage.read("Observation", first)
    await storage.read("Observation", first)
    assert keys.unwraps == 1
    clock.now += 60  # expired
    await storage.read("Observation", first)
    assert keys.unwraps == 2
    # Room for one key: two patients in turn push each other out.
    await storage.read("Observation", second)
    await storage.read("Observation", first)
    assert keys.unwraps == 4
