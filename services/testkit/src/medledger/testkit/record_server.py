"""A real record service for tests, started in the test's event loop on a free port, with
its own database on the session's MongoDB and its own Vault token, calling the testkit
platform's identity and ledger."""

from __future__ import annotations

from typing import Any

from medledger.common.config import PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import from_settings
from medledger.testkit.platform import Platform, mongo_settings

__all__ = ["start_record_server"]


async def start_record_server(
    platform: Platform,
    mongo_server: Any,
    vault_server: Any,
    database: str,
    *,
    config: RecordConfig | None = None,
    ledger_addr: str | None = None,
) -> ServiceServer:
    """The started server (``.port``); stop it with ``await server.stop(0)``.
    ``ledger_addr`` points it at another ledger (e.g. one that does not answer)."""
    server = ServiceServer(
        from_settings(
            RecordSettings(grpc_port=0),
            mongo_settings(mongo_server.uri, database),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
            PeerSettings(
                identity_addr=platform.identity_address,
                ledger_addr=ledger_addr or platform.ledger_address,
            ),
            config,
        )
    )
    await server.start()
    return server
