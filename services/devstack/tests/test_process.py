"""ManagedProcess: detached start, pid files that survive the starter, stop by own pid only."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medledger.devstack.process import (
    ComponentStartError,
    ManagedProcess,
    PidRecord,
    PortReservations,
    free_port,
    free_ports,
    is_port_free,
    pid_alive,
)

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]


def _process(tmp_path: Path) -> ManagedProcess:
    return ManagedProcess(
        "sleeper",
        log_file=tmp_path / "logs" / "sleeper.log",
        pid_file=tmp_path / "run" / "sleeper.pid",
        die_with_parent=True,
    )


def test_start_writes_pid_file_and_log_and_stop_removes_it(tmp_path: Path) -> None:
    process = _process(tmp_path)
    pid = process.start(SLEEPER)
    try:
        record = PidRecord.read(tmp_path / "run" / "sleeper.pid")
        assert record is not None
        assert record.pid == pid
        assert record.is_running()
        process.wait_ready(
            lambda: "up" in (tmp_path / "logs" / "sleeper.log").read_text(), timeout=10
        )
    finally:
        assert process.stop(timeout=5)
    assert not pid_alive(pid)
    assert not (tmp_path / "run" / "sleeper.pid").exists()
    assert not process.stop()  # stopping twice is harmless


def test_another_instance_adopts_by_pid_file(tmp_path: Path) -> None:
    first = _process(tmp_path)
    pid = first.start(SLEEPER)
    try:
        second = _process(tmp_path)
        assert second.adopt()
        assert second.pid == pid
        assert second.stop(timeout=5)
        assert not first.is_running()
    finally:
        first.stop(timeout=5)


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    # A live process whose start time differs from the record: a stranger with a reused pid.
    stranger = subprocess.Popen(SLEEPER, stdout=subprocess.DEVNULL)
    try:
        record = PidRecord(stranger.pid, start_time=1, argv=("secantusd-py",))
        record.write(tmp_path / "run" / "sleeper.pid")
        process = _process(tmp_path)
        assert not record.is_running()
        assert not process.adopt()
        assert not process.stop()
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_exit_during_start_up_is_reported(tmp_path: Path) -> None:
    process = _process(tmp_path)
    process.start([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(ComponentStartError, match="sleeper: exited during start-up with code 3"):
        process.wait_ready(lambda: False, timeout=10)


def test_ready_timeout_names_component_and_log(tmp_path: Path) -> None:
    process = _process(tmp_path)
    process.start(SLEEPER)
    try:
        with pytest.raises(ComponentStartError) as caught:
            process.wait_ready(lambda: False, timeout=0.3, what="never ready")
        assert str(caught.value).startswith("sleeper: never ready within 0s")
        assert str(tmp_path / "logs" / "sleeper.log") in str(caught.value)
    finally:
        process.stop(timeout=5)


def test_port_checks() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        assert not is_port_free(busy)
    assert is_port_free(free_port())
    ports = free_ports(3)
    assert len(set(ports)) == 3
    pair = free_port(with_next=True)
    assert is_port_free(pair + 1)


def test_a_reserved_port_is_held_until_released() -> None:
    """`up` reserves the services' fixed ports (in the ephemeral range) so that no outbound
    connection takes one as its local port before its service listens."""
    port = free_port()
    reservations = PortReservations([port])
    assert not is_port_free(port)  # bound: neither a server nor the kernel may take it
    reservations.release(port)
    assert is_port_free(port)
    reservations.release(port)  # releasing twice is harmless
