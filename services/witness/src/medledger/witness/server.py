"""gRPC servicer of the witness service: converts messages to domain calls and back.

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED are filled by
#4.
"""

from __future__ import annotations

from typing import Any

import grpc
from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.errors import Unimplemented

Context = grpc.aio.ServicerContext[Any, Any]
PENDING = "not implemented yet"


class WitnessServiceServicer(witness_pb2_grpc.WitnessServiceServicer):
    async def AddCheckpoint(
        self, request: witness_pb2.AddCheckpointRequest, context: Context
    ) -> witness_pb2.AddCheckpointResponse:
        raise Unimplemented(PENDING)

    async def GetWitnessInfo(
        self, request: witness_pb2.GetWitnessInfoRequest, context: Context
    ) -> witness_pb2.GetWitnessInfoResponse:
        raise Unimplemented(PENDING)
