"""The witness's state in MongoDB: collection ``witness_logs``, ``{_id: origin, size, root}``.

One small document per followed log. ``advance`` is a compare-and-set on the stored size and
root (an insert for a log's first checkpoint), so of two requests racing from the same state
exactly one wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bson.binary import Binary
from bson.int64 import Int64
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from medledger.common.mongo import mongo_errors
from medledger.witness.domain.ports import LogState

Document = dict[str, Any]
COLLECTION = "witness_logs"


def _state(doc: Document) -> LogState:
    return LogState(origin=str(doc["_id"]), size=int(doc["size"]), root_hash=bytes(doc["root"]))


class MongoLogStates:
    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        self._logs = client[database][COLLECTION]

    @mongo_errors
    async def get(self, origin: str) -> LogState | None:
        doc = await self._logs.find_one({"_id": origin})
        return _state(doc) if doc else None

    @mongo_errors
    async def get_many(self, origins: Sequence[str]) -> list[LogState]:
        cursor = self._logs.find({"_id": {"$in": list(origins)}}).sort("_id", 1)
        return [_state(doc) async for doc in cursor]

    @mongo_errors
    async def advance(self, previous: LogState | None, new: LogState) -> bool:
        fields = {"size": Int64(new.size), "root": Binary(new.root_hash)}
        if previous is None:
            try:
                await self._logs.insert_one({"_id": new.origin, **fields})
            except DuplicateKeyError:
                return False
            return True
        result = await self._logs.update_one(
            {
                "_id": previous.origin,
                "size": Int64(previous.size),
                "root": Binary(previous.root_hash),
            },
            {"$set": fields},
        )
        return result.matched_count == 1
