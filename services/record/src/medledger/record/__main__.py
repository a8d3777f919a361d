"""``python -m medledger.record``: runs the record service until SIGTERM."""

from __future__ import annotations

from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.server import run_service
from medledger.common.service import ServiceRuntime
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import from_settings


def build() -> ServiceRuntime:
    settings, config, mongo, vault, peers = load_settings(
        RecordSettings, RecordConfig, MongoSettings, VaultSettings, PeerSettings
    )
    return from_settings(settings, mongo, vault, peers, config)


def main() -> None:
    run_service("record", build)


if __name__ == "__main__":
    main()
