"""The consent workflow: who may grant, revoke, read and list a patient's consents, and how a
grant and a revocation reach the ledger.

- The grantor is always the authenticated caller: the patient through their own account
  (grantor role PATIENT), or a principal of the organisation holding the patient's record,
  who can only be entering a form the patient or their proxy signed (RECORD_HOLDER). A
  ``granted_by`` naming anyone else is refused; the role is recorded with the consent.
- A grant names a grantee that exists (NOT_FOUND otherwise), told only to a caller allowed
  to grant.
- Never a consent in force without its CONSENT_GRANTED entry: it is written pending, ledgered,
  then marked granted; a ledger that does not answer leaves nothing in force.
- A revocation takes effect at once, then is ledgered: a ledger that does not answer never
  delays it; the call then fails UNAVAILABLE and a retry ledgers it.

Every method takes the authenticated caller: there is no anonymous way in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from medledger.common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from medledger.common.paging import Listing, Page, page, page_size
from medledger.common.scopes import ADMIN, AUDIT_READ
from medledger.identity.domain.access import (
    AccessControl,
    AccessDecision,
    AccessFacts,
    Action,
    Actor,
    BreakGlassRecord,
    Clock,
    Reason,
    consent_management,
    grantee_may_read,
    scopes_grant,
)
from medledger.identity.domain.consent import (
    FHIR_ID,
    ORGANIZATION_ID,
    Consent,
    ConsentStatus,
    ConsentTerms,
    Grantee,
    GrantorRole,
    Purpose,
    check_grantee,
    new_object_id,
    to_millis,
    utc_now,
    validate_terms,
)
from medledger.identity.domain.ports import (
    BreakGlassAudit,
    ConsentQuery,
    ConsentStorage,
    IdentityEvents,
    Parties,
    Receipt,
    StoredConsent,
)

AUDITOR_SCOPES = frozenset({ADMIN, AUDIT_READ})


@dataclass(frozen=True)
class GrantRequest:
    """A grant as asked; ``purposes`` holds None where the request named no known purpose,
    ``granted_by`` is "" when not given."""

    patient_id: str
    grantee: Grantee | None
    resource_types: Sequence[str]
    categories: Sequence[str]
    purposes: Sequence[Purpose | None]
    period_start: datetime | None
    period_end: datetime | None
    granted_by: str
    proxy_relationship: str
    idempotency_key: str

    def digest(self) -> str:
        """What a retry with the same idempotency key must repeat (the key aside)."""

        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        canonical = json.dumps(
            [
                self.patient_id,
                self.grantee.key if self.grantee is not None else None,
                list(self.resource_types),
                list(self.categories),
                [p.value if p is not None else None for p in self.purposes],
                when(self.period_start),
                when(self.period_end),
                self.granted_by,
                self.proxy_relationship,
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ListRequest:
    """ListConsents: filters (empty for any) and the page asked for."""

    patient_id: str = ""
    grantee: Grantee | None = None
    status: ConsentStatus | None = None
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class Ledgered:
    """A consent and the receipt of its latest ledger entry."""

    consent: Consent
    receipt: Receipt


class ConsentRegistry:
    def __init__(
        self,
        store: ConsentStorage,
        audit: BreakGlassAudit,
        events: IdentityEvents,
        parties: Parties,
        access: AccessControl,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._audit = audit
        self._events = events
        self._parties = parties
        self._access = access
        self._clock = clock

    def now(self) -> datetime:
        """Now, to the millisecond, as consents record and derive their status."""
        return to_millis(self._clock())

    # --- grant ------------------------------------------------------------------------------

    async def grant(self, actor: Actor, request: GrantRequest) -> Ledgered:
        now = self.now()
        terms = validate_terms(
            patient_id=request.patient_id,
            grantee=request.grantee,
            resource_types=request.resource_types,
            categories=request.categories,
            purposes=request.purposes,
            period_start=request.period_start,
            period_end=request.period_end,
            granted_by=request.granted_by or actor.subject,
            proxy_relationship=request.proxy_relationship,
            idempotency_key=request.idempotency_key,
            now=now,
        )
        facts = await self._access.facts(actor, terms.patient_id, "")
        terms = replace(terms, grantor_role=self._grantor_role(actor, terms, facts))
        if not await self._parties.grantee_exists(terms.grantee):
            raise NotFound("no such grantee", reason="GRANTEE_NOT_FOUND")
        digest = request.digest()
        idempotency = ""
        if request.idempotency_key:
            # Keys are per grantor: another caller's key never returns this caller's consent.
            idempotency = hashlib.sha256(
                f"{terms.granted_by}\x00{request.idempotency_key}".encode()
            ).hexdigest()
            existing = await self._store.find_idempotent(idempotency)
            if existing is not None:
                return await self._replay(existing, digest, actor.organization)
        consent = Consent(new_object_id(now), terms, now, terms.granted_by)
        salt = os.urandom(32)
        existing = await self._store.insert_pending(
            consent, salt=salt, idempotency=idempotency, request_digest=digest
        )
        if existing is not None:
            return await self._replay(existing, digest, actor.organization)
        try:
            receipt = await self._events.consent_granted(
                consent, actor.organization, terms.commitment(salt)
            )
        except Exception:
            # Never a consent in force without its ledger entry.
            with contextlib.suppress(Exception):
                await self._store.discard_pending(consent.consent_id)
            raise
        await self._mark_granted(consent, receipt)
        return Ledgered(consent, receipt)

    def _grantor_role(self, actor: Actor, terms: ConsentTerms, facts: AccessFacts) -> GrantorRole:
        """In which role the caller grants; PermissionDenied when it may not, or names
        someone else as the grantor."""
        decision = _authorize_change(actor, terms.patient_id, facts)
        if terms.granted_by != actor.subject:
            raise PermissionDenied(
                "the grantor is the caller: granted_by may only name yourself",
                reason="GRANTOR_MISMATCH",
            )
        if decision.reason is not Reason.PATIENT_SELF:
            return GrantorRole.RECORD_HOLDER
        if terms.proxy_relationship:
            raise PermissionDenied(
                "a patient grants in their own name; a proxy's signed form is entered by "
                "the patient's organisation",
                reason="GRANTOR_MISMATCH",
            )
        return GrantorRole.PATIENT

    async def _mark_granted(self, consent: Consent, receipt: Receipt) -> None:
        if not await self._store.mark_granted(consent.consent_id, receipt):
            raise Aborted(
                "a concurrent attempt with this idempotency key failed; retry",
                reason="CONCURRENT_GRANT",
            )

    async def _replay(self, existing: StoredConsent, digest: str, organization: str) -> Ledgered:
        """A retry: the first result, finishing its ledgering if it was interrupted."""
        if existing.request_digest != digest:
            raise FailedPrecondition(
                "idempotency_key was already used for another request",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        consent = existing.consent
        receipt = existing.grant_receipt
        if receipt is None:  # the ledger's own idempotency key makes this append safe
            commitment = consent.terms.commitment(existing.salt)
            receipt = await self._events.consent_granted(consent, organization, commitment)
            await self._mark_granted(consent, receipt)
        return Ledgered(consent, receipt)

    # --- revoke -----------------------------------------------------------------------------

    async def revoke(self, actor: Actor, consent_id: str) -> Ledgered:
        _check_consent_id(consent_id)
        stored = await self._existing(consent_id)
        patient_id = stored.consent.terms.patient_id
        _authorize_change(actor, patient_id, await self._access.facts(actor, patient_id, ""))
        revoked = await self._store.revoke(consent_id, actor.subject, self.now())
        if revoked is None:
            raise NotFound("no such consent", reason="CONSENT_NOT_FOUND")
        receipt = revoked.revoke_receipt
        if receipt is None:
            # Whoever retries, the entry is about who revoked: the patient's own account
            # is blinded in it, a record holder's principal is not.
            by_patient = await self._parties.patient_of_user(revoked.consent.revoked_by)
            receipt = await self._events.consent_revoked(
                revoked.consent, actor.organization, by_patient=by_patient == patient_id
            )
            await self._store.set_revoke_receipt(consent_id, receipt)
        return Ledgered(revoked.consent, receipt)

    # --- read -------------------------------------------------------------------------------

    async def get(self, actor: Actor, consent_id: str) -> Consent:
        _check_consent_id(consent_id)
        consent = (await self._existing(consent_id)).consent
        if not grantee_may_read(actor, consent, Action.READ):
            patient_id = consent.terms.patient_id
            facts = await self._access.facts(actor, patient_id, "")
            decision = consent_management(actor, patient_id, facts, Action.READ)
            if not decision.permitted:
                raise PermissionDenied(
                    "only the patient, their organisation or the grantee may read a consent",
                    reason=_refusal(decision),
                )
        return consent

    async def list_consents(self, actor: Actor, request: ListRequest) -> Page[Consent]:
        problems: list[FieldViolation] = []
        if request.patient_id and not FHIR_ID.fullmatch(request.patient_id):
            problems.append(FieldViolation("patient_id", f"must match {FHIR_ID.pattern}"))
        if request.grantee is not None:
            check_grantee(problems, "grantee", request.grantee)
        if request.page_size < 0:
            problems.append(FieldViolation("page_size", "must not be negative"))
        if problems:
            raise InvalidArgument(problems)
        await self._authorize_list(actor, request.patient_id, request.grantee)
        query = ConsentQuery(
            request.patient_id, request.grantee.key if request.grantee else "", request.status
        )
        listing = Listing(
            "identity.ListConsents",
            (query.patient_id, query.grantee_key, query.status.value if query.status else ""),
        )
        size = page_size(request.page_size)
        found = await self._store.list_consents(
            query,
            after=listing.cursor(request.page_token) or "",
            limit=size + 1,
            now=self._clock(),
        )
        return page(found, size, lambda c: c.consent_id, listing)

    async def _authorize_list(self, actor: Actor, patient_id: str, grantee: Grantee | None) -> None:
        """A principal lists a patient's consents as for reading them, or its own as grantee."""
        if grantee is not None and grantee.key in actor.grantee_keys():
            consents_scope = scopes_grant(
                actor.scopes, "Consent", Action.SEARCH, frozenset(), frozenset({"user", "system"})
            )
            if consents_scope:
                return
        if patient_id:
            facts = await self._access.facts(actor, patient_id, "")
            if consent_management(actor, patient_id, facts, Action.SEARCH).permitted:
                return
        raise PermissionDenied(
            "list the consents of a patient you may manage, or those granted to you",
            reason="CONSENT_LIST_NOT_ALLOWED",
        )

    async def _existing(self, consent_id: str) -> StoredConsent:
        stored = await self._store.get(consent_id)
        if stored is None:
            raise NotFound("no such consent", reason="CONSENT_NOT_FOUND")
        return stored

    # --- break-glass audit ------------------------------------------------------------------

    async def list_break_glass(
        self,
        actor: Actor,
        *,
        patient_id: str = "",
        organization: str = "",
        requested_size: int = 0,
        page_token: str = "",
    ) -> Page[BreakGlassRecord]:
        """Break-glass accesses of a patient and/or by an organisation, oldest first, for
        auditors (``admin`` or ``audit.read``); a record with no ``leaf_index`` was refused
        because the ledger did not answer. Records hold the reason: what leaves identity
        is the caller's choice (ListBreakGlassAccesses sends no reason, no patient)."""
        if AUDITOR_SCOPES.isdisjoint(actor.scopes):
            raise PermissionDenied(
                "break-glass accesses are for auditors (admin or audit.read)",
                reason="AUDIT_SCOPE_REQUIRED",
            )
        problems: list[FieldViolation] = []
        if patient_id and not FHIR_ID.fullmatch(patient_id):
            problems.append(FieldViolation("patient_id", f"must match {FHIR_ID.pattern}"))
        if organization and not ORGANIZATION_ID.fullmatch(organization):
            problems.append(FieldViolation("organization", f"must match {ORGANIZATION_ID.pattern}"))
        if problems:
            raise InvalidArgument(problems)
        listing = Listing("identity.ListBreakGlass", (patient_id, organization))
        size = page_size(requested_size)
        found = await self._audit.list_break_glass(
            patient_id=patient_id,
            organization=organization,
            after=listing.cursor(page_token) or "",
            limit=size + 1,
        )
        return page(found, size, lambda r: r.record_id, listing)


def _authorize_change(actor: Actor, patient_id: str, facts: AccessFacts) -> AccessDecision:
    """The decision letting ``actor`` change the patient's consents; PermissionDenied
    unless it is the patient or of their organisation, with a scope to write Consent."""
    decision = consent_management(actor, patient_id, facts, Action.WRITE)
    if not decision.permitted:
        raise PermissionDenied(
            "only the patient or their organisation may change their consents",
            reason=_refusal(decision),
        )
    return decision


def _refusal(decision: AccessDecision) -> str:
    if decision.reason is Reason.SCOPE_MISSING:
        return Reason.SCOPE_MISSING.value
    return "NOT_PATIENT_OR_ORGANIZATION"


def _check_consent_id(consent_id: str) -> None:
    if not FHIR_ID.fullmatch(consent_id):
        raise InvalidArgument([FieldViolation("consent_id", f"must match {FHIR_ID.pattern}")])
