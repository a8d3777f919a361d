"""The batcher's weight limit: groups are never split, a batch holds whole groups up to the
limit, and a group heavier than the limit goes alone; a caller submitting as the batch ahead
ends is never left waiting; shutdown answers whoever waits."""

from __future__ import annotations

import asyncio

import pytest

from medledger.common.batching import Batcher
from medledger.common.errors import FailedPrecondition, Unavailable


class Groups:
    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def flush(self, groups: list[list[int]]) -> list[int]:
        self.batches.append(groups)
        await asyncio.sleep(0)
        await self.release.wait()
        if any(-1 in group for group in groups):
            raise FailedPrecondition("a refused group", reason="REFUSED")
        return [sum(group) for group in groups]

    async def single(self, group: list[int]) -> int:
        (answer,) = await self.flush([group])
        return answer


def batcher(groups: Groups) -> Batcher[list[int], int]:
    return Batcher(
        groups.flush,
        groups.single,
        alone=lambda error: isinstance(error, FailedPrecondition),
        dependency="test",
        max_batch=10,
        size=len,
    )


async def test_whole_groups_go_together_up_to_the_weight_limit() -> None:
    groups = Groups()
    batched = batcher(groups)
    groups.release.clear()
    first = asyncio.create_task(batched.submit([1]))
    await asyncio.sleep(0.01)  # in flight: the others wait for it
    sizes = [4, 5, 3, 12, 2]
    waiting = [asyncio.create_task(batched.submit([1] * n)) for n in sizes]
    await asyncio.sleep(0.01)
    groups.release.set()
    assert await first == 1
    assert await asyncio.gather(*waiting) == sizes
    assert [[len(g) for g in batch] for batch in groups.batches] == [[1], [4, 5], [3], [12], [2]]


async def test_a_refused_group_is_its_own_and_the_others_are_answered() -> None:
    groups = Groups()
    batched = batcher(groups)
    groups.release.clear()
    first = asyncio.create_task(batched.submit([1]))
    await asyncio.sleep(0.01)
    good, bad = (asyncio.create_task(batched.submit(g)) for g in ([2, 3], [-1, 4]))
    await asyncio.sleep(0.01)
    groups.release.set()
    await first
    assert await good == 5
    refused = await asyncio.gather(bad, return_exceptions=True)
    assert isinstance(refused[0], FailedPrecondition)
    assert groups.batches[1:] == [[[2, 3], [-1, 4]], [[2, 3]], [[-1, 4]]]


@pytest.mark.parametrize("callers", [1, 5])
async def test_an_item_coming_as_a_batch_ends_is_never_stranded(callers: int) -> None:
    groups = Groups()
    batched = batcher(groups)

    # Callers one after another and side by side, each submitting as soon as the last
    # answer came: every one is answered.
    async def caller(n: int) -> list[int]:
        return [await batched.submit([n]) for _ in range(50)]

    answers = await asyncio.wait_for(asyncio.gather(*(caller(n) for n in range(callers))), 10)
    assert answers == [[n] * 50 for n in range(callers)]


async def test_shutdown_answers_every_waiting_caller() -> None:
    groups = Groups()
    batched = batcher(groups)
    groups.release.clear()
    calls = [asyncio.create_task(batched.submit([0]))]
    await asyncio.sleep(0.01)  # in flight; the next ones wait for it
    calls += [asyncio.create_task(batched.submit([n])) for n in range(1, 5)]
    await asyncio.sleep(0.01)
    assert batched._drain is not None
    batched._drain.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert [type(o) for o in outcomes] == [Unavailable] * 5
    assert groups.batches == [[[0]]]
