"""`medledger dev` commands that need no running stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medledger.cli.main import app
from medledger.devstack.process import ManagedProcess, PidRecord

runner = CliRunner()


def test_down_with_nothing_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_HOME", str(tmp_path))
    result = runner.invoke(app, ["dev", "down"])
    assert result.exit_code == 0, result.output
    assert "nothing was running" in result.output


def test_down_removes_stale_pid_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_HOME", str(tmp_path))
    pid_file = tmp_path / "run" / "mongo.pid"
    PidRecord(pid=2**22 + 17, start_time=1, argv=("secantusd-py",)).write(pid_file)
    result = runner.invoke(app, ["dev", "down"])
    assert result.exit_code == 0, result.output
    assert "mongo was not running (stale pid file removed)" in result.output
    assert not pid_file.exists()


def test_help_lists_dev_commands() -> None:
    result = runner.invoke(app, ["dev", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status"):
        assert command in result.output
    assert "--deps-only" not in runner.invoke(app, ["dev", "up", "--help"]).output


def test_down_stops_the_single_witness_of_an_earlier_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLEDGER_HOME", str(tmp_path))
    old = ManagedProcess(
        "witness",
        log_file=tmp_path / "logs" / "witness.log",
        pid_file=tmp_path / "run" / "witness.pid",
    )
    old.start(["sleep", "60"])
    result = runner.invoke(app, ["dev", "down"])
    assert result.exit_code == 0, result.output
    assert "stopped witness" in result.output
    assert not old.is_running()
    assert not (tmp_path / "run" / "witness.pid").exists()
