"""gRPC servicer of the ledger service: converts messages to domain calls and back.

RPCs not overridden here answer UNIMPLEMENTED until #4 fills them.
"""

from __future__ import annotations

from medledger.api.ledger.v1 import ledger_pb2_grpc


class LedgerServiceServicer(ledger_pb2_grpc.LedgerServiceServicer):
    pass
