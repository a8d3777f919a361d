"""``python -m medledger.witness``: runs the witness service until SIGTERM."""

from __future__ import annotations

from medledger.common.auth import require_tokens
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.scopes import WITNESS_ADD
from medledger.common.server import run_service
from medledger.common.service import ServiceRuntime
from medledger.witness.config import WitnessSettings
from medledger.witness.runtime import witness_runtime

ADD_CHECKPOINT = "/medledger.api.witness.v1.WitnessService/AddCheckpoint"


def build() -> ServiceRuntime:
    settings, mongo, vault, peers = load_settings(
        WitnessSettings, MongoSettings, VaultSettings, PeerSettings
    )
    # Only a log's sequencer may submit checkpoints; reading the witness's state needs any
    # valid token. (The checkpoint's own signature is checked whoever submits it.)
    return require_tokens(
        witness_runtime(settings, mongo, vault),
        peers.identity_addr,
        {ADD_CHECKPOINT: frozenset({WITNESS_ADD})},
    )


def main() -> None:
    run_service("witness", build)


if __name__ == "__main__":
    main()
