"""``python -m medledger.ledger``: runs the ledger service until SIGTERM."""

from __future__ import annotations

from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.server import run_service
from medledger.common.service import ServiceRuntime
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import from_settings


def build() -> ServiceRuntime:
    return from_settings(
        *load_settings(LedgerSettings, LedgerConfig, MongoSettings, VaultSettings, PeerSettings)
    )


def main() -> None:
    run_service("ledger", build)


if __name__ == "__main__":
    main()
