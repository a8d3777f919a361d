"""identity's CheckAccess, as the record service asks it (the ``AccessChecks`` port).

The record service holds ``medledger/check-access``: identity then takes its word for the
organisation holding the patient's record (``patient_organization``) and for the caller's
claims, which the record service has verified. The only errors a caller sees from here are a
missing break-glass reason (INVALID_ARGUMENT naming ``break_glass_reason``), a request
identity cannot decide (PERMISSION_DENIED) and, for everything that keeps identity from
answering (down, or refusing this service's own credentials), UNAVAILABLE: fail closed.
"""

from __future__ import annotations

from typing import Final

import grpc

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import (
    InvalidArgument,
    MedledgerError,
    PermissionDenied,
    Unavailable,
    from_rpc_error,
)
from medledger.common.ledger_client import TokenSource
from medledger.record.domain.peers import AccessQuery, AccessVerdict, Action

DEPENDENCY: Final = "identity"
_ACTIONS: Final = {
    Action.READ: identity_pb2.ACTION_READ,
    Action.WRITE: identity_pb2.ACTION_WRITE,
    Action.SEARCH: identity_pb2.ACTION_SEARCH,
    Action.EXPORT: identity_pb2.ACTION_EXPORT,
    Action.DELETE: identity_pb2.ACTION_DELETE,
}
_PURPOSE_PREFIX: Final = "PURPOSE_OF_USE_"


def _purposes(codes: frozenset[str]) -> list[purpose_pb2.PurposeOfUse.ValueType]:
    """The token's purpose codes (``TREAT``) as PurposeOfUse values; unknown ones dropped."""
    known = purpose_pb2.PurposeOfUse.keys()
    return sorted(
        purpose_pb2.PurposeOfUse.Value(_PURPOSE_PREFIX + code)
        for code in codes
        if _PURPOSE_PREFIX + code in known and code != "UNSPECIFIED"
    )


class _IdentityPeer:
    """A channel to identity, called with this service's own token."""

    def __init__(
        self,
        address: str,
        settings: ServiceSettings,
        token: TokenSource,
        *,
        timeout: float = 5.0,
    ) -> None:
        self._channel = create_channel(address, settings)
        self._stub: identity_pb2_grpc.IdentityServiceAsyncStub = (
            identity_pb2_grpc.IdentityServiceStub(self._channel)
        )
        self._token = token
        self._timeout = timeout

    async def aclose(self) -> None:
        await self._channel.close(None)


class IdentityAccessChecks(_IdentityPeer):
    async def check(self, query: AccessQuery) -> AccessVerdict:
        who = query.requester.principal
        request = identity_pb2.CheckAccessRequest(
            principal_id=who.subject,
            organization=who.organization,
            scopes=sorted(who.scopes),
            client_id=who.client_id,
            patient_id=query.patient_id,
            resource_type=query.resource_type,
            action=_ACTIONS[query.action],
            purpose=query.requester.purpose,
            break_glass_reason=query.requester.break_glass_reason,
            patient_organization=query.holder,
            purposes=_purposes(who.purposes),
        )
        try:
            token = await self._token()
            reply = await self._stub.CheckAccess(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _refusal(error) from error
        except Unavailable:
            raise
        except MedledgerError as error:  # this service's own credentials refused
            raise Unavailable(DEPENDENCY, reason="ACCESS_CHECK_FAILED") from error
        return AccessVerdict(
            permitted=reply.decision == identity_pb2.DECISION_PERMIT,
            reason=reply.reason or "DENIED",
            break_glass=reply.break_glass,
        )


def _refusal(error: grpc.aio.AioRpcError) -> MedledgerError:
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(DEPENDENCY)
    decoded = from_rpc_error(error)
    if isinstance(decoded, InvalidArgument):
        reason_asked = [v for v in decoded.violations if v.field == "break_glass_reason"]
        if reason_asked:
            return InvalidArgument(reason_asked, reason=decoded.reason)
        # The caller's claims are not what identity accepts: nothing can permit them.
        return PermissionDenied(
            "the access check refused the caller's claims", reason="ACCESS_CHECK_REFUSED"
        )
    return Unavailable(DEPENDENCY, reason="ACCESS_CHECK_FAILED")


class IdentityPatientDirectory(_IdentityPeer):
    """identity's RegisterPatientHolder and ErasePatientData (the ``PatientDirectory``
    port), with this service's token (``medledger/patient-directory``). Anything but an
    answer is UNAVAILABLE: a Patient is not created, nor an erasure finished, without
    identity knowing."""

    async def _metadata(self) -> list[tuple[str, str]]:
        try:
            return [("authorization", f"Bearer {await self._token()}")]
        except Unavailable:
            raise
        except MedledgerError as error:
            raise Unavailable(DEPENDENCY, reason="PATIENT_DIRECTORY_FAILED") from error

    async def register_holder(
        self, patient_id: str, organization: str, scan_secret: bytes = b""
    ) -> None:
        request = identity_pb2.RegisterPatientHolderRequest(
            patient_id=patient_id, organization=organization, scan_secret=scan_secret
        )
        try:
            await self._stub.RegisterPatientHolder(
                request, metadata=await self._metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _directory_failure(error) from error

    async def erase_patient(self, patient_id: str) -> None:
        request = identity_pb2.ErasePatientDataRequest(patient_id=patient_id)
        try:
            await self._stub.ErasePatientData(
                request, metadata=await self._metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _directory_failure(error) from error


def _directory_failure(error: grpc.aio.AioRpcError) -> MedledgerError:
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(DEPENDENCY)
    decoded = from_rpc_error(error)
    if decoded.reason == "HOLDER_CONFLICT":
        return decoded  # FAILED_PRECONDITION: another organisation holds this patient
    return Unavailable(DEPENDENCY, reason="PATIENT_DIRECTORY_FAILED")
