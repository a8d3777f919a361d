"""`medledger trace`: the local trace UI's page of a trace, or why not."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medledger.cli.main import app
from medledger.devstack.probes import Health, http_health
from medledger.devstack.trace_ui import TRACE_UI_HTTP_PORT

runner = CliRunner()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_bad_trace_id_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_HOME", str(tmp_path))
    result = runner.invoke(app, ["trace", "not-a-trace"])
    assert result.exit_code == 2
    assert "32 hexadecimal digits" in result.output


def test_it_prints_the_trace_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_HOME", str(tmp_path))
    base = f"http://127.0.0.1:{TRACE_UI_HTTP_PORT}"
    result = runner.invoke(app, ["trace", TRACE_ID.upper()])
    assert f"{base}/redirects/traces/{TRACE_ID}\n" in result.stdout
    # Without a running trace UI it says so and fails (a local stack may be running one).
    serving = http_health(f"{base}/healthz") is Health.SERVING
    assert result.exit_code == (0 if serving else 1)
    if not serving:
        assert "make up" in result.stderr
