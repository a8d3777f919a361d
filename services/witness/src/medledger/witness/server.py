"""gRPC servicer of the witness service: converts messages to domain calls and back."""

from __future__ import annotations

from typing import Any

import grpc

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.witness.domain.witness import Witness

Context = grpc.aio.ServicerContext[Any, Any]


class WitnessServiceServicer(witness_pb2_grpc.WitnessServiceServicer):
    def __init__(self, witness: Witness) -> None:
        self._witness = witness

    async def AddCheckpoint(
        self, request: witness_pb2.AddCheckpointRequest, context: Context
    ) -> witness_pb2.AddCheckpointResponse:
        cosignature = await self._witness.add_checkpoint(
            request.old_size, list(request.consistency_proof), request.checkpoint
        )
        return witness_pb2.AddCheckpointResponse(cosignature=cosignature)

    async def GetWitnessInfo(
        self, request: witness_pb2.GetWitnessInfoRequest, context: Context
    ) -> witness_pb2.GetWitnessInfoResponse:
        info = await self._witness.info()
        return witness_pb2.GetWitnessInfoResponse(
            name=info.name,
            vkey=info.vkey,
            logs=[
                witness_pb2.LogState(origin=log.origin, size=log.size, root_hash=log.root_hash)
                for log in info.logs
            ],
        )
