"""``python -m medledger.ledger``: runs the ledger service until SIGTERM."""

from __future__ import annotations

import os
import socket
import uuid

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings, load_settings
from medledger.common.mongo import create_mongo_client
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.ledger.adapters.mongo_store import LedgerStore
from medledger.ledger.adapters.vault_signer import VaultNoteSigner
from medledger.ledger.adapters.witnesses import WitnessPublisher
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.domain.log import LogReader
from medledger.ledger.domain.sequencer import Sequencer, SequencerConfig
from medledger.ledger.server import LedgerServiceServicer


def build() -> ServiceRuntime:
    settings, config, mongo_settings, vault_settings = load_settings(
        LedgerSettings, LedgerConfig, MongoSettings, VaultSettings
    )
    return build_runtime(settings, config, mongo_settings, vault_settings)


def build_runtime(
    settings: LedgerSettings,
    config: LedgerConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
) -> ServiceRuntime:
    mongo = create_mongo_client(mongo_settings, app_name="medledger-ledger")
    vault = VaultTransit(vault_settings)
    store = LedgerStore(mongo, mongo_settings.mongodb_database)
    signer = VaultNoteSigner(vault, config.signing_key, config.origin)
    publisher = WitnessPublisher(
        store, config.witness_addresses, signer, config.witness_verifier_keys, settings
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
