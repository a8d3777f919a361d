"""The inference service wired from its settings: adapters, servicer, runtime."""

from __future__ import annotations

from medledger.api.inference.v1 import inference_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import PeerSettings
from medledger.common.interceptors import TokenVerifier
from medledger.common.service import Servicer, ServiceRuntime
from medledger.inference.adapters.triton import TritonProbe, TritonSettings
from medledger.inference.config import InferenceSettings
from medledger.inference.server import INFERENCE_ACCESS, InferenceServiceServicer


def inference_runtime(
    settings: InferenceSettings, triton: TritonSettings, *, verifier: TokenVerifier
) -> ServiceRuntime:
    """The inference service, checking callers' tokens with ``verifier`` (tests give
    theirs; :func:`from_settings` identity's)."""
    return ServiceRuntime(
        name="inference",
        settings=settings,
        servicers=[
            Servicer(
                InferenceServiceServicer(),
                inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                INFERENCE_ACCESS,
            )
        ],
        extra_probes=[TritonProbe(triton)],
        verifier=verifier,
    )


def from_settings(
    settings: InferenceSettings, triton: TritonSettings, peers: PeerSettings
) -> ServiceRuntime:
    """The inference service as ``python -m medledger.inference`` runs it: tokens verified
    against identity's JWKS."""
    verifier, jwks = service_verifier(settings, peers.identity_addr)
    runtime = inference_runtime(settings, triton, verifier=verifier)
    runtime.shutdown = [*runtime.shutdown, jwks.aclose]
    return runtime
