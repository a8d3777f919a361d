"""gRPC servicer of the inference service: converts messages to domain calls and back.

RPCs not overridden here answer UNIMPLEMENTED until a later issue fills them.
"""

from __future__ import annotations

from medledger.api.inference.v1 import inference_pb2_grpc


class InferenceServiceServicer(inference_pb2_grpc.InferenceServiceServicer):
    pass
