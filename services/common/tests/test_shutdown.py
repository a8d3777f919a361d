"""Graceful shutdown: calls in flight finish, new calls are refused, health goes down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.testkit.inprocess import channel, ledger_servicer, running

SLOW_SECONDS = 1.0


class SlowLedger(LedgerServiceServicer):
    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def GetCheckpoint(self, request: Any, context: Any) -> ledger_pb2.GetCheckpointResponse:
        self.started.set()
        await asyncio.sleep(SLOW_SECONDS)
        return ledger_pb2.GetCheckpointResponse(checkpoint=b"finished")


async def test_stop_lets_the_call_in_flight_finish_and_refuses_new_ones() -> None:
    slow = SlowLedger()
    async with running(ledger_servicer(slow)) as server, channel(server.port) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        in_flight = asyncio.ensure_future(stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest()))
        await slow.started.wait()
        started = time.monotonic()
        stopping = asyncio.ensure_future(server.stop(grace=5))
        await asyncio.sleep(0.1)
        health = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest(), timeout=2)
        response = await in_flight
        await stopping
        elapsed = time.monotonic() - started
        with pytest.raises(grpc.aio.AioRpcError):
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert response.checkpoint == b"finished"
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # It waited for the slow call, but not for the whole grace period.
    assert SLOW_SECONDS * 0.5 < elapsed < 4.5


async def test_grace_period_bounds_the_wait() -> None:
    slow = SlowLedger()
    async with running(ledger_servicer(slow)) as server, channel(server.port) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        in_flight = asyncio.ensure_future(stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest()))
        await slow.started.wait()
        await server.stop(grace=0.1)
        with pytest.raises(grpc.aio.AioRpcError) as cancelled:
            await in_flight
    assert cancelled.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
