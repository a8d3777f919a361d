"""``python -m medledger.inference``: runs the inference service until SIGTERM."""

from __future__ import annotations

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.common.config import load_settings
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.inference.adapters.triton import TritonProbe, TritonSettings
from medledger.inference.config import InferenceSettings
from medledger.inference.server import InferenceServiceServicer


def build() -> ServiceRuntime:
    settings, triton = load_settings(InferenceSettings, TritonSettings)
    return ServiceRuntime(
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


def main() -> None:
    run_service("inference", build)


if __name__ == "__main__":
    main()
