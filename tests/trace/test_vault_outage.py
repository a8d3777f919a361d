"""Vault failures are counted: with this package's Vault stopped, every service that uses
Vault reports ``medledger_vault_request_errors_total`` (outcome ``unavailable``), the series
the chart's Vault alert reads.

Last by name on purpose: after it, this package's stack has no Vault.
"""

from __future__ import annotations

import asyncio

import pytest

from medledger.common.metric_catalog import VAULT_REQUEST_ERRORS

from .conftest import TracedStack
from .test_metrics_emitted import processes, scrape

pytestmark = pytest.mark.triton


def _unavailable(samples: list[object]) -> bool:
    return any(
        getattr(s, "labels", {}).get("outcome") == "unavailable" and getattr(s, "value", 0) > 0
        for s in samples
    )


async def test_every_service_counts_the_vault_calls_that_failed(
    traced_stack: TracedStack,
) -> None:
    names = [p for owner in VAULT_REQUEST_ERRORS.services for p in processes(traced_stack, owner)]
    assert len(names) == len(traced_stack.services)
    before = {name: await scrape(traced_stack.services[name]) for name in names}
    assert not any(
        _unavailable(list(s.get(VAULT_REQUEST_ERRORS.prometheus_name, []))) for s in before.values()
    )
    await asyncio.to_thread(traced_stack.vault.stop)
    # Each service's health probe calls Vault every half second.
    waiting = set(names)
    for _ in range(150):
        for name in sorted(waiting):
            scraped = await scrape(traced_stack.services[name])
            samples = list(scraped.get(VAULT_REQUEST_ERRORS.prometheus_name, []))
            if _unavailable(samples):
                assert all(s.labels["service_name"] == name for s in samples)
                assert {s.labels["operation"] for s in samples} >= {"health_check"}
                waiting.discard(name)
        if not waiting:
            break
        await asyncio.sleep(0.1)
    assert sorted(waiting) == []
