"""``python -m medledger.inference``: runs the inference service until SIGTERM."""

from __future__ import annotations

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.common.auth import require_tokens
from medledger.common.config import PeerSettings, load_settings
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.inference.adapters.triton import TritonProbe, TritonSettings
from medledger.inference.config import InferenceSettings
from medledger.inference.server import InferenceServiceServicer


def build() -> ServiceRuntime:
    settings, triton, peers = load_settings(InferenceSettings, TritonSettings, PeerSettings)
    runtime = ServiceRuntime(
        name="inference",
        settings=settings,
        servicers=[
            Servicer(
                InferenceServiceServicer(),
                inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                inference_pb2.DESCRIPTOR.services_by_name["InferenceService"],
            )
        ],
        extra_probes=[TritonProbe(triton)],
    )
    return require_tokens(runtime, peers.identity_addr)


def main() -> None:
    run_service("inference", build)


if __name__ == "__main__":
    main()
