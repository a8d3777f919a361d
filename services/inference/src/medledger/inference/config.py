"""Settings of the inference service (see the README's configuration table)."""

from __future__ import annotations

from medledger.common.config import Port, ServiceSettings


class InferenceSettings(ServiceSettings):
    grpc_port: Port = 50054
