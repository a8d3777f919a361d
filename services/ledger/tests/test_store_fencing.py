"""The writer lease and its fencing token, on the storage adapter against real MongoDB: a
writer whose lease was taken over cannot write, and a batch cannot reuse an index."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from medledger.ledger.adapters.mongo_store import LedgerStore
from medledger.ledger.domain.ports import (
    Batch,
    Fenced,
    PendingEntry,
    SizeConflict,
    StoredCheckpoint,
)
from medledger.tlog.compact import CompactRange
from medledger.tlog.hashing import leaf_hash

TTL = timedelta(seconds=30)


def batch(first: int, count: int) -> Batch:
    tree = CompactRange()
    entries = []
    for n in range(first + count):
        digest = leaf_hash(b"entry %d" % n)
        tree.append(digest)
        if n >= first:
            entries.append(PendingEntry(b"entry %d" % n, digest, ""))
    checkpoint = StoredCheckpoint(tree.size, tree.root(), b"note", tree.hashes)
    signed: asyncio.Future[StoredCheckpoint] = asyncio.get_running_loop().create_future()
    signed.set_result(checkpoint)
    return Batch(first, entries, {}, tree.root(), signed)


async def test_a_writer_whose_lease_was_taken_over_cannot_write(mongo_server: Any) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    store = LedgerStore(client, f"fence{uuid.uuid4().hex[:8]}")
    try:
        first = await store.acquire_lease("writer-a", "a:1", TTL)
        assert first is not None
        await store.commit(batch(0, 2), token=first.token)
        # Writer B cannot take an unexpired lease ...
        assert await store.acquire_lease("writer-b", "b:1", TTL) is None
        # ... but takes it once it expired (writer A paused), with a new fencing token.
        await store.acquire_lease("writer-a", "a:1", timedelta(seconds=-1))
        second = await store.acquire_lease("writer-b", "b:1", TTL)
        assert second is not None
        assert second.token > first.token
        # Writer A wakes up and tries to write with its old token: refused, nothing written.
        with pytest.raises(Fenced):
            await store.commit(batch(2, 1), token=first.token)
        assert await store.tree_size() == 2
        assert await store.entry(2) is None
        await store.commit(batch(2, 1), token=second.token)
        assert await store.tree_size() == 3
        # A batch that starts at an index already used is refused whole.
        with pytest.raises(SizeConflict):
            await store.commit(batch(1, 3), token=second.token)
        assert await store.tree_size() == 3
    finally:
        await client.close()
