"""The consent, CheckAccess and break-glass audit RPCs of IdentityService, as the servicer
delegates them (same names and signatures): messages to domain calls and back, nothing else.

The consent workflow is :class:`~medledger.identity.domain.consent_registry.ConsentRegistry`,
the access decision :class:`~medledger.identity.domain.access.AccessControl`; the caller is
the principal the auth interceptor verified (UNAUTHENTICATED without one).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.interceptors import authenticated_principal
from medledger.common.metric_catalog import ACCESS_DECISIONS
from medledger.common.metrics import counter
from medledger.common.timestamps import timestamp_to_datetime
from medledger.identity.domain.access import (
    AccessControl,
    AccessRequest,
    Action,
    Actor,
    BreakGlassRecord,
    Decision,
    validate_access_request,
)
from medledger.identity.domain.consent import (
    Consent,
    ConsentStatus,
    Grantee,
    GranteeKind,
    GrantorRole,
    Purpose,
)
from medledger.identity.domain.consent_registry import (
    ConsentRegistry,
    GrantRequest,
    ListRequest,
)
from medledger.identity.domain.ports import Receipt
from medledger.identity.domain.purposes import CODE_BY_PURPOSE, PURPOSE_BY_CODE
from medledger.identity.fhir_consent import consent_json

Context = grpc.aio.ServicerContext[Any, Any]
_decisions = counter(ACCESS_DECISIONS)

ACTIONS: Final[Mapping[int, Action]] = MappingProxyType(
    {
        identity_pb2.ACTION_READ: Action.READ,
        identity_pb2.ACTION_WRITE: Action.WRITE,
        identity_pb2.ACTION_DELETE: Action.DELETE,
        identity_pb2.ACTION_EXPORT: Action.EXPORT,
        identity_pb2.ACTION_SEARCH: Action.SEARCH,
    }
)
STATUSES: Final[Mapping[ConsentStatus, identity_pb2.ConsentStatus.ValueType]] = MappingProxyType(
    {
        ConsentStatus.ACTIVE: identity_pb2.CONSENT_STATUS_ACTIVE,
        ConsentStatus.REVOKED: identity_pb2.CONSENT_STATUS_REVOKED,
        ConsentStatus.EXPIRED: identity_pb2.CONSENT_STATUS_EXPIRED,
    }
)
STATUS_BY_ENUM: Final[Mapping[int, ConsentStatus]] = MappingProxyType(
    {value: status for status, value in STATUSES.items()}
)
GRANTOR_ROLES: Final[Mapping[GrantorRole, identity_pb2.GrantorRole.ValueType]] = MappingProxyType(
    {
        GrantorRole.PATIENT: identity_pb2.GRANTOR_ROLE_PATIENT,
        GrantorRole.RECORD_HOLDER: identity_pb2.GRANTOR_ROLE_RECORD_HOLDER,
    }
)
ACTION_VALUES: Final[Mapping[Action, identity_pb2.Action.ValueType]] = MappingProxyType(
    {action: identity_pb2.Action.ValueType(value) for value, action in ACTIONS.items()}
)
DECISIONS: Final[Mapping[Decision, identity_pb2.Decision.ValueType]] = MappingProxyType(
    {
        Decision.PERMIT: identity_pb2.DECISION_PERMIT,
        Decision.DENY: identity_pb2.DECISION_DENY,
    }
)


# --- messages -> domain ---------------------------------------------------------------------


def _caller() -> Actor:
    principal = authenticated_principal()
    return Actor(
        principal.subject,
        principal.organization,
        principal.client_id,
        principal.scopes,
        principal.purposes,
    )


def _purpose(value: int) -> Purpose | None:
    code = CODE_BY_PURPOSE.get(value, "")
    return Purpose(code) if code in Purpose.__members__ else None


def _grantee(message: identity_pb2.Grantee) -> Grantee | None:
    kind = message.WhichOneof("kind")
    if kind == "organization":
        return Grantee(GranteeKind.ORGANIZATION, message.organization)
    if kind == "client_id":
        return Grantee(GranteeKind.CLIENT, message.client_id)
    if kind == "user_id":
        return Grantee(GranteeKind.USER, message.user_id)
    return None


def _optional_time(request: Any, field: str) -> datetime | None:
    if not request.HasField(field):
        return None
    return timestamp_to_datetime(getattr(request, field), field=field)


def grant_request(request: identity_pb2.GrantConsentRequest) -> GrantRequest:
    return GrantRequest(
        patient_id=request.patient_id,
        grantee=_grantee(request.grantee) if request.HasField("grantee") else None,
        resource_types=list(request.resource_types),
        categories=list(request.categories),
        purposes=[_purpose(p) for p in request.purposes],
        period_start=_optional_time(request, "period_start"),
        period_end=_optional_time(request, "period_end"),
        granted_by=request.granted_by,
        proxy_relationship=request.proxy_relationship,
        idempotency_key=request.idempotency_key,
    )


def list_request(request: identity_pb2.ListConsentsRequest) -> ListRequest:
    grantee = None
    if request.HasField("grantee"):
        grantee = _grantee(request.grantee)
        if grantee is None:
            raise InvalidArgument(
                [FieldViolation("grantee", "organization, client_id or user_id is required")]
            )
    status = STATUS_BY_ENUM.get(request.status)
    if status is None and request.status != identity_pb2.CONSENT_STATUS_UNSPECIFIED:
        raise InvalidArgument([FieldViolation("status", "must be a known consent status")])
    return ListRequest(
        patient_id=request.patient_id,
        grantee=grantee,
        status=status,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def access_request(request: identity_pb2.CheckAccessRequest) -> AccessRequest:
    """The domain request, or InvalidArgument naming the enums that are not known (the
    domain names every other bad field)."""
    problems: list[FieldViolation] = []
    action = ACTIONS.get(request.action)
    if action is None:
        problems.append(FieldViolation("action", "must be a known action"))
    purpose = _purpose(request.purpose)
    if purpose is None:
        problems.append(FieldViolation("purpose", "must be a known purpose of use"))
    purposes = [_purpose(p) for p in request.purposes]
    if None in purposes:
        problems.append(FieldViolation("purposes", "must be known purposes of use"))
    access = AccessRequest(
        actor=Actor(
            request.principal_id,
            request.organization,
            request.client_id,
            frozenset(request.scopes),
            frozenset(p.value for p in purposes if p is not None),
        ),
        patient_id=request.patient_id,
        resource_type=request.resource_type,
        action=action or Action.READ,
        purpose=purpose or Purpose.ETREAT,  # placeholder: already reported
        patient_organization=request.patient_organization,
        break_glass_reason=request.break_glass_reason,
    )
    if problems:
        try:
            validate_access_request(access)
        except InvalidArgument as error:
            problems.extend(error.violations)
        raise InvalidArgument(problems)
    return access


# --- domain -> messages ---------------------------------------------------------------------


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _grantee_message(grantee: Grantee) -> identity_pb2.Grantee:
    if grantee.kind is GranteeKind.ORGANIZATION:
        return identity_pb2.Grantee(organization=grantee.id)
    if grantee.kind is GranteeKind.CLIENT:
        return identity_pb2.Grantee(client_id=grantee.id)
    return identity_pb2.Grantee(user_id=grantee.id)


def consent_message(consent: Consent, now: datetime) -> identity_pb2.Consent:
    """The API form of ``consent``, its status as at ``now``, with its FHIR export."""
    terms = consent.terms
    message = identity_pb2.Consent(
        consent_id=consent.consent_id,
        patient_id=terms.patient_id,
        grantee=_grantee_message(terms.grantee),
        resource_types=terms.resource_types,
        categories=terms.categories,
        purposes=[
            purpose_pb2.PurposeOfUse.ValueType(PURPOSE_BY_CODE[p.value]) for p in terms.purposes
        ],
        period_start=_timestamp(terms.period_start),
        granted_by=terms.granted_by,
        proxy_relationship=terms.proxy_relationship,
        grantor_role=GRANTOR_ROLES[terms.grantor_role],
        status=STATUSES[consent.status(now)],
        create_time=_timestamp(consent.create_time),
        fhir_json=consent_json(consent, now),
    )
    if terms.period_end is not None:
        message.period_end.CopyFrom(_timestamp(terms.period_end))
    if consent.revoke_time is not None:
        message.revoke_time.CopyFrom(_timestamp(consent.revoke_time))
    return message


def _receipt(data: Receipt) -> ledger_pb2.Receipt:
    return ledger_pb2.Receipt.FromString(data)


def break_glass_message(record: BreakGlassRecord) -> identity_pb2.BreakGlassAccess:
    """What the BREAK_GLASS entry records, opened: never the reason nor the patient."""
    return identity_pb2.BreakGlassAccess(
        access_id=record.record_id,
        time=_timestamp(record.time),
        principal_id=record.principal_id,
        organization=record.organization,
        client_id=record.client_id,
        resource_type=record.resource_type,
        action=ACTION_VALUES[record.action],
        ledgered=record.leaf_index is not None,
        leaf_index=record.leaf_index or 0,
    )


# --- the RPCs -------------------------------------------------------------------------------


class ConsentRpcs:
    def __init__(self, registry: ConsentRegistry, access: AccessControl) -> None:
        self._registry = registry
        self._access = access

    async def GrantConsent(
        self, request: identity_pb2.GrantConsentRequest, context: Context | None
    ) -> identity_pb2.GrantConsentResponse:
        granted = await self._registry.grant(_caller(), grant_request(request))
        return identity_pb2.GrantConsentResponse(
            consent=consent_message(granted.consent, self._registry.now()),
            receipt=_receipt(granted.receipt),
        )

    async def RevokeConsent(
        self, request: identity_pb2.RevokeConsentRequest, context: Context | None
    ) -> identity_pb2.RevokeConsentResponse:
        revoked = await self._registry.revoke(_caller(), request.consent_id)
        return identity_pb2.RevokeConsentResponse(
            consent=consent_message(revoked.consent, self._registry.now()),
            receipt=_receipt(revoked.receipt),
        )

    async def GetConsent(
        self, request: identity_pb2.GetConsentRequest, context: Context | None
    ) -> identity_pb2.GetConsentResponse:
        consent = await self._registry.get(_caller(), request.consent_id)
        return identity_pb2.GetConsentResponse(
            consent=consent_message(consent, self._registry.now())
        )

    async def ListConsents(
        self, request: identity_pb2.ListConsentsRequest, context: Context | None
    ) -> identity_pb2.ListConsentsResponse:
        found = await self._registry.list_consents(_caller(), list_request(request))
        now = self._registry.now()
        return identity_pb2.ListConsentsResponse(
            consents=[consent_message(c, now) for c in found.items],
            next_page_token=found.next_page_token,
        )

    async def CheckAccess(
        self, request: identity_pb2.CheckAccessRequest, context: Context | None
    ) -> identity_pb2.CheckAccessResponse:
        decision = await self._access.check_for(_caller(), access_request(request))
        _decisions.add(1, {"decision": decision.decision.value, "reason": decision.reason.value})
        return identity_pb2.CheckAccessResponse(
            decision=DECISIONS[decision.decision],
            reason=decision.reason.value,
            consent_id=decision.consent_id,
            break_glass=decision.break_glass,
        )

    async def ListBreakGlassAccesses(
        self, request: identity_pb2.ListBreakGlassAccessesRequest, context: Context | None
    ) -> identity_pb2.ListBreakGlassAccessesResponse:
        found = await self._registry.list_break_glass(
            _caller(),
            patient_id=request.patient_id,
            organization=request.organization,
            requested_size=request.page_size,
            page_token=request.page_token,
        )
        return identity_pb2.ListBreakGlassAccessesResponse(
            break_glass_accesses=[break_glass_message(r) for r in found.items],
            next_page_token=found.next_page_token,
        )
