"""Health follows the dependencies: NOT_SERVING until they answer, and whenever they stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.health import LIVENESS
from medledger.devstack.process import free_port
from medledger.testkit.inprocess import channel, eventually, ledger_servicer, running

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LEDGER = "medledger.api.ledger.v1.LedgerService"


class Switch:
    """A dependency whose availability the test decides. A real dependency going down is
    tested in tests/test_dependency_outage.py; this one checks the monitor's own logic."""

    name = "switch"

    def __init__(self) -> None:
        self.up = False
        self.slow = False

    async def check(self) -> None:
        if self.slow:
            await asyncio.sleep(60)
        if not self.up:
            raise ConnectionError("down")


async def status(ch: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(response.status)


async def test_health_follows_the_dependency() -> None:
    switch = Switch()
    async with running(ledger_servicer(LedgerServiceServicer()), probes=[switch]) as server:
        async with channel(server.port) as ch:
            await asyncio.sleep(0.5)
            assert await status(ch) == NOT_SERVING
            assert await status(ch, LEDGER) == NOT_SERVING
            # Liveness does not follow the dependencies: an outage must not restart pods.
            assert await status(ch, LIVENESS) == SERVING
            switch.up = True

            async def serving() -> bool:
                return await status(ch) == SERVING and await status(ch, LEDGER) == SERVING

            await eventually(serving, within=5)
            switch.up = False

            async def not_serving() -> bool:
                return await status(ch) == NOT_SERVING

            await eventually(not_serving, within=5)
            assert server.health.unavailable_dependencies == ["switch"]


async def test_a_hanging_dependency_counts_as_down() -> None:
    switch = Switch()
    switch.up, switch.slow = True, True
    async with (
        running(
            ledger_servicer(LedgerServiceServicer()),
            probes=[switch],
            dependency_timeout_seconds=0.3,
        ) as server,
        channel(server.port) as ch,
    ):
        await asyncio.sleep(1.0)
        assert await status(ch) == NOT_SERVING
        assert server.health.unavailable_dependencies == ["switch"]


async def test_plaintext_health_port_serves_health_only() -> None:
    switch = Switch()
    switch.up = True
    port = free_port()
    async with running(
        ledger_servicer(LedgerServiceServicer()), probes=[switch], health_port=port
    ) as server:
        async with channel(port) as health_ch, channel(server.port) as main_ch:

            async def serving() -> bool:
                return await status(health_ch) == SERVING

            await eventually(serving, within=5)
            assert await status(health_ch, LIVENESS) == SERVING
            assert await status(main_ch) == SERVING
            stub = ledger_pb2_grpc.LedgerServiceStub(health_ch)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=2)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


class CancelsItself:
    """A dependency whose driver cancels its own pending work once (as a client may when
    its server goes away) and lets that CancelledError out, then answers."""

    name = "cancels-itself"

    def __init__(self) -> None:
        self.calls = 0

    async def check(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise asyncio.CancelledError


async def test_a_probe_s_own_cancellation_does_not_stop_the_monitor() -> None:
    probe = CancelsItself()
    async with (
        running(ledger_servicer(LedgerServiceServicer()), probes=[probe]) as server,
        channel(server.port) as ch,
    ):

        async def serving() -> bool:
            return await status(ch) == SERVING

        await eventually(serving, within=5)
        assert probe.calls >= 2
