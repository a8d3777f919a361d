"""The local trace UI: Arize Phoenix, in a virtualenv of its own, receiving the services'
spans over OTLP/gRPC and showing each trace as a tree of spans with their durations.

It is kept offline and on loopback: its web UI listens on 127.0.0.1 only, its telemetry,
external resources, sandboxes and agent features are off. (Its OTLP gRPC port binds every
interface whatever it is told; nothing but spans can be sent there.) Phoenix stores what it
receives under the stack's state folder. ``MEDLEDGER_TRACE_UI=0`` leaves it out of ``dev up``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from medledger.devstack.paths import cache_dir
from medledger.devstack.pinned_venv import PinnedVenv
from medledger.devstack.probes import Health, http_health
from medledger.devstack.server import Server

REQUIREMENTS_FILE: Final = Path(__file__).with_name("phoenix-requirements.txt")
ENABLED_ENV_VAR: Final = "MEDLEDGER_TRACE_UI"
VENV_ENV_VAR: Final = "MEDLEDGER_PHOENIX_VENV"
# Away from Phoenix's own defaults (6006, 4317), which other tools on a laptop often hold.
TRACE_UI_HTTP_PORT: Final = 8020
TRACE_UI_OTLP_PORT: Final = 8021
TRACE_ID: Final = re.compile(r"^[0-9a-f]{32}$")


def trace_ui_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether ``dev up`` starts the trace UI: unless ``MEDLEDGER_TRACE_UI`` is 0 (or off,
    false, no)."""
    value = (os.environ if environ is None else environ).get(ENABLED_ENV_VAR, "1")
    return value.strip().lower() not in {"0", "off", "false", "no"}


def default_venv_dir() -> Path:
    """``$MEDLEDGER_PHOENIX_VENV``, else ``<repo>/.medledger/cache/phoenix-venv``."""
    override = os.environ.get(VENV_ENV_VAR)
    return Path(override).expanduser().resolve() if override else cache_dir() / "phoenix-venv"


def _python_request() -> str:
    """Our own interpreter (the pins were resolved for the workspace's Python)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix) / "bin" / f"python{version}"
    return str(base) if base.is_file() else version


def trace_url(base_url: str, trace_id: str) -> str:
    """Where Phoenix shows trace ``trace_id`` (32 lowercase hex digits)."""
    if not TRACE_ID.match(trace_id) or trace_id == "0" * 32:
        raise ValueError("a trace id is 32 hexadecimal digits, not all zero")
    return f"{base_url}/redirects/traces/{trace_id}"


class PhoenixServer(Server):
    """``phoenix serve`` on fixed loopback ports, its data under ``state_dir``."""

    component = "trace-ui"

    def __init__(
        self,
        *,
        http_port: int,
        otlp_port: int,
        state_dir: Path,
        log_file: Path,
        venv: Path | None = None,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
        # A cold start takes ~25 s on two cores (database migrations, then the web app).
        start_timeout: float = 180.0,
    ) -> None:
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        self.http_port = http_port
        self.otlp_port = otlp_port
        self.state_dir = state_dir
        self.venv = (venv or default_venv_dir()).resolve()

    @property
    def ports(self) -> list[int]:
        return [self.http_port, self.otlp_port]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def address(self) -> str:
        """The web UI's URL (what the endpoints table shows)."""
        return self.url

    @property
    def otlp_endpoint(self) -> str:
        """What the services' ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to."""
        return f"http://{self.host}:{self.otlp_port}"

    @property
    def binary(self) -> Path:
        return self.venv / "bin" / "phoenix"

    def pinned(self) -> PinnedVenv:
        return PinnedVenv(
            self.component, self.venv, REQUIREMENTS_FILE, _python_request(), self.binary.is_file
        )

    def ensure_runtime(self, on_build: Callable[[Path], None] | None = None) -> None:
        """Build the virtualenv now if needed (``on_build(venv)`` is called first)."""
        self.pinned().ensure(log_file=self.log_file, on_build=on_build)

    def prepare(self) -> None:
        self.ensure_runtime()
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        return [str(self.binary), "serve"]

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PHOENIX_", "OTEL_")) and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
        }
        env.update(
            {
                "PHOENIX_HOST": self.host,
                "PHOENIX_PORT": str(self.http_port),
                "PHOENIX_GRPC_PORT": str(self.otlp_port),
                "PHOENIX_WORKING_DIR": str(self.state_dir.resolve()),
                "PHOENIX_TELEMETRY_ENABLED": "false",
                "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
                "PHOENIX_ALLOWED_SANDBOX_PROVIDERS": "NONE",
                "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
                "PHOENIX_AGENTS_DISABLE_BASH": "true",
                "PHOENIX_AGENTS_DISABLE_WEB_ACCESS": "true",
                "PHOENIX_AGENTS_DISABLE_GITHUB": "true",
                "VIRTUAL_ENV": str(self.venv),
            }
        )
        return env

    def health(self) -> Health:
        return http_health(f"{self.url}/healthz")
