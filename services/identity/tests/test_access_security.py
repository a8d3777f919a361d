"""Security review, issue 11, through the whole identity server (real MongoDB, OpenBao and
ledger; tokens identity issued): break-glass only for those registered for it, for a patient
some organisation holds, rate-limited, ledgered and listed for auditors; the organisation
holding a patient's record said only by the record service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.scopes import AUDIT_READ, CHECK_ACCESS, LEDGER_READ

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
ETREAT = purpose_pb2.PURPOSE_OF_USE_ETREAT
HPAYMT = purpose_pb2.PURPOSE_OF_USE_HPAYMT
HRESCH = purpose_pb2.PURPOSE_OF_USE_HRESCH
PERMIT = identity_pb2.DECISION_PERMIT
DENY = identity_pb2.DECISION_DENY
PATIENT_ID = "pat-security-1"
OTHER_PATIENT_ID = "pat-security-2"
PARTNER_SCOPES = ["system/Observation.rs", "system/Consent.rs", LEDGER_READ]
BREAK_GLASS = {"purpose": ETREAT, "break_glass_reason": "unconscious in the ED, allergies?"}

Metadata = list[tuple[str, str]]


@dataclass
class World:
    """hospital-a holds the patients' records; hospital-b-app is the partner of the finding
    (TREAT, HPAYMT, HRESCH); er-app is hospital-b's emergency department app, registered for
    ETREAT; record is a service holding the CheckAccess scope; dr-b a practitioner of
    hospital-b."""

    a_app: Metadata
    b_app: Metadata
    b_token: str
    er_app: Metadata
    record: Metadata
    auditor: Metadata
    patient: Metadata
    patient_user: str
    other_patient: Metadata
    practitioner: str


async def _patient(identity: Any, username: str, patient_id: str) -> tuple[Metadata, str]:
    password = "correct horse battery"
    created = await identity.stub.CreateUser(
        identity_pb2.CreateUserRequest(
            username=username,
            password=password,
            kind=identity_pb2.USER_KIND_PATIENT,
            organization="hospital-a",
            patient_id=patient_id,
        ),
        metadata=await identity.admin(),
    )
    login = await identity.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(username=username, password=password)
        )
    )
    return identity.bearer(login.access_token), created.user.user_id


@pytest.fixture
async def world(make_identity: Any) -> tuple[Any, World]:
    identity = await make_identity(break_glass_per_hour=2)

    async def client(
        client_id: str, organization: str, scopes: list[str], purposes: tuple[int, ...]
    ) -> tuple[Metadata, str]:
        key = await identity.partner(client_id, organization, scopes, purposes=purposes)
        token = await identity.client_token(client_id, key, " ".join(scopes))
        return identity.bearer(token), token

    a_app, _ = await client("hospital-a-app", "hospital-a", ["system/Consent.cruds"], (TREAT,))
    b_app, b_token = await client(
        "hospital-b-app", "hospital-b", PARTNER_SCOPES, (TREAT, HPAYMT, HRESCH)
    )
    er_app, _ = await client("er-app", "hospital-b", ["system/Observation.rs"], (TREAT, ETREAT))
    record, _ = await client("record-svc", "medledger", [CHECK_ACCESS], (TREAT,))
    auditor, _ = await client("audit-app", "medledger", [AUDIT_READ], (TREAT,))
    patient, patient_user = await _patient(identity, "pat.security", PATIENT_ID)
    other_patient, _ = await _patient(identity, "pat.security.two", OTHER_PATIENT_ID)
    practitioner = await identity.stub.CreateUser(
        identity_pb2.CreateUserRequest(
            username="dr.b",
            password="correct horse battery",
            kind=identity_pb2.USER_KIND_PRACTITIONER,
            organization="hospital-b",
        ),
        metadata=await identity.admin(),
    )
    return identity, World(
        a_app=a_app,
        b_app=b_app,
        b_token=b_token,
        er_app=er_app,
        record=record,
        auditor=auditor,
        patient=patient,
        patient_user=patient_user,
        other_patient=other_patient,
        practitioner=practitioner.user.user_id,
    )


def as_b_app(**overrides: Any) -> identity_pb2.CheckAccessRequest:
    """hospital-b-app reads the patient's Observations, with what its token says."""
    fields: dict[str, Any] = {
        "principal_id": "hospital-b-app",
        "organization": "hospital-b",
        "client_id": "hospital-b-app",
        "scopes": PARTNER_SCOPES,
        "purposes": [TREAT, HPAYMT, HRESCH],
        "patient_id": PATIENT_ID,
        "resource_type": "Observation",
        "action": identity_pb2.ACTION_READ,
        "purpose": TREAT,
    }
    fields.update(overrides)
    return identity_pb2.CheckAccessRequest(**fields)


def as_er_app(**overrides: Any) -> identity_pb2.CheckAccessRequest:
    return as_b_app(
        principal_id="er-app",
        client_id="er-app",
        scopes=["system/Observation.rs"],
        purposes=[TREAT, ETREAT],
        **overrides,
    )


async def refusal(identity: Any, call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), identity.reason(caught.value)


async def break_glass_accesses(
    identity: Any, metadata: Metadata, **filters: Any
) -> list[identity_pb2.BreakGlassAccess]:
    listed = await identity.stub.ListBreakGlassAccesses(
        identity_pb2.ListBreakGlassAccessesRequest(**filters), metadata=metadata
    )
    return list(listed.break_glass_accesses)


