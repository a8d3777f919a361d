"""Consent and access-decision RPCs of IdentityService, for the servicer to delegate to.

Build one at start-up and delegate the five RPCs as they are (same names and signatures)::

    store = ConsentStore(mongo, mongo_settings.mongodb_database)
    consent_rpcs = ConsentRpcs(
        store=store,
        ledger=ledger_client,              # medledger.common.ledger_client.LedgerClient
        subjects=SubjectHasher(vault),     # medledger.common.subject.SubjectHasher
        patient_organization_of=...,       # async (patient_id) -> organization id | None:
                                           #   the organisation of the patient's user account
        patient_of_user=...,               # async (user_id) -> Patient id | None:
                                           #   set for PATIENT users only
    )
    # add store.ensure_indexes to the ServiceRuntime's startup list

    async def GrantConsent(self, request, context):
        return await self._consent_rpcs.GrantConsent(request, context)
    # ... and RevokeConsent, GetConsent, ListConsents, CheckAccess likewise.

Who may call (when the auth interceptor has attached a principal; without one, as in tests
with auth off, every call is answered):

- GrantConsent / RevokeConsent: the patient (a scope covering ``Consent`` for create and
  update, e.g. ``patient/Consent.cu``), or a principal of the patient's organisation with such
  a ``user/`` or ``system/`` scope, who also records proxies' consents (``granted_by`` the
  proxy, ``proxy_relationship`` its HL7 v3 RoleCode).
- GetConsent / ListConsents: the same, with ``Consent`` read (search for lists), or the
  grantee of the consents read.
- CheckAccess: a principal asking about itself (same id, organisation and client, scopes a
  subset of its token's), or a service holding :data:`CHECK_ACCESS_SCOPE` (record, inference).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from medledger.common.interceptors import Principal, current_principal
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.subject import SubjectHasher
from medledger.identity.adapters.consent_store import ConsentQuery, ConsentStore, StoredConsent
from medledger.identity.domain.access import (
    AccessControl,
    AccessDecision,
    AccessFacts,
    AccessRequest,
    Action,
    Actor,
    BreakGlassRecord,
    Clock,
    Decision,
    Lookup,
    Reason,
    consent_management,
    grantee_may_read,
    scopes_grant,
    validate_access_request,
)
from medledger.identity.domain.consent import (
    FHIR_ID,
    Consent,
    ConsentStatus,
    Grantee,
    GranteeKind,
    Purpose,
    check_grantee,
    new_object_id,
    to_millis,
    utc_now,
    validate_terms,
)
from medledger.identity.domain.purposes import CODE_BY_PURPOSE, PURPOSE_BY_CODE
from medledger.identity.domain.scopes import CHECK_ACCESS
from medledger.identity.fhir_consent import consent_json

Context = grpc.aio.ServicerContext[Any, Any]
# The scope a service needs to ask CheckAccess about principals other than itself.
CHECK_ACCESS_SCOPE = CHECK_ACCESS
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
BREAK_GLASS_LEDGER_TIMEOUT = 5.0

_ACTIONS = {
    identity_pb2.ACTION_READ: Action.READ,
    identity_pb2.ACTION_WRITE: Action.WRITE,
    identity_pb2.ACTION_DELETE: Action.DELETE,
    identity_pb2.ACTION_EXPORT: Action.EXPORT,
    identity_pb2.ACTION_SEARCH: Action.SEARCH,
}
_STATUSES = {
    ConsentStatus.ACTIVE: identity_pb2.CONSENT_STATUS_ACTIVE,
    ConsentStatus.REVOKED: identity_pb2.CONSENT_STATUS_REVOKED,
    ConsentStatus.EXPIRED: identity_pb2.CONSENT_STATUS_EXPIRED,
}
_DECISIONS = {
    Decision.PERMIT: identity_pb2.DECISION_PERMIT,
    Decision.DENY: identity_pb2.DECISION_DENY,
}


# --- messages <-> domain ----------------------------------------------------------------------


def _purpose(value: int) -> Purpose | None:
    code = CODE_BY_PURPOSE.get(value, "")
    return Purpose(code) if code in Purpose.__members__ else None


def _purpose_message(purpose: Purpose) -> purpose_pb2.PurposeOfUse.ValueType:
    return purpose_pb2.PurposeOfUse.ValueType(PURPOSE_BY_CODE[purpose.value])


def _grantee(message: identity_pb2.Grantee) -> Grantee | None:
    kind = message.WhichOneof("kind")
    if kind == "organization":
        return Grantee(GranteeKind.ORGANIZATION, message.organization)
    if kind == "client_id":
        return Grantee(GranteeKind.CLIENT, message.client_id)
    if kind == "user_id":
        return Grantee(GranteeKind.USER, message.user_id)
    return None


def _grantee_message(grantee: Grantee) -> identity_pb2.Grantee:
    if grantee.kind is GranteeKind.ORGANIZATION:
        return identity_pb2.Grantee(organization=grantee.id)
    if grantee.kind is GranteeKind.CLIENT:
        return identity_pb2.Grantee(client_id=grantee.id)
    return identity_pb2.Grantee(user_id=grantee.id)


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def consent_message(consent: Consent, now: datetime) -> identity_pb2.Consent:
    """The API form of ``consent``, its status as at ``now``, with its FHIR export."""
    terms = consent.terms
    message = identity_pb2.Consent(
        consent_id=consent.consent_id,
        patient_id=terms.patient_id,
        grantee=_grantee_message(terms.grantee),
        resource_types=terms.resource_types,
        categories=terms.categories,
        purposes=[_purpose_message(p) for p in terms.purposes],
        period_start=_timestamp(terms.period_start),
        granted_by=terms.granted_by,
        proxy_relationship=terms.proxy_relationship,
        status=_STATUSES[consent.status(now)],
        create_time=_timestamp(consent.create_time),
        fhir_json=consent_json(consent, now),
    )
    if terms.period_end is not None:
        message.period_end.CopyFrom(_timestamp(terms.period_end))
    if consent.revoke_time is not None:
        message.revoke_time.CopyFrom(_timestamp(consent.revoke_time))
    return message


def _receipt(data: bytes | None) -> ledger_pb2.Receipt | None:
    if data is None:
        return None
    receipt = ledger_pb2.Receipt()
    receipt.ParseFromString(data)
    return receipt


def _actor(principal: Principal | None) -> Actor | None:
    if principal is None:
        return None
    return Actor(principal.subject, principal.organization, principal.client_id, principal.scopes)


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filters_tag(*filters: str) -> str:
    """Ties a page token to the filters it was issued for (AIP-158)."""
    return hashlib.sha256("\x00".join(filters).encode()).hexdigest()[:12]


def _page_token(after: str | None, tag: str) -> str:
    if after is None:
        return ""
    return base64.urlsafe_b64encode(f"v1:{tag}:{after}".encode()).decode()


def _page_after(token: str, tag: str) -> str:
    if not token:
        return ""
    try:
        version, token_tag, after = base64.urlsafe_b64decode(token.encode()).decode().split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        version, token_tag, after = "", "", ""
    if version != "v1" or not FHIR_ID.fullmatch(after):
        raise InvalidArgument([FieldViolation("page_token", "is not a token this service issued")])
    if token_tag != tag:
        raise InvalidArgument(
            [FieldViolation("page_token", "was issued for other filters than these")]
        )
    return after


def _check_consent_id(consent_id: str) -> None:
    if not FHIR_ID.fullmatch(consent_id):
        raise InvalidArgument([FieldViolation("consent_id", f"must match {FHIR_ID.pattern}")])


# --- ledger events ----------------------------------------------------------------------------


class LedgerEvents:
    """The ledger entries consents and break-glass leave: ids, the patient's pseudonym and
    salted commitments only."""

    def __init__(self, ledger: LedgerClient, subjects: SubjectHasher) -> None:
        self._ledger = ledger
        self._subjects = subjects

    async def consent_granted(
        self, consent: Consent, organization: str, commitment: bytes
    ) -> ledger_pb2.Receipt:
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_CONSENT_GRANTED,
            actor=consent.recorded_by,
            organization=organization,
            subject=await self._subjects.subject(consent.terms.patient_id),
            resource_type="Consent",
            resource_id=consent.consent_id,
            resource_version=1,
            content_commitment=commitment,
            purpose=purpose_pb2.PURPOSE_OF_USE_PATRQT,
        )
        return await self._ledger.append(
            event, idempotency_key=f"identity.consent.{consent.consent_id}.granted"
        )

    async def consent_revoked(
        self, consent: Consent, actor: str, organization: str
    ) -> ledger_pb2.Receipt:
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_CONSENT_REVOKED,
            actor=actor,
            organization=organization,
            subject=await self._subjects.subject(consent.terms.patient_id),
            resource_type="Consent",
            resource_id=consent.consent_id,
            resource_version=2,
            purpose=purpose_pb2.PURPOSE_OF_USE_PATRQT,
        )
        return await self._ledger.append(
            event, idempotency_key=f"identity.consent.{consent.consent_id}.revoked"
        )

    async def break_glass(self, record: BreakGlassRecord) -> int:
        # The resource id is the audit record's, so auditors can join the two; the reason
        # is in the entry only as a salted commitment.
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_BREAK_GLASS,
            actor=record.principal_id,
            organization=record.organization,
            subject=await self._subjects.subject(record.patient_id),
            resource_type=record.resource_type,
            resource_id=record.record_id,
            content_commitment=record.commitment(),
            purpose=purpose_pb2.PURPOSE_OF_USE_ETREAT,
        )
        receipt = await self._ledger.append(
            event,
            idempotency_key=f"identity.break-glass.{record.record_id}",
            timeout=BREAK_GLASS_LEDGER_TIMEOUT,
        )
        return int(receipt.leaf_index)


# --- the RPCs ---------------------------------------------------------------------------------


class ConsentRpcs:
    def __init__(
        self,
        *,
        store: ConsentStore,
        ledger: LedgerClient,
        subjects: SubjectHasher,
        patient_organization_of: Lookup,
        patient_of_user: Lookup,
        clock: Clock = utc_now,
        check_access_scope: str = CHECK_ACCESS_SCOPE,
    ) -> None:
        self._store = store
        self._events = LedgerEvents(ledger, subjects)
        self._clock = clock
        self._check_access_scope = check_access_scope
        self._access = AccessControl(
            store, store, self._events, patient_organization_of, patient_of_user, clock
        )

    def _now(self) -> datetime:
        return to_millis(self._clock())

    async def _facts(self, actor: Actor | None, patient_id: str) -> AccessFacts:
        return await self._access.facts(actor, patient_id, "")

    async def _authorize_change(
        self, actor: Actor | None, patient_id: str, facts: AccessFacts
    ) -> AccessDecision | None:
        """Raises PermissionDenied unless ``actor`` may change the patient's consents."""
        if actor is None:
            return None
        decision = consent_management(actor, patient_id, facts, Action.WRITE)
        if not decision.permitted:
            raise PermissionDenied(
                "only the patient or their organisation may change their consents",
                reason=_refusal(decision),
            )
        return decision

    def _ledger_organization(self, actor: Actor | None, facts: AccessFacts) -> str:
        organization = actor.organization if actor is not None else facts.patient_organization
        if not organization:
            raise FailedPrecondition(
                "the patient's organization is unknown", reason="PATIENT_ORGANIZATION_UNKNOWN"
            )
        return organization

    # GrantConsent ----------------------------------------------------------------------------

    async def GrantConsent(
        self, request: identity_pb2.GrantConsentRequest, context: Context | None
    ) -> identity_pb2.GrantConsentResponse:
        now = self._now()
        actor = _actor(current_principal.get())
        terms = validate_terms(
            patient_id=request.patient_id,
            grantee=_grantee(request.grantee) if request.HasField("grantee") else None,
            resource_types=request.resource_types,
            categories=request.categories,
            purposes=[_purpose(p) for p in request.purposes],
            period_start=_datetime(request.period_start)
            if request.HasField("period_start")
            else None,
            period_end=_datetime(request.period_end) if request.HasField("period_end") else None,
            granted_by=request.granted_by or (actor.subject if actor is not None else ""),
            proxy_relationship=request.proxy_relationship,
            idempotency_key=request.idempotency_key,
            now=now,
        )
        facts = await self._facts(actor, terms.patient_id)
        decision = await self._authorize_change(actor, terms.patient_id, facts)
        if decision is not None and decision.reason is Reason.PATIENT_SELF:
            assert actor is not None
            if terms.granted_by != actor.subject or terms.proxy_relationship:
                raise PermissionDenied(
                    "a patient grants in their own name; proxies are recorded by their "
                    "organisation",
                    reason="GRANTOR_MISMATCH",
                )
        organization = self._ledger_organization(actor, facts)
        recorded_by = actor.subject if actor is not None else terms.granted_by
        fingerprint = identity_pb2.GrantConsentRequest()
        fingerprint.CopyFrom(request)
        fingerprint.ClearField("idempotency_key")
        digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).hexdigest()
        idempotency = ""
        if request.idempotency_key:
            # Keys are per caller: another caller's key never returns this caller's consent.
            idempotency = hashlib.sha256(
                f"{recorded_by}\x00{request.idempotency_key}".encode()
            ).hexdigest()
            existing = await self._store.find_idempotent(idempotency)
            if existing is not None:
                return await self._replay(existing, digest, organization)
        consent = Consent(new_object_id(now), terms, now, recorded_by)
        salt = os.urandom(32)
        existing = await self._store.insert_pending(
            consent, salt=salt, idempotency=idempotency, request_digest=digest
        )
        if existing is not None:
            return await self._replay(existing, digest, organization)
        try:
            receipt = await self._events.consent_granted(
                consent, organization, terms.commitment(salt)
            )
        except Exception:
            # Never a consent in force without its ledger entry.
            with contextlib.suppress(Exception):
                await self._store.discard_pending(consent.consent_id)
            raise
        await self._mark_granted(consent, receipt)
        return identity_pb2.GrantConsentResponse(
            consent=consent_message(consent, self._now()), receipt=receipt
        )

    async def _mark_granted(self, consent: Consent, receipt: ledger_pb2.Receipt) -> None:
        if not await self._store.mark_granted(consent.consent_id, receipt.SerializeToString()):
            raise Aborted(
                "a concurrent attempt with this idempotency key failed; retry",
                reason="CONCURRENT_GRANT",
            )

    async def _replay(
        self, existing: StoredConsent, digest: str, organization: str
    ) -> identity_pb2.GrantConsentResponse:
        """A retry: the first result, finishing its ledgering if it was interrupted."""
        if existing.request_digest != digest:
            raise FailedPrecondition(
                "idempotency_key was already used for another request",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        consent = existing.consent
        receipt = _receipt(existing.grant_receipt)
        if receipt is None:  # the ledger's own idempotency key makes this append safe
            commitment = consent.terms.commitment(existing.salt)
            receipt = await self._events.consent_granted(consent, organization, commitment)
            await self._mark_granted(consent, receipt)
        return identity_pb2.GrantConsentResponse(
            consent=consent_message(consent, self._now()), receipt=receipt
        )

    # RevokeConsent ---------------------------------------------------------------------------

    async def RevokeConsent(
        self, request: identity_pb2.RevokeConsentRequest, context: Context | None
    ) -> identity_pb2.RevokeConsentResponse:
        """Revokes at once, then ledgers: a ledger that does not answer never delays a
        revocation; the call then fails UNAVAILABLE and a retry ledgers it."""
        _check_consent_id(request.consent_id)
        actor = _actor(current_principal.get())
        stored = await self._store.get(request.consent_id)
        if stored is None:
            raise NotFound("no such consent", reason="CONSENT_NOT_FOUND")
        facts = await self._facts(actor, stored.consent.terms.patient_id)
        await self._authorize_change(actor, stored.consent.terms.patient_id, facts)
        organization = self._ledger_organization(actor, facts)
        revoked_by = actor.subject if actor is not None else stored.consent.recorded_by
        revoked = await self._store.revoke(request.consent_id, revoked_by, self._now())
        if revoked is None:
            raise NotFound("no such consent", reason="CONSENT_NOT_FOUND")
        receipt = _receipt(revoked.revoke_receipt)
        if receipt is None:
            consent = revoked.consent
            receipt = await self._events.consent_revoked(
                consent, consent.revoked_by or revoked_by, organization
            )
            await self._store.set_revoke_receipt(consent.consent_id, receipt.SerializeToString())
        return identity_pb2.RevokeConsentResponse(
            consent=consent_message(revoked.consent, self._now()), receipt=receipt
        )

    # GetConsent / ListConsents ---------------------------------------------------------------

    async def GetConsent(
        self, request: identity_pb2.GetConsentRequest, context: Context | None
    ) -> identity_pb2.GetConsentResponse:
        _check_consent_id(request.consent_id)
        actor = _actor(current_principal.get())
        stored = await self._store.get(request.consent_id)
        if stored is None:
            raise NotFound("no such consent", reason="CONSENT_NOT_FOUND")
        consent = stored.consent
        if actor is not None and not grantee_may_read(actor, consent, Action.READ):
            facts = await self._facts(actor, consent.terms.patient_id)
            decision = consent_management(actor, consent.terms.patient_id, facts, Action.READ)
            if not decision.permitted:
                raise PermissionDenied(
                    "only the patient, their organisation or the grantee may read a consent",
                    reason=_refusal(decision),
                )
        return identity_pb2.GetConsentResponse(consent=consent_message(consent, self._now()))

    async def ListConsents(
        self, request: identity_pb2.ListConsentsRequest, context: Context | None
    ) -> identity_pb2.ListConsentsResponse:
        problems: list[FieldViolation] = []
        if request.patient_id and not FHIR_ID.fullmatch(request.patient_id):
            problems.append(FieldViolation("patient_id", f"must match {FHIR_ID.pattern}"))
        grantee = _grantee(request.grantee) if request.HasField("grantee") else None
        if request.HasField("grantee"):
            check_grantee(problems, "grantee", grantee)
        status = {v: k for k, v in _STATUSES.items()}.get(request.status)
        if status is None and request.status != identity_pb2.CONSENT_STATUS_UNSPECIFIED:
            problems.append(FieldViolation("status", "must be a known consent status"))
        if request.page_size < 0:
            problems.append(FieldViolation("page_size", "must not be negative"))
        if problems:
            raise InvalidArgument(problems)
        actor = _actor(current_principal.get())
        if actor is not None:
            await self._authorize_list(actor, request.patient_id, grantee)
        query = ConsentQuery(request.patient_id, grantee.key if grantee else "", status)
        tag = _filters_tag(query.patient_id, query.grantee_key, str(query.status))
        found, following = await self._store.list_consents(
            query,
            after=_page_after(request.page_token, tag),
            limit=_page_size(request.page_size),
            now=self._clock(),
        )
        now = self._now()
        return identity_pb2.ListConsentsResponse(
            consents=[consent_message(c, now) for c in found],
            next_page_token=_page_token(following, tag),
        )

    async def _authorize_list(self, actor: Actor, patient_id: str, grantee: Grantee | None) -> None:
        """A principal lists a patient's consents as for reading them, or its own as grantee."""
        if grantee is not None and grantee.key in actor.grantee_keys():
            consents_scope = scopes_grant(
                actor.scopes, "Consent", Action.SEARCH, frozenset(), frozenset({"user", "system"})
            )
            if consents_scope:
                return
        if patient_id:
            facts = await self._facts(actor, patient_id)
            decision = consent_management(actor, patient_id, facts, Action.SEARCH)
            if decision.permitted:
                return
        raise PermissionDenied(
            "list the consents of a patient you may manage, or those granted to you",
            reason="CONSENT_LIST_NOT_ALLOWED",
        )

    # CheckAccess -----------------------------------------------------------------------------

    async def CheckAccess(
        self, request: identity_pb2.CheckAccessRequest, context: Context | None
    ) -> identity_pb2.CheckAccessResponse:
        access = _access_request(request)
        caller = current_principal.get()
        if caller is not None and not self._may_ask(caller, access.actor):
            raise PermissionDenied(
                "only the principal itself or a trusted service may ask this",
                reason="CHECK_ACCESS_NOT_ALLOWED",
            )
        decision = await self._access.check(access)
        return identity_pb2.CheckAccessResponse(
            decision=_DECISIONS[decision.decision],
            reason=decision.reason.value,
            consent_id=decision.consent_id,
            break_glass=decision.break_glass,
        )

    def _may_ask(self, caller: Principal, subject: Actor) -> bool:
        if self._check_access_scope in caller.scopes:
            return True
        return (
            caller.subject == subject.subject
            and caller.organization == subject.organization
            and caller.client_id == subject.client_id
            and subject.scopes <= caller.scopes
        )

    # Break-glass audit -----------------------------------------------------------------------

    async def list_break_glass(
        self,
        *,
        patient_id: str = "",
        organization: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[BreakGlassRecord], str]:
        """Break-glass accesses (reason, time, principal) of a patient and/or by an
        organisation, oldest first, for auditors; a record with no ``leaf_index`` was
        refused because the ledger did not answer. Not an RPC yet: callers authorise."""
        if patient_id and not FHIR_ID.fullmatch(patient_id):
            raise InvalidArgument([FieldViolation("patient_id", f"must match {FHIR_ID.pattern}")])
        tag = _filters_tag("break-glass", patient_id, organization)
        found, following = await self._store.list_break_glass(
            patient_id=patient_id,
            organization=organization,
            after=_page_after(page_token, tag),
            limit=_page_size(page_size),
        )
        return found, _page_token(following, tag)


def _refusal(decision: AccessDecision) -> str:
    if decision.reason is Reason.SCOPE_MISSING:
        return Reason.SCOPE_MISSING.value
    return "NOT_PATIENT_OR_ORGANIZATION"


def _access_request(request: identity_pb2.CheckAccessRequest) -> AccessRequest:
    """The domain request, or InvalidArgument naming every bad field."""
    problems: list[FieldViolation] = []
    action = _ACTIONS.get(request.action)
    if action is None:
        problems.append(FieldViolation("action", "must be a known action"))
    purpose = _purpose(request.purpose)
    if purpose is None:
        problems.append(FieldViolation("purpose", "must be a known purpose of use"))
    access = AccessRequest(
        actor=Actor(
            request.principal_id, request.organization, request.client_id, frozenset(request.scopes)
        ),
        patient_id=request.patient_id,
        resource_type=request.resource_type,
        action=action or Action.READ,
        purpose=purpose or Purpose.ETREAT,  # placeholder: already reported
        patient_organization=request.patient_organization,
        break_glass_reason=request.break_glass_reason,
    )
    try:
        validate_access_request(access)
    except InvalidArgument as error:
        problems.extend(error.violations)
    if problems:
        raise InvalidArgument(problems)
    return access
