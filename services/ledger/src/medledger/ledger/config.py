"""Settings of the ledger service (see the README's configuration table)."""

from __future__ import annotations

from medledger.common.config import Port, ServiceSettings


class LedgerSettings(ServiceSettings):
    grpc_port: Port = 50053