# --- break-glass ----------------------------------------------------------------------------


async def test_break_glass_is_not_for_anyone(world: tuple[Any, World]) -> None:
    """The finding: a partner registered for TREAT/HPAYMT/HRESCH got PERMIT BREAK_GLASS with
    ETREAT, for any patient, even one that does not exist."""
    identity, w = world
    check = identity.stub.CheckAccess
    for patient_id in (PATIENT_ID, "pat-nobody-knows"):
        decision = await check(as_b_app(patient_id=patient_id, **BREAK_GLASS), metadata=w.b_app)
        assert (decision.decision, decision.reason) == (DENY, "PURPOSE_NOT_IN_TOKEN")
    # Its token is what it is: asking about itself with ETREAT added is refused outright.
    code, reason = await refusal(
        identity, check(as_b_app(purposes=[TREAT, ETREAT], **BREAK_GLASS), metadata=w.b_app)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CHECK_ACCESS_NOT_ALLOWED")
    # Nor does a service passing on a token that claims ETREAT make it registered for it.
    claimed = await check(as_b_app(purposes=[TREAT, ETREAT], **BREAK_GLASS), metadata=w.record)
    assert (claimed.decision, claimed.reason) == (DENY, "BREAK_GLASS_NOT_ALLOWED")
    assert await break_glass_accesses(identity, await identity.admin()) == []


async def test_break_glass_for_emergency_care_ledgered_limited_and_audited(
    world: tuple[Any, World], ledger_stub: Any
) -> None:
    identity, w = world
    check = identity.stub.CheckAccess
    first = await check(as_er_app(**BREAK_GLASS), metadata=w.er_app)
    assert (first.decision, first.reason, first.break_glass) == (PERMIT, "BREAK_GLASS", True)
    # A patient no organisation is known to hold: nothing to break into.
    unknown = await check(
        as_er_app(patient_id="pat-nobody-knows", **BREAK_GLASS), metadata=w.er_app
    )
    assert (unknown.decision, unknown.reason) == (DENY, "PATIENT_NOT_FOUND")
    # Nor may the principal vouch for it; the record service may.
    code, reason = await refusal(
        identity,
        check(
            as_er_app(
                patient_id="pat-nobody-knows", patient_organization="hospital-a", **BREAK_GLASS
            ),
            metadata=w.er_app,
        ),
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PATIENT_ORGANIZATION_NOT_ALLOWED")
    for_a_practitioner = as_b_app(
        principal_id=w.practitioner,
        client_id="",
        scopes=["user/*.cruds"],
        purposes=[TREAT, ETREAT],
        patient_id="pat-record-only",
        patient_organization="hospital-a",
        **BREAK_GLASS,
    )
    held = await check(for_a_practitioner, metadata=w.record)
    assert (held.decision, held.reason) == (PERMIT, "BREAK_GLASS")
    # Two an hour each here (IDENTITY_BREAK_GLASS_PER_HOUR=2).
    second = await check(as_er_app(**BREAK_GLASS), metadata=w.er_app)
    assert second.reason == "BREAK_GLASS"
    third = await check(as_er_app(**BREAK_GLASS), metadata=w.er_app)
    assert (third.decision, third.reason) == (DENY, "BREAK_GLASS_RATE_LIMITED")

    # Auditors list each one, with its ledger entry; the reason and the patient stay home.
    listed = await break_glass_accesses(identity, w.auditor)
    assert [(a.principal_id, a.organization, a.ledgered) for a in listed] == [
        ("er-app", "hospital-b", True),
        (w.practitioner, "hospital-b", True),
        ("er-app", "hospital-b", True),
    ]
    for access in listed:
        entry = (
            await ledger_stub.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=access.leaf_index))
        ).entry
        assert entry.kind == ledger_pb2.EVENT_KIND_BREAK_GLASS
        assert (entry.actor, entry.organization) == (access.principal_id, access.organization)
        data = access.SerializeToString()
        assert b"unconscious" not in data
        assert PATIENT_ID.encode() not in data
    of_patient = await break_glass_accesses(identity, await identity.admin(), patient_id=PATIENT_ID)
    assert [a.principal_id for a in of_patient] == ["er-app", "er-app"]
    by_org = await break_glass_accesses(identity, w.auditor, organization="hospital-b", page_size=2)
    assert len(by_org) == 2
    code, reason = await refusal(identity, break_glass_accesses(identity, w.b_app))
    assert code == grpc.StatusCode.PERMISSION_DENIED


# --- who says which organisation holds the record -----------------------------------------


async def test_only_the_record_service_says_who_holds_a_record(world: tuple[Any, World]) -> None:
    """The finding: hospital-b-app claiming patient_organization hospital-b got PERMIT
    SAME_ORGANIZATION for hospital-a's patient."""
    identity, w = world
    check = identity.stub.CheckAccess
    code, reason = await refusal(
        identity, check(as_b_app(patient_organization="hospital-b"), metadata=w.b_app)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PATIENT_ORGANIZATION_NOT_ALLOWED")
    assert (await check(as_b_app(), metadata=w.b_app)).reason == "NO_CONSENT"
    said = await check(as_b_app(patient_organization="hospital-a"), metadata=w.record)
    assert (said.decision, said.reason) == (DENY, "NO_CONSENT")
    moved = await check(as_b_app(patient_organization="hospital-b"), metadata=w.record)
    assert (moved.decision, moved.reason) == (PERMIT, "SAME_ORGANIZATION")
