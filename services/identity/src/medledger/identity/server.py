"""gRPC servicer of the identity service: converts messages to domain calls and back.

RPCs not overridden here answer UNIMPLEMENTED until #5 fills them.
"""

from __future__ import annotations

from medledger.api.identity.v1 import identity_pb2_grpc


class IdentityServiceServicer(identity_pb2_grpc.IdentityServiceServicer):
    pass
