"""MongoDB counters of password login attempts (the ``LoginAttempts`` port).

``identity_login_attempts``: ``{_id: key, failures | count, not_before | window_end,
expires_at, granted}``; TTL index on ``expires_at``. A counter is created empty the first time
(``insert_one``); each decision is then one ``find_one_and_update`` with an update pipeline: it
reads the counter, decides and counts in one atomic step on the server, and tells whether this
call was the one let through by the random ``granted`` marker it leaves. So parallel attempts,
on any replica, are counted one by one against the limit.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from medledger.common.errors import Unavailable
from medledger.common.mongo import RunOnce, mongo_errors

Document = dict[str, Any]
# 2**40 times the first delay is past any maximum delay; a bounded exponent stays finite.
_MAX_DOUBLINGS = 40


def _milliseconds(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


class LoginAttemptStore:
    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        self._attempts = client[database]["identity_login_attempts"]
        self.ensure_indexes = RunOnce(self._create_indexes)

    async def _create_indexes(self) -> None:
        await self._attempts.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)

    async def _decide(self, key: str, pipeline: list[Document]) -> Document:
        await self.ensure_indexes()
        for _ in range(3):
            found = await self._attempts.find_one_and_update(
                {"_id": key}, pipeline, return_document=ReturnDocument.AFTER
            )
            if found is not None:
                return dict(found)
            # The first attempt under this key creates its counter; no upsert, which some
            # servers answer with nothing when several first attempts race.
            with contextlib.suppress(DuplicateKeyError):
                await self._attempts.insert_one({"_id": key})
        raise Unavailable("mongodb")  # created and cleared over and over: a retry will do

    @mongo_errors
    async def count_failure(
        self,
        key: str,
        *,
        now: datetime,
        free: int,
        first_delay: timedelta,
        max_delay: timedelta,
        forget_after: timedelta,
    ) -> datetime | None:
        marker = uuid.uuid4().hex
        # A counter past its expiry (the TTL monitor runs only once a minute) counts as none.
        live = {"$gt": [{"$ifNull": ["$expires_at", now]}, now]}
        failures = {"$cond": [live, {"$ifNull": ["$failures", 0]}, 0]}
        allowed = {
            "$or": [{"$lt": [failures, free]}, {"$lte": [{"$ifNull": ["$not_before", now]}, now]}]
        }
        counted = {"$add": [failures, 1]}
        delay = {
            "$cond": [
                {"$lt": [counted, free]},
                0,
                {
                    "$min": [
                        _milliseconds(max_delay),
                        {
                            "$multiply": [
                                _milliseconds(first_delay),
                                {
                                    "$pow": [
                                        2,
                                        {"$min": [{"$subtract": [counted, free]}, _MAX_DOUBLINGS]},
                                    ]
                                },
                            ]
                        },
                    ]
                },
            ]
        }
        pipeline: list[Document] = [
            {
                "$set": {
                    "granted": {"$cond": [allowed, marker, ""]},
                    "failures": {"$cond": [allowed, counted, failures]},
                    "not_before": {"$cond": [allowed, {"$add": [now, delay]}, "$not_before"]},
                    "expires_at": {
                        "$cond": [
                            allowed,
                            now + forget_after,
                            {"$ifNull": ["$expires_at", now + forget_after]},
                        ]
                    },
                }
            }
        ]
        found = await self._decide(key, pipeline)
        if found["granted"] == marker:
            return None
        not_before: datetime = found["not_before"]
        return not_before

    @mongo_errors
    async def take(
        self, key: str, *, now: datetime, limit: int, window: timedelta
    ) -> datetime | None:
        marker = uuid.uuid4().hex
        fresh = {"$lte": [{"$ifNull": ["$window_end", now]}, now]}
        allowed = {"$or": [fresh, {"$lt": ["$count", limit]}]}
        window_end = {"$cond": [fresh, now + window, "$window_end"]}
        pipeline: list[Document] = [
            {
                "$set": {
                    "granted": {"$cond": [allowed, marker, ""]},
                    "count": {
                        "$cond": [
                            fresh,
                            1,
                            {"$cond": [allowed, {"$add": ["$count", 1]}, "$count"]},
                        ]
                    },
                    "window_end": window_end,
                    "expires_at": window_end,
                }
            }
        ]
        found = await self._decide(key, pipeline)
        if found["granted"] == marker:
            return None
        ends: datetime = found["window_end"]
        return ends

    @mongo_errors
    async def clear(self, key: str) -> None:
        await self._attempts.delete_one({"_id": key})
