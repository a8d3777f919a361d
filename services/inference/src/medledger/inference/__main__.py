"""``python -m medledger.inference``: runs the inference service until SIGTERM."""

from __future__ import annotations

from medledger.common.config import PeerSettings, load_settings
from medledger.common.server import run_service
from medledger.common.service import ServiceRuntime
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceSettings
from medledger.inference.runtime import from_settings


def build() -> ServiceRuntime:
    return from_settings(*load_settings(InferenceSettings, TritonSettings, PeerSettings))


def main() -> None:
    run_service("inference", build)


if __name__ == "__main__":
    main()
