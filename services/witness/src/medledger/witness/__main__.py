"""``python -m medledger.witness``: runs the witness service until SIGTERM."""

from __future__ import annotations

from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.server import run_service
from medledger.common.service import ServiceRuntime
from medledger.witness.config import WitnessSettings
from medledger.witness.runtime import from_settings


def build() -> ServiceRuntime:
    return from_settings(
        *load_settings(WitnessSettings, MongoSettings, VaultSettings, PeerSettings)
    )


def main() -> None:
    run_service("witness", build)


if __name__ == "__main__":
    main()
