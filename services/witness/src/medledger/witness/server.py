"""gRPC servicer of the witness service: converts messages to domain calls and back."""

from __future__ import annotations

from typing import Any, Final

import grpc

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.policy import Scopes, ServiceAccess
from medledger.common.scopes import ADMIN, LEDGER_READ, WITNESS_ADD
from medledger.witness.domain.witness import Witness

Context = grpc.aio.ServicerContext[Any, Any]

_SERVICE = witness_pb2.DESCRIPTOR.services_by_name["WitnessService"]
_METHODS = _SERVICE.methods_by_name
WITNESS_ACCESS: Final = ServiceAccess(
    _SERVICE,
    {
        # Only a log's sequencer submits checkpoints (whose log signature is checked
        # whoever submits them).
        _METHODS["AddCheckpoint"]: Scopes(WITNESS_ADD),
        # The witness's view of the logs: for their sequencers, auditors and operators.
        _METHODS["GetWitnessInfo"]: Scopes(WITNESS_ADD, LEDGER_READ, ADMIN),
    },
)


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
