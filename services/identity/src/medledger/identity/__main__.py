"""``python -m medledger.identity``: runs the identity service until SIGTERM."""

from __future__ import annotations

from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.server import run_service
from medledger.identity.config import IdentityConfig, IdentitySettings
from medledger.identity.runtime import IdentityRuntime, from_settings


def build() -> IdentityRuntime:
    return from_settings(
        *load_settings(IdentitySettings, IdentityConfig, MongoSettings, VaultSettings, PeerSettings)
    )


def main() -> None:
    run_service("identity", build)


if __name__ == "__main__":
    main()
