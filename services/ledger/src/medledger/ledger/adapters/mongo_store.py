"""MongoDB storage of the log: entries, tiles, checkpoints, idempotency keys, the writer lease.

Layout (one database, ``ledger_*`` collections):

- ``ledger_entries``  ``{_id: leaf index, data: leaf bytes, leaf_hash}``
- ``ledger_tiles``    ``{_id: "L/N", level: L, index: N, width: W, hashes: W*32 bytes}``
  C2SP tlog-tiles shape: tile N at tile level L holds up to 256 hashes of tree level 8L.
  Partial tiles are rewritten in place as they fill.
- ``ledger_checkpoints`` ``{_id: tree size, root, note (log-signed), cosigned (with witnesses)}``
- ``ledger_idempotency`` ``{_id: key, index}``, the key scoped by its caller
  (``entries.caller_idempotency_key``)
- ``ledger_state``    ``{_id: "tree", size, root}`` and ``{_id: "lease", owner, token, ...}``

A batch is committed in ONE transaction that also checks the writer's fencing token and
the tree size it started from, so a stale writer cannot write and no index is used twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from medledger.common.mongo import mongo_errors
from medledger.ledger.domain.ports import (
    Batch,
    Fenced,
    Lease,
    SizeConflict,
    StoredCheckpoint,
    TileId,
)

Document = dict[str, Any]
LEASE_ID = "sequencer"
TREE_ID = "tree"


def tile_key(tile: TileId) -> str:
    return f"{tile[0]}/{tile[1]}"


def _checkpoint(doc: Document) -> StoredCheckpoint:
    cosigned = doc.get("cosigned")
    return StoredCheckpoint(
        size=int(doc["_id"]),
        root=bytes(doc["root"]),
        note=bytes(doc["note"]),
        border=tuple(bytes(h) for h in doc.get("border", ())),
        cosigned=bytes(cosigned) if cosigned else None,
    )


class LedgerStore:
    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        self._client = client
        db = client[database]
        self._entries = db["ledger_entries"]
        self._tiles = db["ledger_tiles"]
        self._checkpoints = db["ledger_checkpoints"]
        self._idempotency = db["ledger_idempotency"]
        self._state = db["ledger_state"]

    @mongo_errors
    async def ensure_indexes(self) -> None:
        await self._entries.create_index([("leaf_hash", ASCENDING)])

    # -- reads -------------------------------------------------------------------------

    @mongo_errors
    async def tree_size(self) -> int:
        doc = await self._state.find_one({"_id": TREE_ID})
        return int(doc["size"]) if doc else 0

    @mongo_errors
    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        doc = await self._checkpoints.find_one(sort=[("_id", -1)])
        return _checkpoint(doc) if doc else None

    @mongo_errors
    async def checkpoint(self, size: int) -> StoredCheckpoint | None:
        doc = await self._checkpoints.find_one({"_id": size})
        return _checkpoint(doc) if doc else None

    @mongo_errors
    async def checkpoints(self, after: int, limit: int) -> list[StoredCheckpoint]:
        cursor = self._checkpoints.find({"_id": {"$gt": after}}).sort("_id", 1).limit(limit)
        return [_checkpoint(doc) async for doc in cursor]

    @mongo_errors
    async def read_tiles(self, tiles: Iterable[TileId]) -> dict[TileId, bytes]:
        """Every requested tile that exists, in ONE query."""
        keys = sorted({tile_key(t) for t in tiles})
        if not keys:
            return {}
        cursor = self._tiles.find({"_id": {"$in": keys}})
        return {(int(d["level"]), int(d["index"])): bytes(d["hashes"]) async for d in cursor}

    @mongo_errors
    async def entry(self, index: int) -> bytes | None:
        doc = await self._entries.find_one({"_id": index}, {"data": 1})
        return bytes(doc["data"]) if doc else None

    @mongo_errors
    async def entries(self, start: int, limit: int) -> list[tuple[int, bytes]]:
        cursor = self._entries.find({"_id": {"$gte": start}}, {"data": 1}).sort("_id", 1)
        return [(int(d["_id"]), bytes(d["data"])) async for d in cursor.limit(limit)]

    @mongo_errors
    async def index_of_leaf(self, leaf_hash: bytes) -> int | None:
        cursor = self._entries.find({"leaf_hash": Binary(leaf_hash)}, {"_id": 1})
        docs = await cursor.sort("_id", 1).limit(1).to_list()
        return int(docs[0]["_id"]) if docs else None

    @mongo_errors
    async def idempotent_indices(self, keys: Iterable[str]) -> dict[str, int]:
        wanted = sorted({k for k in keys if k})
        if not wanted:
            return {}
        cursor = self._idempotency.find({"_id": {"$in": wanted}})
        return {str(d["_id"]): int(d["index"]) async for d in cursor}

    # -- the durable step --------------------------------------------------------------

    @mongo_errors
    async def commit(self, batch: Batch, *, token: int) -> None:
        """Writes ``batch`` atomically, or nothing. Raises Fenced or SizeConflict; whatever
        signing its checkpoint raised."""

        async def write(session: AsyncClientSession) -> None:
            # The fence and the tree's growth in one command: both must take.
            state = await self._state.bulk_write(
                [
                    UpdateOne(
                        {"_id": LEASE_ID, "token": token},
                        {"$set": {"last_commit_size": batch.new_size}},
                    ),
                    UpdateOne(
                        {"_id": TREE_ID, "size": batch.first_index},
                        {"$set": {"size": batch.new_size, "root": Binary(batch.root)}},
                        upsert=batch.first_index == 0,
                    ),
                ],
                session=session,
            )
            if state.matched_count + state.upserted_count != 2:
                lease = await self._state.find_one({"_id": LEASE_ID}, session=session)
                if lease is None or lease.get("token") != token:
                    raise Fenced
                raise SizeConflict
            if batch.entries:
                await self._entries.insert_many(
                    [
                        {
                            "_id": batch.first_index + offset,
                            "data": Binary(entry.data),
                            "leaf_hash": Binary(entry.leaf_hash),
                        }
                        for offset, entry in enumerate(batch.entries)
                    ],
                    session=session,
                )
            if batch.tiles:
                await self._tiles.bulk_write(
                    [
                        ReplaceOne(
                            {"_id": tile_key((level, index))},
                            {
                                "level": level,
                                "index": index,
                                "width": len(hashes) // 32,
                                "hashes": Binary(hashes),
                            },
                            upsert=True,
                        )
                        for (level, index), hashes in batch.tiles.items()
                    ],
                    session=session,
                )
            # Signed meanwhile (a retried transaction finds it signed already).
            checkpoint = await batch.signed
            if (checkpoint.size, checkpoint.root) != (batch.new_size, batch.root):
                raise ValueError("the signed checkpoint is not of the batch's tree")
            await self._checkpoints.insert_one(
                {
                    "_id": checkpoint.size,
                    "root": Binary(checkpoint.root),
                    "note": Binary(checkpoint.note),
                    "border": [Binary(h) for h in checkpoint.border],
                    "created": datetime.now(UTC),
                },
                session=session,
            )
            keyed = [
                {"_id": e.idempotency_key, "index": batch.first_index + offset}
                for offset, e in enumerate(batch.entries)
                if e.idempotency_key
            ]
            if keyed:
                await self._idempotency.insert_many(keyed, session=session)

        try:
            async with self._client.start_session() as session:
                await session.with_transaction(write)
        except DuplicateKeyError as exc:
            # An index, checkpoint or key that already exists: someone else wrote first.
            raise SizeConflict from exc

    @mongo_errors
    async def store_cosigned(self, size: int, note: bytes) -> None:
        await self._checkpoints.update_one({"_id": size}, {"$set": {"cosigned": Binary(note)}})

    # -- the writer lease --------------------------------------------------------------

    @mongo_errors
    async def acquire_lease(self, owner: str, address: str, ttl: timedelta) -> Lease | None:
        """Takes or renews the writer lease. A takeover increments the fencing token."""
        now = datetime.now(UTC)
        expires = now + ttl
        renewed = await self._state.find_one_and_update(
            {"_id": LEASE_ID, "owner": owner},
            {"$set": {"expires": expires, "address": address}},
            return_document=ReturnDocument.AFTER,
        )
        if renewed is None:
            try:
                renewed = await self._state.find_one_and_update(
                    {"_id": LEASE_ID, "expires": {"$lt": now}},
                    {
                        "$set": {"owner": owner, "expires": expires, "address": address},
                        "$inc": {"token": 1},
                    },
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                return None  # someone else holds an unexpired lease
        if renewed is None or renewed.get("owner") != owner:
            return None
        return Lease(owner, int(renewed["token"]), renewed["expires"], str(renewed["address"]))

    @mongo_errors
    async def current_lease(self) -> Lease | None:
        doc = await self._state.find_one({"_id": LEASE_ID})
        if doc is None:
            return None
        return Lease(str(doc["owner"]), int(doc["token"]), doc["expires"], str(doc["address"]))

    @mongo_errors
    async def release_lease(self, owner: str) -> None:
        await self._state.update_one(
            {"_id": LEASE_ID, "owner": owner},
            {"$set": {"expires": datetime(1970, 1, 1, tzinfo=UTC)}},
        )
