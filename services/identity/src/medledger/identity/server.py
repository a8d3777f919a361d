"""gRPC servicer of the identity service: converts messages to domain calls and back.

The caller's principal comes from the auth interceptor (``authenticated_principal``); the
domain decides what it may do. Consent and CheckAccess are delegated to ``consent_rpc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.interceptors import authenticated_principal
from medledger.common.policy import PUBLIC, ResourceAccess, Scopes, ServiceAccess
from medledger.common.scopes import (
    ADMIN,
    AUDIT_READ,
    CHECK_ACCESS,
    IDENTITY_READ,
    PATIENT_DIRECTORY,
)
from medledger.identity.consent_rpc import ConsentRpcs
from medledger.identity.domain.directory import Directory, NewClient, NewUser
from medledger.identity.domain.patient_directory import PatientDirectory
from medledger.identity.domain.ports import Client, Organization, User
from medledger.identity.domain.purposes import purpose_codes, purpose_values
from medledger.identity.domain.tokens import IssuedToken, TokenService
from medledger.identity.login_source import FORWARDED_FOR, IPNetwork, login_source

Context = grpc.aio.ServicerContext[Any, Any]

_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
_METHODS = _SERVICE.methods_by_name
_ADMINS = Scopes(ADMIN)
# The domain then narrows non-admins to their own organisation.
_DIRECTORY_READERS = Scopes(ADMIN, IDENTITY_READ)
IDENTITY_ACCESS: Final = ServiceAccess(
    _SERVICE,
    {
        # How one gets a token, and how one checks it.
        _METHODS["IssueToken"]: PUBLIC,
        _METHODS["GetJwks"]: PUBLIC,
        _METHODS["CreateOrganization"]: _ADMINS,
        _METHODS["GetOrganization"]: _DIRECTORY_READERS,
        _METHODS["ListOrganizations"]: _DIRECTORY_READERS,
        _METHODS["RegisterClient"]: _ADMINS,
        _METHODS["GetClient"]: _DIRECTORY_READERS,
        _METHODS["ListClients"]: _DIRECTORY_READERS,
        _METHODS["DisableClient"]: _ADMINS,
        _METHODS["CreateUser"]: _ADMINS,
        # Any principal; the domain shows a user only themselves (admins anyone).
        _METHODS["GetUser"]: _DIRECTORY_READERS | ResourceAccess("*", ""),
        _METHODS["ListUsers"]: _ADMINS,
        _METHODS["DisableUser"]: _ADMINS,
        _METHODS["EnableUser"]: _ADMINS,
        _METHODS["ResetUserPassword"]: _ADMINS,
        _METHODS["ResetUserTotp"]: _ADMINS,
        _METHODS["RotateSigningKey"]: _ADMINS,
        # The consent rules decide per patient (the patient, their organisation, the
        # grantee), each with a SMART scope on Consent for the action.
        _METHODS["GrantConsent"]: ResourceAccess("Consent", "cu"),
        _METHODS["RevokeConsent"]: ResourceAccess("Consent", "cu"),
        _METHODS["GetConsent"]: ResourceAccess("Consent", "r"),
        _METHODS["ListConsents"]: ResourceAccess("Consent", "s"),
        # A trusted service asks about anyone; a principal about itself, for resource
        # scopes its token holds (so without any, it could only ever be denied).
        _METHODS["CheckAccess"]: Scopes(CHECK_ACCESS) | ResourceAccess("*", ""),
        # Auditors: who broke the glass, when, on what (never why: free text stays here).
        _METHODS["ListBreakGlassAccesses"]: Scopes(ADMIN, AUDIT_READ),
        # The record service alone: it knows who created each Patient, and erases patients.
        _METHODS["RegisterPatientHolder"]: Scopes(PATIENT_DIRECTORY),
        _METHODS["ErasePatientData"]: Scopes(PATIENT_DIRECTORY),
    },
)

KIND_BY_ENUM: Final[Mapping[int, str]] = MappingProxyType(
    {
        identity_pb2.USER_KIND_PRACTITIONER: "practitioner",
        identity_pb2.USER_KIND_PATIENT: "patient",
        identity_pb2.USER_KIND_ADMIN: "admin",
    }
)
ENUM_BY_KIND: Final[Mapping[str, identity_pb2.UserKind.ValueType]] = MappingProxyType(
    {kind: identity_pb2.UserKind.ValueType(value) for value, kind in KIND_BY_ENUM.items()}
)


def _timestamp(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _organization(organization: Organization) -> identity_pb2.Organization:
    return identity_pb2.Organization(
        organization_id=organization.organization_id,
        display_name=organization.display_name,
        create_time=_timestamp(organization.create_time),
    )


def _client(client: Client) -> identity_pb2.Client:
    return identity_pb2.Client(
        client_id=client.client_id,
        organization=client.organization,
        jwks_json=client.jwks_json,
        allowed_scopes=client.allowed_scopes,
        allowed_purposes=purpose_values(client.allowed_purposes),
        disabled=client.disabled,
        create_time=_timestamp(client.create_time),
        disable_time=_timestamp(client.disable_time),
        display_name=client.display_name,
    )


def _user(user: User) -> identity_pb2.User:
    return identity_pb2.User(
        user_id=user.user_id,
        username=user.username,
        kind=ENUM_BY_KIND[user.kind],
        organization=user.organization,
        patient_id=user.patient_id,
        totp_enabled=user.totp_enabled,
        create_time=_timestamp(user.create_time),
        disabled=user.disabled,
        disable_time=_timestamp(user.disable_time),
    )


def _token(issued: IssuedToken) -> identity_pb2.IssueTokenResponse:
    return identity_pb2.IssueTokenResponse(
        access_token=issued.access_token,
        token_type="Bearer",  # noqa: S106 (the token type, not a secret)
        expires_in=issued.expires_in,
        scope=issued.scope,
    )


def _source(context: Context, trusted_proxies: Sequence[IPNetwork]) -> str:
    forwarded = [
        value
        for key, value in context.invocation_metadata() or ()
        if key == FORWARDED_FOR and isinstance(value, str)
    ]
    return login_source(context.peer() or "", forwarded, trusted_proxies)


class IdentityServiceServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self,
        directory: Directory,
        tokens: TokenService,
        consents: ConsentRpcs,
        patients: PatientDirectory,
        *,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self._directory = directory
        self._tokens = tokens
        self._consents = consents
        self._patients = patients
        self._trusted_proxies = tuple(trusted_proxies)

    async def CreateOrganization(
        self, request: identity_pb2.CreateOrganizationRequest, context: Context
    ) -> identity_pb2.CreateOrganizationResponse:
        created = await self._directory.create_organization(
            authenticated_principal(), request.organization_id, request.display_name
        )
        return identity_pb2.CreateOrganizationResponse(organization=_organization(created))

    async def GetOrganization(
        self, request: identity_pb2.GetOrganizationRequest, context: Context
    ) -> identity_pb2.GetOrganizationResponse:
        found = await self._directory.get_organization(
            authenticated_principal(), request.organization_id
        )
        return identity_pb2.GetOrganizationResponse(organization=_organization(found))

    async def ListOrganizations(
        self, request: identity_pb2.ListOrganizationsRequest, context: Context
    ) -> identity_pb2.ListOrganizationsResponse:
        found = await self._directory.list_organizations(
            authenticated_principal(), request.page_size, request.page_token
        )
        return identity_pb2.ListOrganizationsResponse(
            organizations=[_organization(o) for o in found.items],
            next_page_token=found.next_page_token,
        )

    async def RegisterClient(
        self, request: identity_pb2.RegisterClientRequest, context: Context
    ) -> identity_pb2.RegisterClientResponse:
        try:
            purposes = purpose_codes(request.allowed_purposes)
        except ValueError as exc:
            raise InvalidArgument([FieldViolation("allowed_purposes", str(exc))]) from None
        client = await self._directory.register_client(
            authenticated_principal(),
            NewClient(
                client_id=request.client_id,
                organization=request.organization,
                jwks_json=request.jwks_json,
                allowed_scopes=list(request.allowed_scopes),
                allowed_purposes=purposes,
                display_name=request.display_name,
            ),
        )
        return identity_pb2.RegisterClientResponse(client=_client(client))

    async def GetClient(
        self, request: identity_pb2.GetClientRequest, context: Context
    ) -> identity_pb2.GetClientResponse:
        found = await self._directory.get_client(authenticated_principal(), request.client_id)
        return identity_pb2.GetClientResponse(client=_client(found))

    async def ListClients(
        self, request: identity_pb2.ListClientsRequest, context: Context
    ) -> identity_pb2.ListClientsResponse:
        found = await self._directory.list_clients(
            authenticated_principal(), request.organization, request.page_size, request.page_token
        )
        return identity_pb2.ListClientsResponse(
            clients=[_client(c) for c in found.items], next_page_token=found.next_page_token
        )

    async def DisableClient(
        self, request: identity_pb2.DisableClientRequest, context: Context
    ) -> identity_pb2.DisableClientResponse:
        disabled = await self._directory.disable_client(
            authenticated_principal(), request.client_id
        )
        return identity_pb2.DisableClientResponse(client=_client(disabled))

    async def CreateUser(
        self, request: identity_pb2.CreateUserRequest, context: Context
    ) -> identity_pb2.CreateUserResponse:
        created = await self._directory.create_user(
            authenticated_principal(),
            NewUser(
                username=request.username,
                password=request.password,
                kind=KIND_BY_ENUM.get(request.kind, ""),
                organization=request.organization,
                patient_id=request.patient_id,
                enroll_totp=request.enroll_totp,
            ),
        )
        return identity_pb2.CreateUserResponse(
            user=_user(created.user), totp_provisioning_uri=created.totp_provisioning_uri
        )

    async def GetUser(
        self, request: identity_pb2.GetUserRequest, context: Context
    ) -> identity_pb2.GetUserResponse:
        found = await self._directory.get_user(authenticated_principal(), request.user_id)
        return identity_pb2.GetUserResponse(user=_user(found))

    async def ListUsers(
        self, request: identity_pb2.ListUsersRequest, context: Context
    ) -> identity_pb2.ListUsersResponse:
        found = await self._directory.list_users(
            authenticated_principal(), request.organization, request.page_size, request.page_token
        )
        return identity_pb2.ListUsersResponse(
            users=[_user(u) for u in found.items], next_page_token=found.next_page_token
        )

    async def DisableUser(
        self, request: identity_pb2.DisableUserRequest, context: Context
    ) -> identity_pb2.DisableUserResponse:
        user = await self._directory.disable_user(authenticated_principal(), request.user_id)
        return identity_pb2.DisableUserResponse(user=_user(user))

    async def EnableUser(
        self, request: identity_pb2.EnableUserRequest, context: Context
    ) -> identity_pb2.EnableUserResponse:
        user = await self._directory.enable_user(authenticated_principal(), request.user_id)
        return identity_pb2.EnableUserResponse(user=_user(user))

    async def ResetUserPassword(
        self, request: identity_pb2.ResetUserPasswordRequest, context: Context
    ) -> identity_pb2.ResetUserPasswordResponse:
        user = await self._directory.reset_user_password(
            authenticated_principal(), request.user_id, request.password
        )
        return identity_pb2.ResetUserPasswordResponse(user=_user(user))

    async def ResetUserTotp(
        self, request: identity_pb2.ResetUserTotpRequest, context: Context
    ) -> identity_pb2.ResetUserTotpResponse:
        reset = await self._directory.reset_user_totp(authenticated_principal(), request.user_id)
        return identity_pb2.ResetUserTotpResponse(
            user=_user(reset.user), totp_provisioning_uri=reset.totp_provisioning_uri
        )

    async def IssueToken(
        self, request: identity_pb2.IssueTokenRequest, context: Context
    ) -> identity_pb2.IssueTokenResponse:
        grant = request.WhichOneof("grant")
        if grant == "client_credentials":
            cc = request.client_credentials
            issued = await self._tokens.client_credentials(
                cc.client_assertion_type, cc.client_assertion, cc.scope, cc.audience
            )
        elif grant == "password":
            pw = request.password
            issued = await self._tokens.password(
                pw.username,
                pw.password,
                pw.totp_code,
                pw.scope,
                source=_source(context, self._trusted_proxies),
            )
        else:
            raise InvalidArgument(
                [FieldViolation("grant", "client_credentials or password is required")]
            )
        return _token(issued)

    async def GetJwks(
        self, request: identity_pb2.GetJwksRequest, context: Context
    ) -> identity_pb2.GetJwksResponse:
        return identity_pb2.GetJwksResponse(jwks_json=await self._tokens.jwks())

    async def RotateSigningKey(
        self, request: identity_pb2.RotateSigningKeyRequest, context: Context
    ) -> identity_pb2.RotateSigningKeyResponse:
        kid = await self._tokens.rotate_signing_key(authenticated_principal())
        return identity_pb2.RotateSigningKeyResponse(kid=kid)

    # -- the record service's patients ---------------------------------------------------

    async def RegisterPatientHolder(
        self, request: identity_pb2.RegisterPatientHolderRequest, context: Context
    ) -> identity_pb2.RegisterPatientHolderResponse:
        registered = await self._patients.register_holder(
            authenticated_principal(),
            request.patient_id,
            request.organization,
            request.scan_secret,
        )
        holder = registered.holder
        return identity_pb2.RegisterPatientHolderResponse(
            patient_holder=identity_pb2.PatientHolder(
                patient_id=holder.patient_id,
                organization=holder.organization,
                register_time=_timestamp(holder.register_time),
            ),
            created=registered.created,
        )

    async def ErasePatientData(
        self, request: identity_pb2.ErasePatientDataRequest, context: Context
    ) -> identity_pb2.ErasePatientDataResponse:
        erased = await self._patients.erase(authenticated_principal(), request.patient_id)
        return identity_pb2.ErasePatientDataResponse(
            consents_deleted=erased.consents_deleted,
            ledger_index_rows_destroyed=erased.ledger_index_rows_destroyed,
            break_glass_accesses_unlinked=erased.break_glass_accesses_unlinked,
            holder_registrations_deleted=erased.holder_registrations_deleted,
        )

    # -- consent and CheckAccess: the consent servicer's --------------------------------

    async def GrantConsent(
        self, request: identity_pb2.GrantConsentRequest, context: Context
    ) -> identity_pb2.GrantConsentResponse:
        return await self._consents.GrantConsent(request, context)

    async def RevokeConsent(
        self, request: identity_pb2.RevokeConsentRequest, context: Context
    ) -> identity_pb2.RevokeConsentResponse:
        return await self._consents.RevokeConsent(request, context)

    async def GetConsent(
        self, request: identity_pb2.GetConsentRequest, context: Context
    ) -> identity_pb2.GetConsentResponse:
        return await self._consents.GetConsent(request, context)

    async def ListConsents(
        self, request: identity_pb2.ListConsentsRequest, context: Context
    ) -> identity_pb2.ListConsentsResponse:
        return await self._consents.ListConsents(request, context)

    async def CheckAccess(
        self, request: identity_pb2.CheckAccessRequest, context: Context
    ) -> identity_pb2.CheckAccessResponse:
        return await self._consents.CheckAccess(request, context)

    async def ListBreakGlassAccesses(
        self, request: identity_pb2.ListBreakGlassAccessesRequest, context: Context
    ) -> identity_pb2.ListBreakGlassAccessesResponse:
        return await self._consents.ListBreakGlassAccesses(request, context)
