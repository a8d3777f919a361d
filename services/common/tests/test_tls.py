"""TLS and mutual TLS between services, from the certificate settings alone."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.server import ServiceServer
from medledger.common.service import ServiceRuntime
from medledger.testkit.inprocess import ledger_servicer
from medledger.testkit.pki import make_pki
from medledger.testkit.tokens import TEST_TOKENS


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path)


async def test_mutual_tls(pki: dict[str, Path]) -> None:
    server_settings = ServiceSettings(
        grpc_port=0,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_ca_file=pki["ca"],
    )
    runtime = ServiceRuntime(
        name="ledger",
        settings=server_settings,
        servicers=[ledger_servicer(LedgerServiceServicer())],
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    target = f"localhost:{server.port}"
    request = health_pb2.HealthCheckRequest()
    try:
        client_settings = ServiceSettings(
            tls_cert_file=pki["client_cert"],
            tls_key_file=pki["client_key"],
            tls_ca_file=pki["ca"],
        )
        async with create_channel(target, client_settings) as ch:
            answer = await health_pb2_grpc.HealthStub(ch).Check(request, timeout=5)
        # Without a client certificate the handshake is refused.
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        async with grpc.aio.secure_channel(target, anonymous) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(ch).Check(request, timeout=5)
        # Plaintext is refused too.
        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await health_pb2_grpc.HealthStub(ch).Check(request, timeout=5)
    finally:
        await server.stop(grace=0)
    assert answer.status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
