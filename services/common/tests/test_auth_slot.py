"""The authentication slot: with a verifier plugged in, every RPC but health and
reflection needs a bearer token, and the handler sees the verified principal."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.config import ServiceSettings
from medledger.common.errors import Unauthenticated
from medledger.common.interceptors import Principal, current_principal
from medledger.common.server import ServiceServer
from medledger.common.service import ServiceRuntime
from medledger.testkit.inprocess import channel, ledger_servicer

GOOD = "good-token"


class StaticVerifier:
    """Accepts one token. Real JWT verification comes with the identity service."""

    async def verify(self, token: str, method: str) -> Principal:
        if token != GOOD:
            raise Unauthenticated("token rejected", reason="TOKEN_INVALID")
        return Principal(subject="client-1", organization="org-a")


class WhoAmI(LedgerServiceServicer):
    async def GetVerifierKey(self, request: Any, context: Any) -> ledger_pb2.GetVerifierKeyResponse:
        principal = current_principal.get()
        assert principal is not None
        return ledger_pb2.GetVerifierKeyResponse(vkey=principal.subject)


async def test_tokens_are_required_except_for_health() -> None:
    runtime = ServiceRuntime(
        name="ledger",
        settings=ServiceSettings(grpc_port=0),
        servicers=[ledger_servicer(WhoAmI())],
    )
    server = ServiceServer(runtime, verifier=StaticVerifier())
    await server.start()
    try:
        async with channel(server.port) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            request = ledger_pb2.GetVerifierKeyRequest()
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetVerifierKey(request)
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await stub.GetVerifierKey(request, metadata=[("authorization", "Bearer nope")])
            ok = await stub.GetVerifierKey(request, metadata=[("authorization", f"Bearer {GOOD}")])
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(grace=0)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ok.vkey == "client-1"
    assert health.status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
