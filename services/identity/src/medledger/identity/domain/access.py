"""The access decision: may this principal do this to this patient's data, for this purpose?

In order (SMART App Launch v2 scopes, then consent, then break-glass):

1. The token's scopes must cover the resource type and the action, else ``SCOPE_MISSING``.
   ``patient/`` scopes count only for a patient acting on their own record; a patient's user
   account never gets more than that from its organisation.
2. The token's purposes must include the purpose asked for, else ``PURPOSE_NOT_IN_TOKEN``.
3. A patient acting on their own record: ``PATIENT_SELF``.
4. A principal of the organisation that holds the patient's record: ``SAME_ORGANIZATION``.
5. Anyone else needs a consent in force, granted to its organisation, its client or itself,
   covering the data and the purpose: ``CONSENT_PERMITS``; a consent covering the data for
   other purposes only: ``PURPOSE_NOT_ALLOWED``; none: ``NO_CONSENT``.
6. Denied under 5 with purpose ETREAT: break-glass (:class:`BreakGlassPolicy`). Only for
   read, search and write; only for a practitioner user, or a client registered for ETREAT,
   of the organisation its token names, else ``BREAK_GLASS_NOT_ALLOWED``; with a reason; for
   a patient known to be held by an organisation, else ``PATIENT_NOT_FOUND``; at most so many
   per principal an hour, else ``BREAK_GLASS_RATE_LIMITED``. Then ``BREAK_GLASS``, permitted
   only once the ledger holds the BREAK_GLASS entry; the reason stays in identity's audit.

Which organisation holds a patient's record: the one the record service asserts with the
request (``patient_organization``, honoured only from a caller holding the CheckAccess
service scope, never from a principal asking about itself), else the one the record service
registered for the patient (RegisterPatientHolder), else that of the patient's user account
in identity; else none is known.

:func:`check_access` is pure given the facts and consents it is handed; :class:`AccessControl`
gathers them (at most one consent query per decision) and runs break-glass.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import unquote

from medledger.common.errors import FieldViolation, InvalidArgument, PermissionDenied
from medledger.identity.domain.consent import (
    FHIR_ID,
    FHIR_RESOURCE_TYPES,
    ORGANIZATION_ID,
    PRINCIPAL_ID,
    Consent,
    GranteeKind,
    Purpose,
    new_object_id,
    to_millis,
    utc_now,
)
from medledger.identity.domain.ports import (
    BreakGlassAudit,
    ConsentStorage,
    IdentityEvents,
    Parties,
)
from medledger.identity.domain.scopes import CHECK_ACCESS, ResourceScope, ScopeError, parse_scope


class Action(StrEnum):
    READ = "read"
    WRITE = "write"  # create or update
    DELETE = "delete"
    EXPORT = "export"
    SEARCH = "search"


# SMART v2 permissions each action needs. The caller does not say whether a write creates
# or updates, so it needs both.
ACTION_PERMISSIONS: dict[Action, frozenset[str]] = {
    Action.READ: frozenset("r"),
    Action.SEARCH: frozenset("s"),
    Action.WRITE: frozenset("cu"),
    Action.DELETE: frozenset("d"),
    Action.EXPORT: frozenset("rs"),
}
# Break-glass lets a clinician see and record care in an emergency, never delete or export.
BREAK_GLASS_ACTIONS = frozenset({Action.READ, Action.SEARCH, Action.WRITE})
MAX_BREAK_GLASS_REASON = 1000


class Decision(StrEnum):
    PERMIT = "permit"
    DENY = "deny"


class Reason(StrEnum):
    SCOPE_MISSING = "SCOPE_MISSING"
    # The token does not carry the purpose asked for.
    PURPOSE_NOT_IN_TOKEN = "PURPOSE_NOT_IN_TOKEN"  # noqa: S105 (a reason code)
    PATIENT_SELF = "PATIENT_SELF"
    SAME_ORGANIZATION = "SAME_ORGANIZATION"
    # No single patient is concerned (a search across patients): the scope decides, and the
    # caller must still check each patient whose data it returns.
    SCOPE_PERMITS = "SCOPE_PERMITS"
    CONSENT_PERMITS = "CONSENT_PERMITS"
    PURPOSE_NOT_ALLOWED = "PURPOSE_NOT_ALLOWED"
    NO_CONSENT = "NO_CONSENT"
    BREAK_GLASS = "BREAK_GLASS"
    # Break-glass asked for an action it never covers, or by a principal that may not: a
    # patient's account, an admin, a client not registered for ETREAT.
    BREAK_GLASS_NOT_ALLOWED = "BREAK_GLASS_NOT_ALLOWED"
    # Break-glass for a patient no organisation is known to hold.
    PATIENT_NOT_FOUND = "PATIENT_NOT_FOUND"
    # The principal has broken the glass too often lately.
    BREAK_GLASS_RATE_LIMITED = "BREAK_GLASS_RATE_LIMITED"


@dataclass(frozen=True)
class Actor:
    """The principal as its verified access token describes it."""

    subject: str
    organization: str
    client_id: str = ""
    scopes: frozenset[str] = frozenset()
    # HL7 PurposeOfUse codes the token carries.
    purposes: frozenset[str] = frozenset()

    @property
    def is_client(self) -> bool:
        """A client-credentials token: the subject is the client, not a person."""
        return bool(self.client_id) and self.subject == self.client_id

    def grantee_keys(self) -> tuple[str, ...]:
        """Every grantee a consent may name to let this principal in."""
        keys = [f"{GranteeKind.ORGANIZATION.value}:{self.organization}"]
        if self.client_id:
            keys.append(f"{GranteeKind.CLIENT.value}:{self.client_id}")
        if not self.is_client:
            keys.append(f"{GranteeKind.USER.value}:{self.subject}")
        return tuple(keys)


@dataclass(frozen=True)
class AccessRequest:
    actor: Actor
    patient_id: str
    resource_type: str
    action: Action
    purpose: Purpose
    # Categories of the data concerned when the caller knows them; category-restricted
    # consents and scopes apply only to data whose categories are known.
    categories: frozenset[str] = frozenset()
    patient_organization: str = ""
    break_glass_reason: str = ""


@dataclass(frozen=True)
class AccessFacts:
    """What identity knows about the parties, looked up before deciding."""

    # Organisation holding the patient's record; None when unknown.
    patient_organization: str | None
    # The Patient id the actor is, when the actor is a patient's user account.
    actor_patient_id: str | None


@dataclass(frozen=True)
class AccessDecision:
    decision: Decision
    reason: Reason
    consent_id: str = ""
    break_glass: bool = False

    @property
    def permitted(self) -> bool:
        return self.decision is Decision.PERMIT


def permit(reason: Reason, consent_id: str = "") -> AccessDecision:
    return AccessDecision(Decision.PERMIT, reason, consent_id)


def deny(reason: Reason, consent_id: str = "") -> AccessDecision:
    return AccessDecision(Decision.DENY, reason, consent_id)


# --- SMART App Launch v2 scopes -------------------------------------------------------------


@dataclass(frozen=True)
class ScopeGrant:
    """What one token scope lets a decision use."""

    context: str  # patient, user or system
    resource_type: str  # a FHIR type or "*"
    permissions: frozenset[str]
    # Set by a ``?category=`` restriction: the data must be in these categories.
    categories: frozenset[str] | None = None

    def covers(self, resource_type: str, permission: str, categories: frozenset[str]) -> bool:
        if self.resource_type not in ("*", resource_type) or permission not in self.permissions:
            return False
        if self.categories is not None:
            return bool(categories) and categories <= self.categories
        return True


def _categories(query: str) -> frozenset[str] | None:
    """Codes of a ``category=system|code,...`` restriction; None for any other parameter,
    which this decision cannot honour (the scope then grants nothing)."""
    codes: set[str] = set()
    for parameter in query.split("&"):
        name, _, value = parameter.partition("=")
        if name != "category" or not value:
            return None
        codes.update(unquote(token).rpartition("|")[2] for token in value.split(","))
    return frozenset(codes)


def scope_grant(text: str) -> ScopeGrant | None:
    """What the token scope ``text`` grants, parsed by the one SMART grammar of identity;
    None for platform scopes (``admin``, ...) and for anything malformed."""
    try:
        scope = parse_scope(text)
    except ScopeError:
        return None
    if not isinstance(scope, ResourceScope):
        return None
    categories = None
    if scope.query:
        categories = _categories(scope.query)
        if categories is None:
            return None
    return ScopeGrant(scope.context, scope.resource, frozenset(scope.permissions), categories)


def scopes_grant(
    scopes: Iterable[str],
    resource_type: str,
    action: Action,
    categories: frozenset[str],
    contexts: frozenset[str],
) -> bool:
    """Whether the scopes in ``contexts`` together give every permission ``action`` needs."""
    usable = [s for s in map(scope_grant, scopes) if s is not None and s.context in contexts]
    return all(
        any(s.covers(resource_type, permission, categories) for s in usable)
        for permission in ACTION_PERMISSIONS[action]
    )


# --- the decision ---------------------------------------------------------------------------


def decide_without_consents(
    request: AccessRequest, facts: AccessFacts, *, token_purpose: bool = True
) -> AccessDecision | None:
    """Steps 1-4 (step 2 only with ``token_purpose``); None when only a consent (or
    break-glass) can decide."""
    actor = request.actor
    is_patient = facts.actor_patient_id is not None
    own_record = is_patient and facts.actor_patient_id == request.patient_id
    if own_record:
        contexts = frozenset({"patient", "user"})
    elif is_patient:
        contexts = frozenset({"user"})
    else:
        contexts = frozenset({"user", "system"})
    if not scopes_grant(
        actor.scopes, request.resource_type, request.action, request.categories, contexts
    ):
        return deny(Reason.SCOPE_MISSING)
    if token_purpose and request.purpose.value not in actor.purposes:
        return deny(Reason.PURPOSE_NOT_IN_TOKEN)
    if not request.patient_id:
        return deny(Reason.SCOPE_MISSING) if is_patient else permit(Reason.SCOPE_PERMITS)
    if own_record:
        return permit(Reason.PATIENT_SELF)
    if not is_patient and facts.patient_organization == actor.organization:
        return permit(Reason.SAME_ORGANIZATION)
    return None


def decide_by_consents(
    request: AccessRequest, consents: Iterable[Consent], now: datetime
) -> AccessDecision:
    """Step 5: the consents in force for this patient and grantee decide."""
    grantees = set(request.actor.grantee_keys())
    other_purposes: Consent | None = None
    for consent in sorted(consents, key=lambda c: c.consent_id):
        if (
            consent.terms.patient_id != request.patient_id
            or consent.terms.grantee.key not in grantees
            or not consent.in_force(now)
            or not consent.covers_data(request.resource_type, request.categories)
        ):
            continue
        if consent.allows_purpose(request.purpose):
            return permit(Reason.CONSENT_PERMITS, consent.consent_id)
        other_purposes = other_purposes or consent
    if other_purposes is not None:
        return deny(Reason.PURPOSE_NOT_ALLOWED, other_purposes.consent_id)
    return deny(Reason.NO_CONSENT)


def check_access(
    request: AccessRequest, facts: AccessFacts, consents: Iterable[Consent], now: datetime
) -> AccessDecision:
    """Steps 1-5, pure: the decision before any break-glass."""
    return decide_without_consents(request, facts) or decide_by_consents(request, consents, now)


def break_glass_refusal(request: AccessRequest, facts: AccessFacts) -> AccessDecision | None:
    """Why break-glass may not open this request (None: it may)."""
    if request.action not in BREAK_GLASS_ACTIONS or facts.actor_patient_id is not None:
        return deny(Reason.BREAK_GLASS_NOT_ALLOWED)
    return None


def validate_access_request(request: AccessRequest) -> None:
    """InvalidArgument naming every bad field of a CheckAccess request."""
    problems: list[FieldViolation] = []

    def check(field: str, value: str, pattern: re.Pattern[str], *, required: bool) -> None:
        if not value:
            if required:
                problems.append(FieldViolation(field, "is required"))
        elif not pattern.fullmatch(value):
            problems.append(FieldViolation(field, f"must match {pattern.pattern}"))

    check("principal_id", request.actor.subject, PRINCIPAL_ID, required=True)
    check("organization", request.actor.organization, ORGANIZATION_ID, required=True)
    check("client_id", request.actor.client_id, PRINCIPAL_ID, required=False)
    check("patient_id", request.patient_id, FHIR_ID, required=False)
    check("patient_organization", request.patient_organization, ORGANIZATION_ID, required=False)
    if request.resource_type not in FHIR_RESOURCE_TYPES:
        problems.append(FieldViolation("resource_type", "must be a FHIR R4 resource type"))
    reason = request.break_glass_reason
    if reason and request.purpose is not Purpose.ETREAT:
        problems.append(FieldViolation("break_glass_reason", "is only for purpose ETREAT"))
    if reason and not request.patient_id:
        problems.append(FieldViolation("patient_id", "is required for break-glass"))
    if reason and (len(reason) > MAX_BREAK_GLASS_REASON or not reason.strip()):
        problems.append(
            FieldViolation("break_glass_reason", f"must be 1 to {MAX_BREAK_GLASS_REASON} chars")
        )
    if problems:
        raise InvalidArgument(problems)


# --- break-glass and the orchestration ------------------------------------------------------


@dataclass(frozen=True)
class BreakGlassRecord:
    """One break-glass access, as identity's audit keeps it (the reason only here)."""

    record_id: str
    time: datetime
    principal_id: str
    organization: str
    client_id: str
    patient_id: str
    resource_type: str
    action: Action
    reason: str
    salt: bytes = field(repr=False)
    # Ledger leaf of the BREAK_GLASS entry; None while (or if never) ledgered, in which
    # case the access was refused.
    leaf_index: int | None = None

    def commitment(self) -> bytes:
        """Salted SHA-256 of the record and its reason: the ledger entry proves the audit
        row was not rewritten later, without holding the reason."""
        return hashlib.sha256(self.salt + self.record_id.encode() + self.reason.encode()).digest()


