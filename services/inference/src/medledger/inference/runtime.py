"""The inference service wired from its settings: adapters, domain, servicer, runtime."""

from __future__ import annotations

from medledger.api.inference.v1 import inference_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.interceptors import TokenVerifier
from medledger.common.ledger_client import LedgerClient, TokenSource
from medledger.common.mongo import create_mongo_client
from medledger.common.scopes import SERVICE_CLIENT_SCOPES, service_client_id
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.vault import VaultTransit
from medledger.inference.adapters.ledger_events import LedgerEvents
from medledger.inference.adapters.model_files import ModelFiles
from medledger.inference.adapters.model_store import ModelStore
from medledger.inference.adapters.patient_records import RecordClient
from medledger.inference.adapters.triton import (
    TritonInference,
    TritonModels,
    TritonProbe,
    TritonSettings,
)
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.domain.predictor import Predictor
from medledger.inference.domain.registry import ModelRegistry
from medledger.inference.server import INFERENCE_ACCESS, InferenceServiceServicer

# What the inference service's own token asks identity for (identity grants a service client
# these and no more).
SERVICE_SCOPES = " ".join(SERVICE_CLIENT_SCOPES["inference"])


def inference_runtime(
    settings: InferenceSettings,
    config: InferenceConfig,
    triton: TritonSettings,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    peers: PeerSettings,
    *,
    verifier: TokenVerifier,
    service_token: TokenSource | None = None,
) -> ServiceRuntime:
    """The inference service, checking callers' tokens with ``verifier`` and presenting
    ``service_token`` to the ledger (default: its own client token, from its Vault key, as
    :func:`from_settings` runs it)."""
    mongo = create_mongo_client(mongo_settings, app_name="medledger-inference")
    vault = VaultTransit(vault_settings)
    shutdown = []
    if service_token is None:
        tokens = ServiceTokenSource(
            vault,
            config.client_key,
            service_client_id("inference"),
            peers.identity_addr,
            settings,
            scope=SERVICE_SCOPES,
            audience=settings.token_audience,
        )
        shutdown.append(tokens.aclose)
        service_token = tokens
    ledger = LedgerClient(peers.ledger_addr, settings, token=service_token)
    served = TritonModels(triton)
    files = ModelFiles(config.model_repository)
    events = LedgerEvents(ledger, timeout=config.ledger_timeout_seconds)
    registry = ModelRegistry(
        ModelStore(mongo, mongo_settings.mongodb_database), served, files, events
    )
    records = RecordClient(peers.record_addr, settings, timeout=config.ledger_timeout_seconds)
    predictor = Predictor(registry, files, TritonInference(served), records, events)
    return ServiceRuntime(
        name="inference",
        settings=settings,
        servicers=[
            Servicer(
                InferenceServiceServicer(registry, predictor),
                inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                INFERENCE_ACCESS,
            )
        ],
        mongo=mongo,
        vault=vault,
        extra_probes=[TritonProbe(triton)],
        shutdown=[served.aclose, records.aclose, ledger.aclose, *shutdown],
        verifier=verifier,
    )


def from_settings(
    settings: InferenceSettings,
    config: InferenceConfig,
    triton: TritonSettings,
    mongo: MongoSettings,
    vault: VaultSettings,
    peers: PeerSettings,
) -> ServiceRuntime:
    """The inference service as ``python -m medledger.inference`` runs it: tokens verified
    against identity's JWKS, its own calls made with its client token."""
    verifier, jwks = service_verifier(settings, peers.identity_addr)
    runtime = inference_runtime(settings, config, triton, mongo, vault, peers, verifier=verifier)
    runtime.shutdown = [*runtime.shutdown, jwks.aclose]
    return runtime
