"""A launcher that cannot start says which component failed, on which port, and where its log is."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from medledger.devstack.devstack import DevStack
from medledger.devstack.mongo import MongoServer
from medledger.devstack.paths import StackPaths
from medledger.devstack.process import (
    ComponentStartError,
    PortBusyError,
    StackError,
    free_port,
    free_ports,
)
from medledger.devstack.triton import TritonServer
from medledger.devstack.vault import PersistentVault


def _mongo(tmp_path: Path, port: int) -> MongoServer:
    return MongoServer(
        port=port,
        storage_path=tmp_path / "mongo",
        log_file=tmp_path / "logs" / "mongo.log",
        sync_on_commit=False,
        die_with_parent=True,
    )


def test_busy_port_names_the_component(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = _mongo(tmp_path, port)
        with pytest.raises(PortBusyError) as caught:
            server.start()
    assert caught.value.component == "mongo"
    assert caught.value.port == port
    assert f"mongo: port 127.0.0.1:{port} is already in use" in str(caught.value)
    assert not server.is_running()


def test_dev_up_refuses_busy_ports_before_starting_anything(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    stack = DevStack(paths)
    # Point the dependencies at free ports so the test never touches the fixed local ones.
    grpc_port, http_port, metrics_port = free_ports(3)
    stack.vault = PersistentVault(
        port=free_port(with_next=True),
        state_dir=paths.state("vault"),
        log_file=paths.log("vault"),
        pid_file=paths.pid("vault"),
    )
    stack.triton = TritonServer(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        state_dir=paths.state("triton"),
        log_file=paths.log("triton"),
        pid_file=paths.pid("triton"),
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack.mongo = MongoServer(
            port=port,
            storage_path=paths.state("mongo"),
            log_file=paths.log("mongo"),
            pid_file=paths.pid("mongo"),
        )
        with pytest.raises(StackError, match=rf"mongo: port 127\.0\.0\.1:{port} is already in use"):
            stack.up(deps_only=True)
    assert not paths.pid("mongo").exists()
    assert not paths.pid("vault").exists()
    assert not paths.state("vault").exists()  # nothing was started or prepared


class _MisconfiguredMongo(MongoServer):
    def argv(self) -> list[str]:
        return [*super().argv(), "--log-level", "LOUD"]  # rejected: the server exits at once


def test_a_server_that_exits_names_its_log(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "mongo.log"
    server = _MisconfiguredMongo(
        port=free_port(),
        storage_path=tmp_path / "mongo",
        log_file=log_file,
        pid_file=tmp_path / "run" / "mongo.pid",
        die_with_parent=True,
    )
    with pytest.raises(ComponentStartError) as caught:
        server.start()
    assert caught.value.component == "mongo"
    assert caught.value.log_file == log_file
    message = str(caught.value)
    assert message.startswith("mongo: exited during start-up with code 2")
    assert str(log_file) in message
    assert "LOUD" in message  # the log's tail comes with it
    assert not server.is_running()
    assert not (tmp_path / "run" / "mongo.pid").exists()
