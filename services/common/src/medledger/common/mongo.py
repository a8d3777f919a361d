"""The one way to open MongoDB (PyMongo's asyncio API) and to probe it."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from medledger.common.config import MongoSettings


def create_mongo_client(
    settings: MongoSettings, *, app_name: str, timeout_seconds: float = 5.0
) -> AsyncMongoClient[dict[str, Any]]:
    """A client that fails fast when the server is gone, so callers answer UNAVAILABLE
    within seconds instead of hanging on server selection."""
    timeout_ms = int(timeout_seconds * 1000)
    return AsyncMongoClient(
        settings.mongodb_uri,
        appname=app_name,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        retryWrites=True,
    )


class MongoProbe:
    """Health dependency: MongoDB answers ``ping``."""

    name = "mongodb"

    def __init__(self, client: AsyncMongoClient[dict[str, Any]]) -> None:
        self._client = client

    async def check(self) -> None:
        await self._client.admin.command("ping")