Clock = Callable[[], datetime]


@dataclass(frozen=True)
class BreakGlassPolicy:
    """How often one principal may break the glass: ``limit`` attempts within ``window``
    (refused attempts count: they were asked for). Counted in the audit store, so across
    replicas; concurrent attempts may pass the limit by the few in flight."""

    limit: int = 10
    window: timedelta = timedelta(hours=1)


class AccessControl:
    """Gathers the facts and consents for a decision, and runs break-glass."""

    def __init__(
        self,
        consents: ConsentStorage,
        audit: BreakGlassAudit,
        events: IdentityEvents,
        parties: Parties,
        *,
        check_access_scope: str = CHECK_ACCESS,
        break_glass: BreakGlassPolicy | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._consents = consents
        self._audit = audit
        self._events = events
        self._parties = parties
        self._check_access_scope = check_access_scope
        self._break_glass_policy = break_glass or BreakGlassPolicy()
        self._clock = clock

    async def facts(self, actor: Actor, patient_id: str, patient_org: str) -> AccessFacts:
        """Looks up only what is missing: the patient's organisation when the caller did not
        say it, and which patient the actor is unless it is a client (clients are not
        patients)."""
        organization: str | None = patient_org
        if not organization and patient_id:
            organization = await self._parties.patient_organization(patient_id)
        actor_patient = None
        if not actor.is_client:
            actor_patient = await self._parties.patient_of_user(actor.subject)
        return AccessFacts(organization or None, actor_patient)

    def trusted(self, caller: Actor) -> bool:
        """A medledger service (record, inference) holding the CheckAccess scope: it has
        verified the principal's token itself, and speaks for the record holder."""
        return self._check_access_scope in caller.scopes

    def may_ask(self, caller: Actor, subject: Actor) -> bool:
        """Whether ``caller`` may ask about ``subject``: a trusted service, or the principal
        itself with no more scopes and purposes than its own token's."""
        if self.trusted(caller):
            return True
        return (
            caller.subject == subject.subject
            and caller.organization == subject.organization
            and caller.client_id == subject.client_id
            and subject.scopes <= caller.scopes
            and subject.purposes <= caller.purposes
        )

    async def check_for(self, caller: Actor, request: AccessRequest) -> AccessDecision:
        """:meth:`check`, asked by ``caller``. Only a trusted service may say which
        organisation holds the patient's record: a principal's own claim would make it the
        patient's organisation (SAME_ORGANIZATION) or conjure up a patient (break-glass)."""
        if not self.may_ask(caller, request.actor):
            raise PermissionDenied(
                "only the principal itself or a trusted service may ask this",
                reason="CHECK_ACCESS_NOT_ALLOWED",
            )
        if request.patient_organization and not self.trusted(caller):
            raise PermissionDenied(
                "only the record service says which organization holds a patient's record",
                reason="PATIENT_ORGANIZATION_NOT_ALLOWED",
            )
        return await self.check(request)

    async def may_break_glass(self, actor: Actor) -> bool:
        """A practitioner user, or a client registered for ETREAT, of the organisation its
        token names, as identity's directory has them now (a disabled one may not)."""
        if actor.is_client:
            client = await self._parties.client(actor.client_id)
            return (
                client is not None
                and not client.disabled
                and client.organization == actor.organization
                and Purpose.ETREAT.value in client.allowed_purposes
            )
        return await self._parties.practitioner_organization(actor.subject) == actor.organization

    async def check(self, request: AccessRequest) -> AccessDecision:
        validate_access_request(request)
        facts = await self.facts(request.actor, request.patient_id, request.patient_organization)
        decision = decide_without_consents(request, facts)
        if decision is not None:
            return decision
        consents = await self._consents.consents_for(
            request.patient_id, request.actor.grantee_keys()
        )
        decision = decide_by_consents(request, consents, self._clock())
        if decision.permitted or request.purpose is not Purpose.ETREAT:
            return decision
        return await self._break_glass(request, facts)

    async def _break_glass(self, request: AccessRequest, facts: AccessFacts) -> AccessDecision:
        refusal = break_glass_refusal(request, facts)
        if refusal is None and not await self.may_break_glass(request.actor):
            refusal = deny(Reason.BREAK_GLASS_NOT_ALLOWED)
        if refusal is not None:
            return refusal
        if not request.break_glass_reason:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "break_glass_reason",
                        "is required for purpose ETREAT when no consent permits the access",
                    )
                ]
            )
        if facts.patient_organization is None:
            return deny(Reason.PATIENT_NOT_FOUND)
        now = to_millis(self._clock())
        actor = request.actor
        policy = self._break_glass_policy
        if await self._audit.count_break_glass(actor.subject, now - policy.window) >= policy.limit:
            return deny(Reason.BREAK_GLASS_RATE_LIMITED)
        record = BreakGlassRecord(
            record_id=new_object_id(now),
            time=now,
            principal_id=actor.subject,
            organization=actor.organization,
            client_id=actor.client_id,
            patient_id=request.patient_id,
            resource_type=request.resource_type,
            action=request.action,
            reason=request.break_glass_reason.strip(),
            salt=os.urandom(32),
        )
        # The attempt is audited first; it counts as permitted only once ledgered, and a
        # ledger that does not answer refuses the access (Unavailable propagates).
        await self._audit.open_break_glass(record)
        leaf_index = await self._events.break_glass(record)
        await self._audit.close_break_glass(record.record_id, leaf_index)
        return AccessDecision(Decision.PERMIT, Reason.BREAK_GLASS, break_glass=True)


def consent_management(
    actor: Actor, patient_id: str, facts: AccessFacts, action: Action
) -> AccessDecision:
    """Who may grant, revoke or read a patient's consents: the patient, or a principal of
    the patient's organisation, with a scope covering ``Consent`` for ``action`` (whatever
    the purposes of its token: managing consents is no use of the data)."""
    request = AccessRequest(actor, patient_id, "Consent", action, Purpose.PATRQT)
    decision = decide_without_consents(request, facts, token_purpose=False)
    return decision or deny(Reason.NO_CONSENT)


def grantee_may_read(actor: Actor, consent: Consent, action: Action) -> bool:
    """A grantee may read the consents granted to it, with a scope covering ``Consent``."""
    return consent.terms.grantee.key in actor.grantee_keys() and scopes_grant(
        actor.scopes, "Consent", action, frozenset(), frozenset({"user", "system"})
    )
