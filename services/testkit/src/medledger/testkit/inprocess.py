"""Real gRPC servers built by the real bootstrap, inside the test process, on free ports.

They check tokens as every service does, with a verifier of the test issuer
(:data:`medledger.testkit.tokens.TEST_TOKENS`); :func:`channel` calls as a client of that
issuer holding every scope, for tests about something else than authorisation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from medledger.api.inference.v1 import inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2_grpc
from medledger.common.config import ServiceSettings
from medledger.common.health import DependencyProbe
from medledger.common.interceptors import TokenVerifier
from medledger.common.server import ServiceServer
from medledger.common.service import Servicer, ServiceRuntime
from medledger.inference.server import INFERENCE_ACCESS
from medledger.ledger.server import LEDGER_ACCESS
from medledger.testkit.tokens import TEST_TOKENS


def ledger_servicer(implementation: object) -> Servicer:
    return Servicer(
        implementation, ledger_pb2_grpc.add_LedgerServiceServicer_to_server, LEDGER_ACCESS
    )


def inference_servicer(implementation: object) -> Servicer:
    return Servicer(
        implementation, inference_pb2_grpc.add_InferenceServiceServicer_to_server, INFERENCE_ACCESS
    )


@asynccontextmanager
async def running(
    *servicers: Servicer,
    probes: list[DependencyProbe] | None = None,
    name: str = "test",
    verifier: TokenVerifier | None = None,
    **settings: Any,
) -> AsyncIterator[ServiceServer]:
    """A real server on a free loopback port, stopped at the end; it accepts the test
    issuer's tokens unless given another ``verifier``."""
    config = ServiceSettings(grpc_port=0, health_interval_seconds=0.2, **settings)
    runtime = ServiceRuntime(
        name=name,
        settings=config,
        servicers=list(servicers),
        extra_probes=probes or [],
        verifier=verifier or TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> float:
    """Polls ``check`` until it is true; returns the seconds it took or fails the test."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    pytest.fail(f"condition not met within {within} s")


def channel(port: int) -> grpc.aio.Channel:
    """A channel to ``127.0.0.1:port`` whose calls carry a test token holding every scope."""
    return TEST_TOKENS.channel(f"127.0.0.1:{port}")
