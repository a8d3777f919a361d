"""TLS and mutual TLS between services, from the certificate settings alone."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.server import ServiceServer
from medledger.common.service import ServiceRuntime
from medledger.testkit.inprocess import ledger_servicer
from medledger.testkit.tokens import TEST_TOKENS


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: object) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("medledger test CA", ca_key, None, ca=True)
    paths = {"ca": tmp_path / "ca.crt"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(who, key, (ca.subject, ca_key))
        paths[f"{who}_cert"], paths[f"{who}_key"] = _write(tmp_path, who, cert, key)
    return paths


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
