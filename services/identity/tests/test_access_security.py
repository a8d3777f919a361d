"""Security review, issue 11, through the whole identity server (real MongoDB, OpenBao and
ledger; tokens identity issued): break-glass only for those registered for it, for a patient
some organisation holds, rate-limited, ledgered and listed for auditors; the organisation
holding a patient's record said only by the record service; ledger entries about one patient
that a partner cannot link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.blinding import opens
from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.ledger_client import LedgerClient
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.scopes import AUDIT_READ, CHECK_ACCESS, LEDGER_READ
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.testkit.tokens import authed_channel

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


# --- what the ledger tells a partner --------------------------------------------------------


@pytest.fixture
async def patient_log(
    world: tuple[Any, World], vault_server: Any, mongo_server: Any
) -> AsyncIterator[PatientLog]:
    """identity's patient log, read as identity reads it (its database, its Vault token)."""
    identity, _ = world
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, tz_aware=True)
    vault = VaultTransit(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    )
    ledger = LedgerClient(f"127.0.0.1:{identity.ledger_port}", ServiceSettings())
    yield PatientLog(
        ledger,
        SubjectHasher(vault),
        MongoPatientLeafStore(mongo, identity.database, "identity"),
        vault,
        identity.config.secrets_key,
    )
    await ledger.aclose()
    await mongo.close()


async def all_entries(stub: Any) -> list[ledger_pb2.IndexedEntry]:
    entries: list[ledger_pb2.IndexedEntry] = []
    token = ""
    while True:
        page = await stub.ListEntries(ledger_pb2.ListEntriesRequest(page_token=token))
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


async def test_a_partner_cannot_link_entries_about_a_patient(
    world: tuple[Any, World], patient_log: PatientLog
) -> None:
    """hospital-b-app, a grantee, learns a consent and the CONSENT_GRANTED entry about the
    patient. With ledger.read, it still finds no other entry about the patient."""
    identity, w = world
    stub = identity.stub
    granted = await stub.GrantConsent(
        identity_pb2.GrantConsentRequest(
            patient_id=PATIENT_ID,
            grantee=identity_pb2.Grantee(organization="hospital-b"),
            resource_types=["Observation"],
            purposes=[TREAT],
        ),
        metadata=w.patient,
    )
    consent_id = granted.consent.consent_id
    await stub.CheckAccess(as_er_app(**BREAK_GLASS), metadata=w.er_app)
    entered = await stub.GrantConsent(
        identity_pb2.GrantConsentRequest(
            patient_id=PATIENT_ID,
            grantee=identity_pb2.Grantee(organization="hospital-b"),
            resource_types=["Condition"],
            purposes=[TREAT],
            proxy_relationship="GUARD",
        ),
        metadata=w.a_app,
    )
    await stub.RevokeConsent(
        identity_pb2.RevokeConsentRequest(consent_id=consent_id), metadata=w.patient
    )
    await stub.GrantConsent(  # another patient's, to be told apart from
        identity_pb2.GrantConsentRequest(
            patient_id=OTHER_PATIENT_ID,
            grantee=identity_pb2.Grantee(organization="hospital-b"),
            resource_types=["Observation"],
            purposes=[TREAT],
        ),
        metadata=w.other_patient,
    )

    # What the partner knows: the consent (it is the grantee) and so its GRANTED entry.
    known_consent = await stub.GetConsent(
        identity_pb2.GetConsentRequest(consent_id=consent_id), metadata=w.b_app
    )
    knowledge = [
        consent_id.encode(),
        known_consent.consent.granted_by.encode(),
        PATIENT_ID.encode(),
    ]
    async with authed_channel(f"127.0.0.1:{identity.ledger_port}", w.b_token) as channel:
        entries = await all_entries(ledger_pb2_grpc.LedgerServiceStub(channel))
    by_index = {e.leaf_index: e for e in entries}
    known = by_index[granted.receipt.leaf_index].entry
    others = [e for e in entries if e.leaf_index != granted.receipt.leaf_index]
    about_patient = {leaf.leaf_index for leaf in (await patient_log.leaves(PATIENT_ID)).items}
    assert len(about_patient) == 5  # their login, granted, break-glass, entered, revoked
    assert {granted.receipt.leaf_index, entered.receipt.leaf_index} <= about_patient

    # Every value of the known entry that could name the patient, none shared.
    for other in others:
        entry = other.entry
        assert entry.subject != known.subject
        assert not known.resource.id or entry.resource.id != known.resource.id
        assert not known.content_commitment or entry.content_commitment != known.content_commitment
        assert entry.actor != known.actor
        assert not known.trace_id or entry.trace_id != known.trace_id
    for entry in entries:
        for secret in knowledge:
            assert secret not in entry.entry_bytes

    # identity, which owns the patient's index, proves each of them is theirs, and only those.
    leaves = (await patient_log.leaves(PATIENT_ID)).items
    for leaf in leaves:
        assert leaf.leaf_index is not None
        assert opens(by_index[leaf.leaf_index].entry, leaf.opening)
        for other in others:
            if other.leaf_index not in about_patient:
                assert not opens(other.entry, leaf.opening)
    revoked = next(leaf for leaf in leaves if leaf.kind == ledger_pb2.EVENT_KIND_CONSENT_REVOKED)
    assert (revoked.opening.resource_id, revoked.opening.patient_actor) == (
        consent_id,
        w.patient_user,
    )

    # Erasure: the index and its salts are gone; the entries stay, linked to no one.
    assert await patient_log.erase(PATIENT_ID) == 5
    assert (await patient_log.leaves(PATIENT_ID)).items == ()
    assert len((await patient_log.leaves(OTHER_PATIENT_ID)).items) == 2  # login, grant


async def test_leaf_index_is_sealed(world: tuple[Any, World], mongo_server: Any) -> None:
    """What identity's database keeps of a patient's entries names neither the patient nor
    the consent: rows are sealed under the patient's data key, wrapped by Vault."""
    identity, w = world
    granted = await identity.stub.GrantConsent(
        identity_pb2.GrantConsentRequest(
            patient_id=PATIENT_ID,
            grantee=identity_pb2.Grantee(organization="hospital-b"),
            resource_types=["Observation"],
            purposes=[TREAT],
        ),
        metadata=w.patient,
    )
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    try:
        database = mongo[identity.database]
        rows = [row async for row in database["identity_patient_leaves"].find()]
        keys = [key async for key in database["identity_patient_keys"].find()]
    finally:
        await mongo.close()
    assert len(rows) == 3  # the grant, and each of the two patients' logins
    assert len(keys) == 2  # one data key per patient
    assert keys[0]["wrapped_key"].startswith("vault:")
    stored = repr(rows + keys).encode()
    for secret in (PATIENT_ID, granted.consent.consent_id, w.patient_user):
        assert secret.encode() not in stored
