"""gRPC servicer of the identity service: converts messages to domain calls and back.

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED are filled by
#5.
"""

from __future__ import annotations

from typing import Any

import grpc
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.errors import Unimplemented

Context = grpc.aio.ServicerContext[Any, Any]
PENDING = "not implemented yet"


class IdentityServiceServicer(identity_pb2_grpc.IdentityServiceServicer):
    async def CreateOrganization(
        self, request: identity_pb2.CreateOrganizationRequest, context: Context
    ) -> identity_pb2.CreateOrganizationResponse:
        raise Unimplemented(PENDING)

    async def GetOrganization(
        self, request: identity_pb2.GetOrganizationRequest, context: Context
    ) -> identity_pb2.GetOrganizationResponse:
        raise Unimplemented(PENDING)

    async def ListOrganizations(
        self, request: identity_pb2.ListOrganizationsRequest, context: Context
    ) -> identity_pb2.ListOrganizationsResponse:
        raise Unimplemented(PENDING)

    async def RegisterClient(
        self, request: identity_pb2.RegisterClientRequest, context: Context
    ) -> identity_pb2.RegisterClientResponse:
        raise Unimplemented(PENDING)

    async def GetClient(
        self, request: identity_pb2.GetClientRequest, context: Context
    ) -> identity_pb2.GetClientResponse:
        raise Unimplemented(PENDING)

    async def ListClients(
        self, request: identity_pb2.ListClientsRequest, context: Context
    ) -> identity_pb2.ListClientsResponse:
        raise Unimplemented(PENDING)

    async def DisableClient(
        self, request: identity_pb2.DisableClientRequest, context: Context
    ) -> identity_pb2.DisableClientResponse:
        raise Unimplemented(PENDING)

    async def CreateUser(
        self, request: identity_pb2.CreateUserRequest, context: Context
    ) -> identity_pb2.CreateUserResponse:
        raise Unimplemented(PENDING)

    async def ListUsers(
        self, request: identity_pb2.ListUsersRequest, context: Context
    ) -> identity_pb2.ListUsersResponse:
        raise Unimplemented(PENDING)

    async def IssueToken(
        self, request: identity_pb2.IssueTokenRequest, context: Context
    ) -> identity_pb2.IssueTokenResponse:
        raise Unimplemented(PENDING)

    async def GetJwks(
        self, request: identity_pb2.GetJwksRequest, context: Context
    ) -> identity_pb2.GetJwksResponse:
        raise Unimplemented(PENDING)

    async def RotateSigningKey(
        self, request: identity_pb2.RotateSigningKeyRequest, context: Context
    ) -> identity_pb2.RotateSigningKeyResponse:
        raise Unimplemented(PENDING)

    async def GrantConsent(
        self, request: identity_pb2.GrantConsentRequest, context: Context
    ) -> identity_pb2.GrantConsentResponse:
        raise Unimplemented(PENDING)

    async def RevokeConsent(
        self, request: identity_pb2.RevokeConsentRequest, context: Context
    ) -> identity_pb2.RevokeConsentResponse:
        raise Unimplemented(PENDING)

    async def GetConsent(
        self, request: identity_pb2.GetConsentRequest, context: Context
    ) -> identity_pb2.GetConsentResponse:
        raise Unimplemented(PENDING)

    async def ListConsents(
        self, request: identity_pb2.ListConsentsRequest, context: Context
    ) -> identity_pb2.ListConsentsResponse:
        raise Unimplemented(PENDING)

    async def CheckAccess(
        self, request: identity_pb2.CheckAccessRequest, context: Context
    ) -> identity_pb2.CheckAccessResponse:
        raise Unimplemented(PENDING)
