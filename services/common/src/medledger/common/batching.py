"""Group commit for concurrent calls: items submitted while a batch is in flight go together
in the next one; a lone item goes at once (no waiting for company). An item may itself be a
group (a bulk write's entries) that must not be split: give its ``size``, and a batch takes
whole items up to ``max_batch`` of weight.

A batch that fails with an error ``alone`` accepts (one item's trouble: a conflict, a refusal
that names one entry) is done again one item at a time, so each caller gets its own answer;
any other error (an outage) is every caller's. Every caller is answered, whatever a retry
raises, and callers still waiting when the batching task is cancelled (shutdown) get
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from medledger.common.errors import Unavailable

T = TypeVar("T")
R = TypeVar("R")

# Items done in one step at most.
MAX_BATCH: Final = 256


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        single: Callable[[T], Awaitable[R]],
        *,
        alone: Callable[[Exception], bool],
        dependency: str,
        max_batch: int = MAX_BATCH,
        size: Callable[[T], int] = lambda _: 1,
    ) -> None:
        """``size``: an item's weight (a group's length, when the items are groups); a batch
        weighs at most ``max_batch``, unless it is one item alone."""
        self._flush = flush
        self._single = single
        self._alone = alone
        self._dependency = dependency
        self._max_batch = max_batch
        self._size = size
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drain is None:
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                await self._settle(self._next_batch())
        finally:
            self._drain = None
            for _, future in self._waiting:  # only if this task was cancelled (shutdown)
                _fail(future, self._shutting_down())

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        taken, weight = 0, 0
        for item, _ in self._waiting:
            weight += self._size(item)
            if taken and weight > self._max_batch:
                break
            taken += 1
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        return batch

    def _shutting_down(self) -> Unavailable:
        return Unavailable(self._dependency, reason="SHUTTING_DOWN")

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._do(batch)
        except asyncio.CancelledError:  # shutting down: nobody waits forever
            for _, future in batch:
                _fail(future, self._shutting_down())
            raise

    async def _do(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await (self._flush(items) if len(items) > 1 else self._one(items[0]))
        except Exception as error:  # noqa: BLE001 - each waiting caller gets an answer
            if len(batch) == 1 or not self._alone(error):
                for _, future in batch:
                    _fail(future, error)
                return
            for item, future in batch:
                try:
                    _succeed(future, await self._single(item))
                except Exception as single_error:  # noqa: BLE001 - that caller's answer
                    _fail(future, single_error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _succeed(future, result)

    async def _one(self, item: T) -> list[R]:
        return [await self._single(item)]


def _succeed(future: asyncio.Future[R], result: R) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[R], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
