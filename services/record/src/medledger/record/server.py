"""gRPC servicer of the record service: converts messages to domain calls and back.

RPCs not overridden here answer UNIMPLEMENTED until a later issue fills them.
"""

from __future__ import annotations

from medledger.api.record.v1 import record_pb2_grpc


class RecordServiceServicer(record_pb2_grpc.RecordServiceServicer):
    pass
