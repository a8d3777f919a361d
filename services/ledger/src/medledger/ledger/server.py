"""gRPC servicer of the ledger service: converts messages to domain calls and back.

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED are filled by
#4.
"""

from __future__ import annotations

from typing import Any

import grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.errors import Unimplemented

Context = grpc.aio.ServicerContext[Any, Any]
PENDING = "not implemented yet"


class LedgerServiceServicer(ledger_pb2_grpc.LedgerServiceServicer):
    async def Append(
        self, request: ledger_pb2.AppendRequest, context: Context
    ) -> ledger_pb2.AppendResponse:
        raise Unimplemented(PENDING)

    async def GetCheckpoint(
        self, request: ledger_pb2.GetCheckpointRequest, context: Context
    ) -> ledger_pb2.GetCheckpointResponse:
        raise Unimplemented(PENDING)

    async def ListCheckpoints(
        self, request: ledger_pb2.ListCheckpointsRequest, context: Context
    ) -> ledger_pb2.ListCheckpointsResponse:
        raise Unimplemented(PENDING)

    async def GetEntry(
        self, request: ledger_pb2.GetEntryRequest, context: Context
    ) -> ledger_pb2.GetEntryResponse:
        raise Unimplemented(PENDING)

    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: Context
    ) -> ledger_pb2.ListEntriesResponse:
        raise Unimplemented(PENDING)

    async def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, context: Context
    ) -> ledger_pb2.GetInclusionProofResponse:
        raise Unimplemented(PENDING)

    async def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, context: Context
    ) -> ledger_pb2.GetConsistencyProofResponse:
        raise Unimplemented(PENDING)

    async def GetVerifierKey(
        self, request: ledger_pb2.GetVerifierKeyRequest, context: Context
    ) -> ledger_pb2.GetVerifierKeyResponse:
        raise Unimplemented(PENDING)
