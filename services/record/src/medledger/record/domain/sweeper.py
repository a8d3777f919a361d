"""Removes, in the background, the pending versions crashed writers left behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from medledger.common.errors import MedledgerError

log = logging.getLogger(__name__)


class PendingVersions(Protocol):
    async def sweep_pending(self) -> int: ...


class PendingSweeper:
    def __init__(self, storage: PendingVersions, interval_seconds: float) -> None:
        self._storage = storage
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-sweep-pending")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                removed = await self._storage.sweep_pending()
            except MedledgerError as error:  # Mongo down: the next round tries again
                log.warning("pending sweep failed", extra={"reason": error.reason})
                continue
            if removed:
                log.info("pending versions removed", extra={"removed": removed})
