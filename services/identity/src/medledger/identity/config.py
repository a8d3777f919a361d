"""Settings of the identity service (see the README's configuration table)."""

from __future__ import annotations

from medledger.common.config import Port, ServiceSettings


class IdentitySettings(ServiceSettings):
    grpc_port: Port = 50051
