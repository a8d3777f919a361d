"""Settings of the record service (see the README's configuration table)."""

from __future__ import annotations

from medledger.common.config import Port, ServiceSettings


class RecordSettings(ServiceSettings):
    grpc_port: Port = 50052
