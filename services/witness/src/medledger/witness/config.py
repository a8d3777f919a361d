"""Settings of the witness service (see the README's configuration table)."""

from __future__ import annotations

from medledger.common.config import Port, ServiceSettings


class WitnessSettings(ServiceSettings):
    grpc_port: Port = 50055
