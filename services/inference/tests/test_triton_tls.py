"""Inference calls Triton over TLS when told to (TRITON_TLS_*): against a real tritonserver
serving gRPC with mutual TLS, only a client that trusts its CA and presents a certificate
from it gets an answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from medledger.devstack.triton import TritonServer, TritonTls
from medledger.inference.adapters.triton import TritonProbe, TritonSettings
from medledger.testkit.models import model_triton
from medledger.testkit.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("triton-pki"), ("triton", "inference"))


@pytest.fixture(scope="module")
def tls_triton(
    pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    state = tmp_path_factory.mktemp("triton-tls")
    server = model_triton(
        state / "models", state, TritonTls(pki["triton_cert"], pki["triton_key"], pki["ca"])
    )
    server.start()
    yield server
    server.stop()


def settings(server: TritonServer, **files: Path) -> TritonSettings:
    return TritonSettings(url=server.grpc_url, timeout_seconds=5, **files)


async def test_a_client_of_the_ca_with_a_certificate_is_answered(
    tls_triton: TritonServer, pki: dict[str, Path]
) -> None:
    probe = TritonProbe(
        settings(
            tls_triton,
            tls_ca_file=pki["ca"],
            tls_cert_file=pki["inference_cert"],
            tls_key_file=pki["inference_key"],
        )
    )
    await probe.check()


async def test_plaintext_and_certificate_less_clients_are_refused(
    tls_triton: TritonServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    other = make_pki(tmp_path, ("outsider",))
    for refused in (
        settings(tls_triton),  # plaintext
        settings(tls_triton, tls_ca_file=pki["ca"]),  # no client certificate
        settings(
            tls_triton,
            tls_ca_file=pki["ca"],
            tls_cert_file=other["outsider_cert"],
            tls_key_file=other["outsider_key"],
        ),  # a certificate of another CA
    ):
        with pytest.raises(Exception):  # noqa: B017,PT011 - tritonclient raises its own kinds
            await TritonProbe(refused).check()


def test_tls_files_are_checked_together(pki: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match="go together"):
        TritonSettings(url="triton:8001", tls_ca_file=pki["ca"], tls_cert_file=pki["ca"])
    with pytest.raises(ValidationError, match="needs TRITON_TLS_CA_FILE"):
        TritonSettings(
            url="triton:8001",
            tls_cert_file=pki["inference_cert"],
            tls_key_file=pki["inference_key"],
        )
