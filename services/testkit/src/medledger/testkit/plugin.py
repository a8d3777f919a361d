"""pytest fixtures that run the real servers (Mongo-compatible, OpenBao, Triton).

They use the same launchers as ``medledger dev up`` (``medledger.devstack``), on free ports
in a temporary folder. Each starts only when a test asks for it and stops at the end of the
session; the servers also die with the pytest process if it is killed.

Override ``triton_model_repository`` in a conftest.py to serve real models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import SERVICE_PORTS, StackEndpoints, service_env
from medledger.devstack.triton import TritonServer
from medledger.devstack.vault import DevVault, VaultServer


def pytest_configure(config: pytest.Config) -> None:
    """A stack a test starts (``DevStack``, the CLI's ``dev up``) never starts the local trace
    UI: Phoenix is heavy, and the trace tests use an in-process OTLP receiver instead."""
    os.environ["MEDLEDGER_TRACE_UI"] = "0"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's servers keep their data; logs are in ``stack_dir / "logs"``."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def mongo_server(stack_dir: Path) -> Iterator[MongoServer]:
    """A running secantusdb: ``.uri``, ``.port``; ``.stop()`` and ``.start()`` for restarts."""
    server = MongoServer(
        port=free_port(),
        storage_path=stack_dir / "mongo",
        log_file=stack_dir / "logs" / "mongo.log",
        # Tests stop the server cleanly; fsync on every commit would only slow them down.
        sync_on_commit=False,
        die_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vault_server(stack_dir: Path) -> Iterator[DevVault]:
    """OpenBao in dev mode, provisioned: ``.addr``, ``.token`` (root), each service's own
    token ``.token_for("ledger")`` (its policy only) and ``.operator_token`` (key rotation)."""
    server = DevVault(
        port=free_port(with_next=True),
        log_file=stack_dir / "logs" / "vault.log",
        die_with_parent=True,
    )
    server.start()
    server.provision()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton_model_repository(stack_dir: Path) -> Path:
    """The model repository ``triton_server`` serves (empty unless a conftest overrides it)."""
    path = stack_dir / "triton-models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def triton_server(stack_dir: Path, triton_model_repository: Path) -> Iterator[TritonServer]:
    """tritonserver, HTTP-ready: ``.grpc_url`` (``127.0.0.1:P``), ``.http_url``.

    The first use on a machine builds Triton's cached virtualenv (see MEDLEDGER_TRITON_VENV).
    """
    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        state_dir=stack_dir / "triton",
        model_repository=triton_model_repository,
        log_file=stack_dir / "logs" / "triton.log",
        die_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_ports() -> dict[str, int]:
    """A free port for each medledger service, for tests that run the services."""
    return dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))


def service_environment(
    name: str,
    *,
    mongo: MongoServer,
    vault: VaultServer,
    ports: Mapping[str, int],
    triton: TritonServer | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for ``python -m medledger.<name>`` against the fixtures' servers.

    ``ports`` maps every service name to its port (the ``service_ports`` fixture); the service
    authenticates to Vault with its own token, never the root token.
    """
    if not vault.service_tokens:
        raise ValueError("vault has not been provisioned (no service tokens)")
    endpoints = StackEndpoints(
        mongo_uri=mongo.uri,
        vault_addr=vault.addr,
        vault_tokens=vault.service_tokens,
        triton_url=triton.grpc_url if triton is not None else "",
        service_ports=dict(ports),
        model_repository=triton.model_repository if triton is not None else None,
    )
    return service_env(name, endpoints, base)


# Identity (and its ledger) in the test process, for tests of services that check tokens.
from medledger.testkit.platform import auth_platform  # noqa: E402, F401
