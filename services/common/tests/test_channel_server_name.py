"""A channel to a pod's IP address checks the server's certificate against a given name.

Ledger replicas forward appends to the lease holder at its pod IP, which no certificate names;
they check instead that its certificate is the ledger Service's (``server_name``).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings

SERVICE_NAME = "medledger-ledger.medledger.svc"


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    dns_names: list[str],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def replica_settings(tmp_path: Path) -> ServiceSettings:
    """Certificate settings of a ledger replica: its certificate names only the Service."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, None, [])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("ledger", key, (ca.subject, ca_key), [SERVICE_NAME])
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(_pem_key(key))
    return ServiceSettings(
        grpc_port=0,
        tls_cert_file=tmp_path / "tls.crt",
        tls_key_file=tmp_path / "tls.key",
        tls_ca_file=tmp_path / "ca.crt",
    )


async def _check(target: str, settings: ServiceSettings, server_name: str) -> None:
    async with create_channel(target, settings, server_name=server_name) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_a_replica_reaches_another_at_its_ip_by_the_service_name(
    replica_settings: ServiceSettings,
) -> None:
    cert, key = replica_settings.tls_cert_file, replica_settings.tls_key_file
    assert cert is not None
    assert key is not None
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        await _check(target, replica_settings, SERVICE_NAME)
        # By its address alone the certificate does not match, nor under another name.
        for name in ("", "medledger-record.medledger.svc"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _check(target, replica_settings, name)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
