"""The access decision as a pure function: SMART v2 scopes, the owning organisation, the
patient themself, consents (grantee, data, purpose, period), break-glass eligibility."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.errors import InvalidArgument
from medledger.identity.domain.access import (
    AccessFacts,
    AccessRequest,
    Action,
    Actor,
    Decision,
    Reason,
    break_glass_refusal,
    check_access,
    scope_grant,
    scopes_grant,
    validate_access_request,
)
from medledger.identity.domain.consent import (
    Consent,
    ConsentStatus,
    ConsentTerms,
    Grantee,
    GranteeKind,
    Purpose,
    validate_terms,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ORG_B = Grantee(GranteeKind.ORGANIZATION, "org-b")
ALL = frozenset({"user", "system"})
# What the tokens in these tests carry; step 2 (the token's purposes) is tested on its own.
TOKEN_PURPOSES = frozenset({"TREAT", "HRESCH"})


def actor(subject: str, organization: str, client_id: str, scopes: frozenset[str]) -> Actor:
    return Actor(subject, organization, client_id, scopes, TOKEN_PURPOSES)


PARTNER = actor("lab-app", "org-b", "lab-app", frozenset({"system/Observation.rs"}))
OUTSIDER_FACTS = AccessFacts(patient_organization="org-a", actor_patient_id=None)


def consent(
    *,
    grantee: Grantee = ORG_B,
    resource_types: tuple[str, ...] = ("Observation",),
    categories: tuple[str, ...] = (),
    purposes: tuple[Purpose, ...] = (Purpose.TREAT,),
    start: datetime = NOW - timedelta(days=1),
    end: datetime | None = NOW + timedelta(days=30),
    revoked: datetime | None = None,
    consent_id: str = "c1",
) -> Consent:
    terms = ConsentTerms(
        patient_id="p-1",
        grantee=grantee,
        resource_types=resource_types,
        categories=categories,
        purposes=purposes,
        period_start=start,
        period_end=end,
        granted_by="patient-user-1",
    )
    return Consent(consent_id, terms, NOW - timedelta(days=2), "patient-user-1", revoked)


def request(
    actor: Actor = PARTNER,
    *,
    resource_type: str = "Observation",
    action: Action = Action.READ,
    purpose: Purpose = Purpose.TREAT,
    categories: frozenset[str] = frozenset(),
    patient_id: str = "p-1",
) -> AccessRequest:
    return AccessRequest(actor, patient_id, resource_type, action, purpose, categories)


# --- scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "resource_type", "action", "granted"),
    [
        ("system/Observation.rs", "Observation", Action.READ, True),
        ("system/Observation.rs", "Observation", Action.SEARCH, True),
        ("system/Observation.rs", "Observation", Action.EXPORT, True),
        ("system/Observation.rs", "Observation", Action.WRITE, False),
        ("system/Observation.rs", "Condition", Action.READ, False),
        ("system/Observation.r", "Observation", Action.EXPORT, False),
        ("system/Observation.c", "Observation", Action.WRITE, False),  # an update too
        ("system/Observation.cu", "Observation", Action.WRITE, True),
        ("system/*.cruds", "Condition", Action.DELETE, True),
        ("user/*.rs", "Patient", Action.READ, True),
        ("system/Observation.read", "Observation", Action.SEARCH, True),  # SMART v1
        ("system/Observation.write", "Observation", Action.WRITE, True),
        ("system/Observation.*", "Observation", Action.DELETE, True),
        ("system/Observation.sr", "Observation", Action.READ, False),  # v2 order is cruds
        ("system/Observation.rx", "Observation", Action.READ, False),
        ("openid", "Observation", Action.READ, False),
        ("system/Observation.rs?code=1234-5", "Observation", Action.READ, False),
    ],
)
def test_scope_coverage(scope: str, resource_type: str, action: Action, granted: bool) -> None:
    assert scopes_grant([scope], resource_type, action, frozenset(), ALL) is granted


def test_permissions_add_up_across_scopes() -> None:
    scopes = ["system/Observation.r", "system/*.s"]
    assert scopes_grant(scopes, "Observation", Action.EXPORT, frozenset(), ALL)


def test_category_restricted_scope_needs_known_categories() -> None:
    scope = "system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    parsed = scope_grant(scope)
    assert parsed is not None
    assert parsed.categories == frozenset({"laboratory"})
    lab = frozenset({"laboratory"})
    assert scopes_grant([scope], "Observation", Action.READ, lab, ALL)
    assert not scopes_grant([scope], "Observation", Action.READ, frozenset({"vital-signs"}), ALL)
    assert not scopes_grant([scope], "Observation", Action.READ, frozenset(), ALL)


@given(st.text(max_size=80))
def test_any_scope_text_parses_or_is_ignored(text: str) -> None:
    parsed = scope_grant(text)
    if parsed is not None:
        assert parsed.context in {"patient", "user", "system"}
        assert parsed.permissions <= frozenset("cruds")


def test_patient_scopes_count_only_for_that_patient() -> None:
    patient = actor("patient-user-1", "org-a", "", frozenset({"patient/*.rs"}))
    own = check_access(request(patient), AccessFacts("org-a", "p-1"), [], NOW)
    assert (own.decision, own.reason) == (Decision.PERMIT, Reason.PATIENT_SELF)
    other = check_access(request(patient, patient_id="p-2"), AccessFacts("org-a", "p-1"), [], NOW)
    assert (other.decision, other.reason) == (Decision.DENY, Reason.SCOPE_MISSING)
    # A practitioner holding patient/ scopes is not that patient either.
    staff = actor("dr-who", "org-a", "", frozenset({"patient/*.rs"}))
    assert check_access(request(staff), AccessFacts("org-a", None), [], NOW).reason == (
        Reason.SCOPE_MISSING
    )


def test_the_purpose_must_be_in_the_token() -> None:
    """A partner registered for TREAT, HPAYMT and HRESCH asks for ETREAT: its token never
    carried it, so neither a consent nor break-glass may give it."""
    partner = Actor(
        "lab-app", "org-b", "lab-app", frozenset({"system/Observation.rs"}), frozenset({"TREAT"})
    )
    for_etreat = consent(purposes=(Purpose.TREAT, Purpose.ETREAT))
    decision = check_access(
        request(partner, purpose=Purpose.ETREAT), OUTSIDER_FACTS, [for_etreat], NOW
    )
    assert (decision.decision, decision.reason) == (Decision.DENY, Reason.PURPOSE_NOT_IN_TOKEN)
    # Even the organisation holding the record asks within its token's purposes.
    staff = Actor("dr-a", "org-a", "", frozenset({"user/*.rs"}), frozenset({"TREAT"}))
    decision = check_access(request(staff, purpose=Purpose.HRESCH), OUTSIDER_FACTS, [], NOW)
    assert decision.reason is Reason.PURPOSE_NOT_IN_TOKEN
    assert check_access(request(partner), OUTSIDER_FACTS, [for_etreat], NOW).permitted


# --- organisation, self ---------------------------------------------------------------------------


def test_same_organization_permits_with_the_scope_only() -> None:
    staff = actor("dr-a", "org-a", "", frozenset({"user/Observation.rs"}))
    decision = check_access(request(staff), AccessFacts("org-a", None), [], NOW)
    assert (decision.decision, decision.reason) == (Decision.PERMIT, Reason.SAME_ORGANIZATION)
    unscoped = actor("dr-a", "org-a", "", frozenset({"user/Condition.rs"}))
    decision = check_access(request(unscoped), AccessFacts("org-a", None), [], NOW)
    assert (decision.decision, decision.reason) == (Decision.DENY, Reason.SCOPE_MISSING)


def test_a_patient_account_is_not_staff_of_its_organization() -> None:
    patient = actor("patient-user-1", "org-a", "", frozenset({"user/*.rs"}))
    decision = check_access(
        request(patient, patient_id="p-2"), AccessFacts("org-a", "p-1"), [], NOW
    )
    assert (decision.decision, decision.reason) == (Decision.DENY, Reason.NO_CONSENT)


def test_no_patient_means_the_scope_decides() -> None:
    decision = check_access(request(patient_id=""), AccessFacts(None, None), [], NOW)
    assert (decision.decision, decision.reason) == (Decision.PERMIT, Reason.SCOPE_PERMITS)


# --- consents -------------------------------------------------------------------------------------


def test_consent_permits_and_names_itself() -> None:
    decision = check_access(request(), OUTSIDER_FACTS, [consent()], NOW)
    assert (decision.decision, decision.reason, decision.consent_id) == (
        Decision.PERMIT,
        Reason.CONSENT_PERMITS,
        "c1",
    )


def test_no_consent_denies() -> None:
    decision = check_access(request(), OUTSIDER_FACTS, [], NOW)
    assert (decision.decision, decision.reason) == (Decision.DENY, Reason.NO_CONSENT)


@pytest.mark.parametrize(
    "grantee",
    [
        Grantee(GranteeKind.ORGANIZATION, "org-b"),
        Grantee(GranteeKind.CLIENT, "lab-app"),
    ],
)
def test_grantee_matches_organization_or_client(grantee: Grantee) -> None:
    assert check_access(request(), OUTSIDER_FACTS, [consent(grantee=grantee)], NOW).permitted


def test_grantee_user_matches_that_user_only() -> None:
    user = actor("dr-b", "org-b", "", frozenset({"user/Observation.rs"}))
    granted = consent(grantee=Grantee(GranteeKind.USER, "dr-b"))
    assert check_access(request(user), OUTSIDER_FACTS, [granted], NOW).permitted
    colleague = actor("dr-c", "org-b", "", frozenset({"user/Observation.rs"}))
    assert not check_access(request(colleague), OUTSIDER_FACTS, [granted], NOW).permitted
    # A client's token never matches a user grantee of the same name.
    same_name = actor("dr-b", "org-b", "dr-b", frozenset({"system/Observation.rs"}))
    assert not check_access(request(same_name), OUTSIDER_FACTS, [granted], NOW).permitted


def test_other_organizations_consent_does_not_apply() -> None:
    other = consent(grantee=Grantee(GranteeKind.ORGANIZATION, "org-c"))
    assert check_access(request(), OUTSIDER_FACTS, [other], NOW).reason == Reason.NO_CONSENT


def test_purpose_mismatch() -> None:
    decision = check_access(request(purpose=Purpose.HRESCH), OUTSIDER_FACTS, [consent()], NOW)
    assert (decision.decision, decision.reason, decision.consent_id) == (
        Decision.DENY,
        Reason.PURPOSE_NOT_ALLOWED,
        "c1",
    )


def test_resource_type_not_covered() -> None:
    partner = actor("lab-app", "org-b", "lab-app", frozenset({"system/*.rs"}))
    decision = check_access(
        request(partner, resource_type="Condition"), OUTSIDER_FACTS, [consent()], NOW
    )
    assert (decision.decision, decision.reason) == (Decision.DENY, Reason.NO_CONSENT)


def test_category_coverage() -> None:
    labs = consent(resource_types=(), categories=("laboratory",))
    lab = frozenset({"laboratory"})
    assert check_access(request(categories=lab), OUTSIDER_FACTS, [labs], NOW).permitted
    vitals = frozenset({"vital-signs"})
    assert not check_access(request(categories=vitals), OUTSIDER_FACTS, [labs], NOW).permitted
    mixed = frozenset({"laboratory", "social-history"})
    assert not check_access(request(categories=mixed), OUTSIDER_FACTS, [labs], NOW).permitted
    # Data of unknown category is not within a category-restricted consent.
    assert not check_access(request(), OUTSIDER_FACTS, [labs], NOW).permitted
    # Type and category together narrow each other.
    lab_reports = consent(resource_types=("DiagnosticReport",), categories=("laboratory",))
    assert not check_access(request(categories=lab), OUTSIDER_FACTS, [lab_reports], NOW).permitted


def test_consent_in_force_only_within_its_period_and_unrevoked() -> None:
    expired = consent(start=NOW - timedelta(days=9), end=NOW - timedelta(seconds=1))
    assert expired.status(NOW) is ConsentStatus.EXPIRED
    future = consent(start=NOW + timedelta(hours=1))
    assert future.status(NOW) is ConsentStatus.ACTIVE
    revoked = consent(revoked=NOW - timedelta(minutes=1))
    assert revoked.status(NOW) is ConsentStatus.REVOKED
    for stale in (expired, future, revoked):
        assert check_access(request(), OUTSIDER_FACTS, [stale], NOW).reason == Reason.NO_CONSENT
    assert check_access(request(), OUTSIDER_FACTS, [future], NOW + timedelta(hours=2)).permitted


def test_status_is_derived_at_read_time() -> None:
    ending = consent(end=NOW + timedelta(seconds=5))
    assert ending.status(NOW) is ConsentStatus.ACTIVE
    assert ending.status(NOW + timedelta(seconds=5)) is ConsentStatus.EXPIRED


# --- break-glass and validation ---------------------------------------------------------------


def test_break_glass_only_reads_searches_and_writes() -> None:
    assert break_glass_refusal(request(action=Action.READ), OUTSIDER_FACTS) is None
    refused = break_glass_refusal(request(action=Action.EXPORT), OUTSIDER_FACTS)
    assert refused is not None
    assert refused.reason is Reason.BREAK_GLASS_NOT_ALLOWED
    patient_account = AccessFacts("org-a", "p-9")
    assert break_glass_refusal(request(), patient_account) is not None


def test_bad_check_access_requests_name_their_fields() -> None:
    bad = AccessRequest(
        Actor("", "Org A!", "", frozenset()),
        "patient id with spaces",
        "Observations",
        Action.READ,
        Purpose.TREAT,
        break_glass_reason="fell",
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_access_request(bad)
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "principal_id",
        "organization",
        "patient_id",
        "resource_type",
        "break_glass_reason",
    }
    assert all("spaces" not in v.description for v in caught.value.violations)


def test_bad_terms_name_their_fields() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_terms(
            patient_id="",
            grantee=Grantee(GranteeKind.ORGANIZATION, "Not An Id"),
            resource_types=["Observation", "Labs"],
            categories=["lab results!"],
            purposes=[None],
            period_start=NOW,
            period_end=NOW - timedelta(days=1),
            granted_by="",
            proxy_relationship="guardian",
            idempotency_key="spaces are bad",
            now=NOW,
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "patient_id",
        "grantee.organization",
        "resource_types[1]",
        "categories[0]",
        "purposes[0]",
        "period_end",
        "granted_by",
        "proxy_relationship",
        "idempotency_key",
    }


def test_terms_need_data_and_a_purpose() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_terms(
            patient_id="p-1",
            grantee=None,
            resource_types=[],
            categories=[],
            purposes=[],
            period_start=None,
            period_end=None,
            granted_by="u-1",
            proxy_relationship="",
            now=NOW,
        )
    assert {v.field for v in caught.value.violations} == {"grantee", "resource_types", "purposes"}
