"""The witness service assembled from its settings: domain, adapters, servicer, runtime."""

from __future__ import annotations

import time
from collections.abc import Callable

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.mongo import create_mongo_client
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.witness.adapters.mongo_states import MongoLogStates
from medledger.witness.adapters.vault_cosigner import VaultCosigner
from medledger.witness.config import WitnessSettings
from medledger.witness.domain.witness import Witness
from medledger.witness.server import WitnessServiceServicer


def witness_runtime(
    settings: WitnessSettings,
    mongo: MongoSettings,
    vault: VaultSettings,
    *,
    clock: Callable[[], float] = time.time,
) -> ServiceRuntime:
    mongo_client = create_mongo_client(mongo, app_name="medledger-witness")
    transit = VaultTransit(vault)
    witness = Witness(
        logs=settings.trusted_logs(),
        states=MongoLogStates(mongo_client, mongo.mongodb_database),
        cosigner=VaultCosigner(transit, key=settings.witness_key, name=settings.witness_name),
        clock=clock,
    )
    return ServiceRuntime(
        name="witness",
        settings=settings,
        servicers=[
            Servicer(
                WitnessServiceServicer(witness),
                witness_pb2_grpc.add_WitnessServiceServicer_to_server,
                witness_pb2.DESCRIPTOR.services_by_name["WitnessService"],
            )
        ],
        mongo=mongo_client,
        vault=transit,
    )
