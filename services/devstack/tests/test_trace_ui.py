"""The local trace UI: on in `dev up` unless MEDLEDGER_TRACE_UI=0, offline and on loopback,
and the services pointed at it (spans only) unless the user set OTEL_* variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medledger.devstack.devstack import DevStack
from medledger.devstack.paths import StackPaths
from medledger.devstack.services import StackEndpoints, service_env
from medledger.devstack.trace_ui import (
    REQUIREMENTS_FILE,
    TRACE_UI_HTTP_PORT,
    TRACE_UI_OTLP_PORT,
    PhoenixServer,
    trace_ui_enabled,
    trace_url,
)

ENDPOINTS = StackEndpoints(
    mongo_uri="mongodb://127.0.0.1:1/",
    vault_addr="http://127.0.0.1:2",
    vault_tokens={"record": "t"},
    triton_url="127.0.0.1:3",
    otlp_endpoint="http://127.0.0.1:8021",
)


def test_it_is_on_unless_turned_off() -> None:
    assert trace_ui_enabled({})
    assert trace_ui_enabled({"MEDLEDGER_TRACE_UI": "1"})
    for off in ("0", "off", "false", "No"):
        assert not trace_ui_enabled({"MEDLEDGER_TRACE_UI": off})


def test_dev_up_includes_it_unless_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)  # the user's own would win
    monkeypatch.setenv("MEDLEDGER_TRACE_UI", "1")
    stack = DevStack(StackPaths(tmp_path))
    assert "trace-ui" in [c.component for c in stack.components()]
    assert "trace-ui" not in [c.component for c in stack.components(deps_only=True)]
    assert stack.trace_ui.address == f"http://127.0.0.1:{TRACE_UI_HTTP_PORT}"
    record = next(s for s in stack.services if s.component == "record")
    assert record.env()["OTEL_EXPORTER_OTLP_ENDPOINT"] == (f"http://127.0.0.1:{TRACE_UI_OTLP_PORT}")
    monkeypatch.setenv("MEDLEDGER_TRACE_UI", "0")
    stack = DevStack(StackPaths(tmp_path))
    assert "trace-ui" not in [c.component for c in stack.components()]
    record = next(s for s in stack.services if s.component == "record")
    assert record.env()["OTEL_TRACES_EXPORTER"] == "none"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in record.env()


def test_services_send_it_spans_but_no_metrics() -> None:
    env = service_env("record", ENDPOINTS, base={"PATH": "/bin"})
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:8021"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_METRICS_EXPORTER"] == "none"  # Phoenix has no OTLP metrics service
    assert env["OTEL_SERVICE_NAME"] == "record"


def test_the_users_own_otel_settings_win() -> None:
    mine = {"PATH": "/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    env = service_env("record", ENDPOINTS, base=mine)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4317"
    assert "OTEL_TRACES_EXPORTER" not in env


def test_phoenix_runs_offline_on_loopback(tmp_path: Path) -> None:
    server = PhoenixServer(
        http_port=18020, otlp_port=18021, state_dir=tmp_path / "ui", log_file=tmp_path / "ui.log"
    )
    env = server.env()
    assert env["PHOENIX_HOST"] == "127.0.0.1"
    assert (env["PHOENIX_PORT"], env["PHOENIX_GRPC_PORT"]) == ("18020", "18021")
    assert env["PHOENIX_WORKING_DIR"] == str((tmp_path / "ui").resolve())
    assert env["PHOENIX_TELEMETRY_ENABLED"] == "false"
    assert env["PHOENIX_ALLOW_EXTERNAL_RESOURCES"] == "false"
    assert env["PHOENIX_ALLOWED_SANDBOX_PROVIDERS"] == "NONE"
    for agent in ("BASH", "WEB_ACCESS", "GITHUB"):
        assert env[f"PHOENIX_AGENTS_DISABLE_{agent}"] == "true"
    assert env["PHOENIX_DISABLE_AGENT_ASSISTANT"] == "true"
    assert not any(k.startswith("OTEL_") for k in env)  # it does not trace itself
    assert server.argv()[1:] == ["serve"]
    assert server.otlp_endpoint == "http://127.0.0.1:18021"


def test_its_requirements_pin_everything() -> None:
    lines = [
        line.strip()
        for line in REQUIREMENTS_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert any(line.startswith("arize-phoenix==") for line in lines)
    assert all("==" in line for line in lines)


def test_a_trace_page_needs_a_trace_id() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_url("http://127.0.0.1:8020", trace_id) == (
        f"http://127.0.0.1:8020/redirects/traces/{trace_id}"
    )
    for bad in ("", "0" * 32, trace_id[:-1], trace_id.upper(), f"{trace_id[:-1]}g", "../x"):
        with pytest.raises(ValueError, match="32 hexadecimal digits"):
            trace_url("http://127.0.0.1:8020", bad)
