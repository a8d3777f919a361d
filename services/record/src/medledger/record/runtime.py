"""The record service wired from its settings: adapters, servicer, runtime."""

from __future__ import annotations

from medledger.api.record.v1 import record_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.interceptors import TokenVerifier
from medledger.common.mongo import create_mongo_client
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.record.config import RecordSettings
from medledger.record.server import RECORD_ACCESS, RecordServiceServicer


def record_runtime(
    settings: RecordSettings,
    mongo: MongoSettings,
    vault: VaultSettings,
    *,
    verifier: TokenVerifier,
) -> ServiceRuntime:
    """The record service, checking callers' tokens with ``verifier`` (tests give theirs;
    :func:`from_settings` identity's)."""
    return ServiceRuntime(
        name="record",
        settings=settings,
        servicers=[
            Servicer(
                RecordServiceServicer(),
                record_pb2_grpc.add_RecordServiceServicer_to_server,
                RECORD_ACCESS,
            )
        ],
        mongo=create_mongo_client(mongo, app_name="medledger-record"),
        vault=VaultTransit(vault),
        verifier=verifier,
    )


def from_settings(
    settings: RecordSettings, mongo: MongoSettings, vault: VaultSettings, peers: PeerSettings
) -> ServiceRuntime:
    """The record service as ``python -m medledger.record`` runs it: tokens verified
    against identity's JWKS."""
    verifier, jwks = service_verifier(settings, peers.identity_addr)
    runtime = record_runtime(settings, mongo, vault, verifier=verifier)
    runtime.shutdown = [*runtime.shutdown, jwks.aclose]
    return runtime
