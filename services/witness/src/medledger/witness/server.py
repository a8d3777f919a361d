"""gRPC servicer of the witness service: converts messages to domain calls and back.

RPCs not overridden here answer UNIMPLEMENTED until #4 fills them.
"""

from __future__ import annotations

from medledger.api.witness.v1 import witness_pb2_grpc


class WitnessServiceServicer(witness_pb2_grpc.WitnessServiceServicer):
    pass
