"""``python -m medledger.inference``: runs the inference service until SIGTERM."""

from __future__ import annotations

from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.server import run_service
from medledger.common.service import ServiceRuntime
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.runtime import from_settings


def build() -> ServiceRuntime:
    settings, config, triton, mongo, vault, peers = load_settings(
        InferenceSettings,
        InferenceConfig,
        TritonSettings,
        MongoSettings,
        VaultSettings,
        PeerSettings,
    )
    return from_settings(settings, config, triton, mongo, vault, peers)


def main() -> None:
    run_service("inference", build)


if __name__ == "__main__":
    main()
