"""The medledger services as processes: their ports, environment and gRPC health."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from medledger.cli.stack.probes import Health, grpc_health
from medledger.cli.stack.process import ComponentStartError
from medledger.cli.stack.server import Server

# Start order: each service starts after those it calls.
SERVICE_PORTS: Final[Mapping[str, int]] = MappingProxyType(
    {"ledger": 50053, "identity": 50051, "record": 50052, "inference": 50054, "witness": 50055}
)
LEDGER_ORIGIN: Final = "medledger.local/ledger"
DATABASE: Final = "medledger"


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services find their dependencies and each other."""

    mongo_uri: str
    vault_addr: str
    vault_token: str
    triton_url: str
    service_ports: Mapping[str, int] = field(default_factory=lambda: dict(SERVICE_PORTS))
    host: str = "127.0.0.1"

    def service_addr(self, name: str) -> str:
        return f"{self.host}:{self.service_ports[name]}"


def service_env(
    name: str, endpoints: StackEndpoints, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment that runs service ``name`` against ``endpoints``.

    ``base`` (default: our environment) is kept, except that the settings below win; the
    OpenTelemetry exporters are turned off unless the user configured any ``OTEL_*`` variable.
    """
    env = dict(os.environ if base is None else base)
    if not any(key.startswith("OTEL_") for key in env):
        env["OTEL_TRACES_EXPORTER"] = "none"
        env["OTEL_METRICS_EXPORTER"] = "none"
        env["OTEL_LOGS_EXPORTER"] = "none"
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "OTEL_SERVICE_NAME": name,
            "MEDLEDGER_GRPC_HOST": endpoints.host,
            "MEDLEDGER_GRPC_PORT": str(endpoints.service_ports[name]),
            "MONGODB_URI": endpoints.mongo_uri,
            "MEDLEDGER_MONGODB_DATABASE": DATABASE,
            "VAULT_ADDR": endpoints.vault_addr,
            "VAULT_TOKEN": endpoints.vault_token,
            "MEDLEDGER_IDENTITY_ADDR": endpoints.service_addr("identity"),
            "MEDLEDGER_RECORD_ADDR": endpoints.service_addr("record"),
            "MEDLEDGER_LEDGER_ADDR": endpoints.service_addr("ledger"),
            "LEDGER_ORIGIN": LEDGER_ORIGIN,
            "LEDGER_WITNESSES": "",
        }
    )
    if name == "inference":
        env["TRITON_URL"] = endpoints.triton_url
    return env


def service_available(name: str) -> bool:
    """Whether ``python -m medledger.<name>`` can run in this environment."""
    try:
        return importlib.util.find_spec(f"medledger.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


class ServiceServer(Server):
    """One medledger service: ``<this python> -m medledger.<name>``, ready when SERVING."""

    def __init__(
        self,
        name: str,
        *,
        endpoints: StackEndpoints,
        log_file: Path,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        self.component = name
        self.endpoints = endpoints

    @property
    def port(self) -> int:
        return self.endpoints.service_ports[self.component]

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def address(self) -> str:
        return self.endpoints.service_addr(self.component)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", f"medledger.{self.component}"]

    def env(self) -> dict[str, str]:
        return service_env(self.component, self.endpoints)

    def prepare(self) -> None:
        if not service_available(self.component):
            raise ComponentStartError(
                self.component,
                None,
                f"`python -m medledger.{self.component}` is not available in {sys.prefix}",
            )

    def after_start(self) -> None:
        self.process.wait_ready(
            lambda: self.health() is Health.SERVING,
            timeout=self.start_timeout,
            what="health check did not report SERVING",
            interval=0.25,
        )

    def health(self) -> Health:
        return grpc_health(self.address)
