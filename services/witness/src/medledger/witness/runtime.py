"""The witness service wired from its settings: domain, adapters, servicer, runtime."""

from __future__ import annotations

import time
from collections.abc import Callable

from medledger.api.witness.v1 import witness_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.interceptors import TokenVerifier
from medledger.common.mongo import create_mongo_client
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.witness.adapters.mongo_states import MongoLogStates
from medledger.witness.adapters.vault_cosigner import VaultCosigner
from medledger.witness.config import WitnessSettings
from medledger.witness.domain.witness import Witness
from medledger.witness.server import WITNESS_ACCESS, WitnessServiceServicer


def witness_runtime(
    settings: WitnessSettings,
    mongo: MongoSettings,
    vault: VaultSettings,
    *,
    verifier: TokenVerifier,
    clock: Callable[[], float] = time.time,
) -> ServiceRuntime:
    """The witness, checking callers' tokens with ``verifier`` (tests give theirs;
    :func:`from_settings` identity's)."""
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
                WITNESS_ACCESS,
            )
        ],
        mongo=mongo_client,
        vault=transit,
        verifier=verifier,
    )


def from_settings(
    settings: WitnessSettings, mongo: MongoSettings, vault: VaultSettings, peers: PeerSettings
) -> ServiceRuntime:
    """The witness as ``python -m medledger.witness`` runs it: tokens verified against
    identity's JWKS."""
    verifier, jwks = service_verifier(settings, peers.identity_addr)
    runtime = witness_runtime(settings, mongo, vault, verifier=verifier)
    runtime.shutdown = [*runtime.shutdown, jwks.aclose]
    return runtime
