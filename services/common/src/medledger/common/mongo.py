"""The one way to open MongoDB (PyMongo's asyncio API) and to probe it."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from medledger.common.config import MongoSettings
from medledger.common.errors import Unavailable

log = logging.getLogger("medledger.mongo")


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


P = ParamSpec("P")
R = TypeVar("R")


def mongo_errors(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """For adapter methods: a driver failure becomes the retryable ``Unavailable("mongodb")``.
    A duplicate key is not a failure of the server: it passes through for the adapter to
    translate (AlreadyExists, a lost race)."""

    @functools.wraps(method)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            # The kind of failure and the server's code only: messages may quote documents.
            log.warning(
                "mongodb call failed: %s raised %s (code %s)",
                method.__qualname__,
                type(exc).__name__,
                getattr(exc, "code", None),
                extra={
                    "call": method.__qualname__,
                    "error": type(exc).__name__,
                    "code": getattr(exc, "code", None),
                    "labels": sorted(getattr(exc, "_error_labels", ()) or ()),
                },
            )
            raise Unavailable("mongodb") from exc

    return wrapped


class RunOnce:
    """Runs ``setup`` (a store creating its indexes) the first time it is awaited.

    Concurrent callers wait for that one run; a run that fails (Mongo down) is tried again by
    the next caller, so a store can be built before its database answers.
    """

    def __init__(self, setup: Callable[[], Awaitable[None]]) -> None:
        self._setup = setup
        self._done = False
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        if self._done:
            return
        async with self._lock:
            if not self._done:
                await self._setup()
                self._done = True
