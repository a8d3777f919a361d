"""``python -m medledger.ledger``: runs the ledger service until SIGTERM."""

from __future__ import annotations

import os
import socket
import uuid

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.auth import require_tokens
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.ledger_client import TokenSource
from medledger.common.mongo import create_mongo_client
from medledger.common.scopes import (
    ADMIN,
    LEDGER_APPEND,
    LEDGER_READ,
    WITNESS_ADD,
    service_client_id,
)
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import SERVICE_CLIENT_KEYS
from medledger.ledger.adapters.mongo_store import LedgerStore
from medledger.ledger.adapters.vault_signer import VaultNoteSigner
from medledger.ledger.adapters.witnesses import WitnessPublisher
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.domain.log import LogReader
from medledger.ledger.domain.sequencer import Sequencer, SequencerConfig
from medledger.ledger.server import LedgerServiceServicer

_METHOD = "/medledger.api.ledger.v1.LedgerService/"
_READERS = frozenset({LEDGER_READ, ADMIN})
# Reads too need a token: entries reveal who acted on whose record (as pseudonyms).
REQUIRED_SCOPES = {
    _METHOD + "Append": frozenset({LEDGER_APPEND}),
    **{
        _METHOD + name: _READERS
        for name in (
            "GetCheckpoint",
            "ListCheckpoints",
            "GetEntry",
            "ListEntries",
            "GetInclusionProof",
            "GetConsistencyProof",
            "GetVerifierKey",
        )
    },
}


def build() -> ServiceRuntime:
    settings, config, mongo_settings, vault_settings, peers = load_settings(
        LedgerSettings, LedgerConfig, MongoSettings, VaultSettings, PeerSettings
    )
    witness_token = ServiceTokenSource(
        VaultTransit(vault_settings),
        SERVICE_CLIENT_KEYS["ledger"],
        service_client_id("ledger"),
        peers.identity_addr,
        settings,
        scope=WITNESS_ADD,
        audience=settings.token_audience,
    )
    runtime = build_runtime(settings, config, mongo_settings, vault_settings, witness_token)
    runtime.shutdown = [*runtime.shutdown, witness_token.aclose]
    return require_tokens(runtime, peers.identity_addr, REQUIRED_SCOPES)


def build_runtime(
    settings: LedgerSettings,
    config: LedgerConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    witness_token: TokenSource | None = None,
) -> ServiceRuntime:
    """The ledger; ``build`` adds token checks, tests may serve it without them."""
    mongo = create_mongo_client(mongo_settings, app_name="medledger-ledger")
    vault = VaultTransit(vault_settings)
    store = LedgerStore(mongo, mongo_settings.mongodb_database)
    signer = VaultNoteSigner(vault, config.signing_key, config.origin)
    publisher = WitnessPublisher(
        store,
        config.witness_addresses,
        signer,
        config.witness_verifier_keys,
        settings,
        token=witness_token,
    )
    reader = LogReader(store)
    sequencer = Sequencer(
        store,
        signer,
        SequencerConfig(
            origin=config.origin,
            owner=f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}",
            address=settings.advertise_address or settings.listen_address,
            batch_size=config.batch_size,
            batch_delay=config.batch_delay_ms / 1000,
            lease_ttl=config.lease_ttl_seconds,
        ),
        publisher,
        on_checkpoint=reader.observe,
    )
    servicer = LedgerServiceServicer(sequencer, reader, signer, settings)
    return ServiceRuntime(
        name="ledger",
        settings=settings,
        servicers=[
            Servicer(
                servicer,
                ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
                ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
            )
        ],
        mongo=mongo,
        vault=vault,
        startup=[sequencer.start],
        shutdown=[sequencer.stop, publisher.aclose],
    )


def main() -> None:
    run_service("ledger", build)


if __name__ == "__main__":
    main()
