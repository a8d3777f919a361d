"""mTLS: the client certificate says which facility sends, MSH-4 must be one of its own, and
a certificate from another CA does not get a connection."""

from __future__ import annotations

import datetime
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medledger.mllp.runtime import MllpRuntime
from medledger.testkit.platform import Platform

from .conftest import (
    SENDER,
    Hl7Client,
    MllpClient,
    RecordService,
    adt_a01,
    errs,
    facilities_file,
    listening,
    msa,
)

ENGINE_NAME = "hl7.hospital-a.example"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A throwaway CA that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.file = folder / f"{name}-ca.pem"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, dns: list[str], *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = (
            x509.ExtendedKeyUsageOID.SERVER_AUTH
            if server
            else (x509.ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = self.folder / uuid.uuid4().hex[:8]
        issued = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def client_tls(ca: Authority, issued: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.file))
    context.load_cert_chain(str(issued.cert), str(issued.key))
    return context


@dataclass
class TlsListener:
    runtime: MllpRuntime
    ca: Authority
    engine: Issued


@pytest.fixture(scope="module")
async def tls_listener(
    auth_platform: Platform,
    record_service: RecordService,
    hl7_client: Hl7Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TlsListener]:
    folder = tmp_path_factory.mktemp("tls")
    ca = Authority(folder, "senders")
    server = ca.issue("localhost", ["localhost"], server=True)
    engine = ca.issue("interface-engine", [ENGINE_NAME], server=False)
    facilities = facilities_file(folder, hl7_client, names=[ENGINE_NAME])
    async with listening(
        facilities,
        record_service.address,
        auth_platform.identity_address,
        mllp_tls_cert_file=server.cert,
        mllp_tls_key_file=server.key,
        mllp_tls_client_ca_file=ca.file,
    ) as runtime:
        yield TlsListener(runtime, ca, engine)


async def test_the_certificate_names_the_facility(tls_listener: TlsListener) -> None:
    client = await MllpClient.connect(
        tls_listener.runtime.port, client_tls(tls_listener.ca, tls_listener.engine)
    )
    sent = uuid.uuid4().hex[:16]
    assert msa(await client.request(adt_a01(sent, sender=SENDER))) == ("AA", sent)
    # The same engine naming another facility in MSH-4 is refused: a certificate speaks
    # for its own facility only.
    spoofed = uuid.uuid4().hex[:16]
    ack = await client.request(adt_a01(spoofed, sender="HOSP_B"))
    assert msa(ack) == ("AR", spoofed)
    assert str(errs(ack)[0](2)) == "MSH^1^4"
    await client.close()


async def test_a_certificate_it_does_not_name_is_refused(
    tls_listener: TlsListener, tmp_path: Path
) -> None:
    other = tls_listener.ca.issue("other-engine", ["hl7.elsewhere.example"], server=False)
    client = await MllpClient.connect(tls_listener.runtime.port, client_tls(tls_listener.ca, other))
    sent = uuid.uuid4().hex[:16]
    assert msa(await client.request(adt_a01(sent))) == ("AR", sent)
    await client.close()


async def test_a_certificate_of_another_ca_gets_no_connection(
    tls_listener: TlsListener, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path, "strangers")
    issued = stranger.issue("interface-engine", [ENGINE_NAME], server=False)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client = await MllpClient.connect(
            tls_listener.runtime.port, client_tls(tls_listener.ca, issued)
        )
        # TLS 1.3 reports a refused client certificate at the first read.
        await client.request(adt_a01(uuid.uuid4().hex[:16]))
