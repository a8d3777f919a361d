"""The Triton fixture: the bundled tritonserver from its own virtualenv, ready on loopback."""

from __future__ import annotations

import json
import urllib.request

import pytest

from medledger.devstack.probes import Health
from medledger.devstack.triton import TritonServer

pytestmark = pytest.mark.triton


def test_triton_is_ready(triton_server: TritonServer) -> None:
    assert triton_server.health() is Health.SERVING
    host, _, port = triton_server.grpc_url.partition(":")
    assert host == "127.0.0.1"
    assert int(port) == triton_server.grpc_port
    with urllib.request.urlopen(f"{triton_server.http_url}/v2", timeout=5) as reply:
        metadata = json.load(reply)
    assert metadata["name"] == "triton"
    assert metadata["version"].startswith("2.")


def test_python_backend_stub_matches_the_venv(triton_server: TritonServer) -> None:
    runtime = triton_server.runtime
    stub = triton_server.backends_dir / "python" / "triton_python_backend_stub"
    assert stub.read_bytes() == runtime.python_backend_stub.read_bytes()
    assert runtime.is_current()
