"""The ledger service wired from its settings: domain, adapters, servicer, runtime."""

from __future__ import annotations

import os
import socket
import uuid

from medledger.api.ledger.v1 import ledger_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.interceptors import TokenVerifier
from medledger.common.ledger_client import TokenSource
from medledger.common.mongo import create_mongo_client
from medledger.common.scopes import WITNESS_ADD, service_client_id
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import SERVICE_CLIENT_KEYS
from medledger.ledger.adapters.mongo_store import LedgerStore
from medledger.ledger.adapters.vault_signer import VaultNoteSigner
from medledger.ledger.adapters.witnesses import WitnessPublisher
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.domain.log import LogReader
from medledger.ledger.domain.ports import StoredCheckpoint
from medledger.ledger.domain.sequencer import Sequencer, SequencerConfig
from medledger.ledger.gauges import CheckpointGauges
from medledger.ledger.server import LEDGER_ACCESS, LedgerServiceServicer


def ledger_runtime(
    settings: LedgerSettings,
    config: LedgerConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    *,
    verifier: TokenVerifier,
    witness_token: TokenSource | None = None,
) -> ServiceRuntime:
    """The ledger, checking callers' tokens with ``verifier`` and presenting
    ``witness_token`` to its witnesses (tests give theirs; :func:`from_settings` identity's)."""
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
    gauges = CheckpointGauges()

    def on_checkpoint(checkpoint: StoredCheckpoint) -> None:
        reader.observe(checkpoint)
        gauges.observe(checkpoint)

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
        on_checkpoint=on_checkpoint,
    )
    servicer = LedgerServiceServicer(sequencer, reader, signer, settings)
    return ServiceRuntime(
        name="ledger",
        settings=settings,
        servicers=[
            Servicer(servicer, ledger_pb2_grpc.add_LedgerServiceServicer_to_server, LEDGER_ACCESS)
        ],
        mongo=mongo,
        vault=vault,
        startup=[sequencer.start],
        shutdown=[sequencer.stop, publisher.aclose],
        verifier=verifier,
    )


def from_settings(
    settings: LedgerSettings,
    config: LedgerConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    peers: PeerSettings,
) -> ServiceRuntime:
    """The ledger as ``python -m medledger.ledger`` runs it: tokens verified against
    identity's JWKS, and its own client token (from its Vault key) for the witnesses."""
    verifier, jwks = service_verifier(settings, peers.identity_addr)
    witness_token = ServiceTokenSource(
        VaultTransit(vault_settings),
        SERVICE_CLIENT_KEYS["ledger"],
        service_client_id("ledger"),
        peers.identity_addr,
        settings,
        scope=WITNESS_ADD,
        audience=settings.token_audience,
    )
    runtime = ledger_runtime(
        settings,
        config,
        mongo_settings,
        vault_settings,
        verifier=verifier,
        witness_token=witness_token,
    )
    runtime.shutdown = [*runtime.shutdown, witness_token.aclose, jwks.aclose]
    return runtime
