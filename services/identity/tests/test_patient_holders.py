"""Issue 12, through the whole identity server (real MongoDB, OpenBao and ledger; tokens
identity issued): the record service registers which organisation holds a patient identity
has no account for, and that organisation then manages the patient's consents; conflicts
and bad input change nothing; erasing a patient leaves no consent in force, no leaf index
and no holder, once and then nothing; only the record service's scope may do either. The
patient's scan secret, handed over with the registration, keys identity's entries about the
patient (found with it, not with the pseudonym alone), is kept sealed, stays the first one
given, and is gone after erasure."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.blinding import finds, legacy_scan_key, scan_key
from medledger.common.config import VaultSettings
from medledger.common.scopes import AUDIT_READ, CHECK_ACCESS, PATIENT_DIRECTORY
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
ETREAT = purpose_pb2.PURPOSE_OF_USE_ETREAT
PERMIT = identity_pb2.DECISION_PERMIT
DENY = identity_pb2.DECISION_DENY
# A patient the record service holds, with no user account in identity.
PATIENT_ID = "pat-held-1"
CONSENT_SCOPES = ["system/Consent.cruds"]
B_SCOPES = ["system/Consent.cruds", "system/Observation.rs"]

Metadata = list[tuple[str, str]]


@dataclass
class World:
    """hospital-a holds the patient's record; hospital-b is another provider, er-app its
    emergency department app (ETREAT); record is the record service (its two scopes)."""

    a_app: Metadata
    b_app: Metadata
    er_app: Metadata
    record: Metadata
    auditor: Metadata


@pytest.fixture
async def world(identity: Any) -> World:
    async def client(
        client_id: str, organization: str, scopes: list[str], purposes: tuple[int, ...]
    ) -> Metadata:
        key = await identity.partner(client_id, organization, scopes, purposes=purposes)
        return identity.bearer(await identity.client_token(client_id, key, " ".join(scopes)))

    return World(
        a_app=await client("hospital-a-app", "hospital-a", CONSENT_SCOPES, (TREAT,)),
        b_app=await client("hospital-b-app", "hospital-b", B_SCOPES, (TREAT,)),
        er_app=await client("er-app", "hospital-b", ["system/Observation.rs"], (TREAT, ETREAT)),
        record=await client(
            "record-svc", "medledger", [CHECK_ACCESS, PATIENT_DIRECTORY], (TREAT, ETREAT)
        ),
        auditor=await client("audit-app", "medledger", [AUDIT_READ], (TREAT,)),
    )


def register(
    patient_id: str = PATIENT_ID, organization: str = "hospital-a", scan_secret: bytes = b""
) -> identity_pb2.RegisterPatientHolderRequest:
    return identity_pb2.RegisterPatientHolderRequest(
        patient_id=patient_id, organization=organization, scan_secret=scan_secret
    )


def erase(patient_id: str = PATIENT_ID) -> identity_pb2.ErasePatientDataRequest:
    return identity_pb2.ErasePatientDataRequest(patient_id=patient_id)


def grant(patient_id: str = PATIENT_ID, **overrides: Any) -> identity_pb2.GrantConsentRequest:
    fields: dict[str, Any] = {
        "patient_id": patient_id,
        "grantee": identity_pb2.Grantee(organization="hospital-b"),
        "resource_types": ["Observation"],
        "purposes": [TREAT],
    }
    fields.update(overrides)
    return identity_pb2.GrantConsentRequest(**fields)


def b_reads(patient_id: str = PATIENT_ID, **overrides: Any) -> identity_pb2.CheckAccessRequest:
    """hospital-b-app reads the patient's Observations, as the record service asks."""
    fields: dict[str, Any] = {
        "principal_id": "hospital-b-app",
        "organization": "hospital-b",
        "client_id": "hospital-b-app",
        "scopes": B_SCOPES,
        "purposes": [TREAT],
        "patient_id": patient_id,
        "resource_type": "Observation",
        "action": identity_pb2.ACTION_READ,
        "purpose": TREAT,
        "patient_organization": "hospital-a",
    }
    fields.update(overrides)
    return identity_pb2.CheckAccessRequest(**fields)


async def refused(identity: Any, call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), identity.reason(caught.value)


async def test_the_registered_holder_manages_the_patients_consents(
    identity: Any, world: World
) -> None:
    stub = identity.stub
    # Unknown to identity, the patient has no organisation yet: hospital-a may not grant.
    code, reason = await refused(identity, stub.GrantConsent(grant(), metadata=world.a_app))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_PATIENT_OR_ORGANIZATION")

    first = await stub.RegisterPatientHolder(register(), metadata=world.record)
    assert first.created
    assert (first.patient_holder.patient_id, first.patient_holder.organization) == (
        PATIENT_ID,
        "hospital-a",
    )
    again = await stub.RegisterPatientHolder(register(), metadata=world.record)
    assert not again.created  # a retry: the first registration, unchanged
    assert again.patient_holder == first.patient_holder

    granted = await stub.GrantConsent(grant(), metadata=world.a_app)
    consent = granted.consent
    assert consent.grantor_role == identity_pb2.GRANTOR_ROLE_RECORD_HOLDER
    assert consent.granted_by == "hospital-a-app"
    read = identity_pb2.GetConsentRequest(consent_id=consent.consent_id)
    assert (await stub.GetConsent(read, metadata=world.a_app)).consent == consent
    listed = await stub.ListConsents(
        identity_pb2.ListConsentsRequest(patient_id=PATIENT_ID), metadata=world.a_app
    )
    assert [c.consent_id for c in listed.consents] == [consent.consent_id]

    # Another organisation may not manage them, even the grantee.
    for attempt, expected in (
        (
            stub.GrantConsent(
                grant(grantee=identity_pb2.Grantee(organization="hospital-b")),
                metadata=world.b_app,
            ),
            "NOT_PATIENT_OR_ORGANIZATION",
        ),
        (
            stub.RevokeConsent(
                identity_pb2.RevokeConsentRequest(consent_id=consent.consent_id),
                metadata=world.b_app,
            ),
            "NOT_PATIENT_OR_ORGANIZATION",
        ),
        (
            stub.ListConsents(
                identity_pb2.ListConsentsRequest(patient_id=PATIENT_ID), metadata=world.b_app
            ),
            "CONSENT_LIST_NOT_ALLOWED",
        ),
    ):
        code, reason = await refused(identity, attempt)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, expected)

    # hospital-b-app asking about itself: the registered holder is the patient's
    # organisation, the consent lets hospital-b in; hospital-a's own app is at home.
    itself = b_reads(patient_organization="")
    decision = await stub.CheckAccess(itself, metadata=world.b_app)
    assert (decision.decision, decision.reason) == (PERMIT, "CONSENT_PERMITS")
    at_home = b_reads(
        principal_id="hospital-a-app",
        organization="hospital-a",
        client_id="hospital-a-app",
        scopes=CONSENT_SCOPES,
        resource_type="Consent",
        patient_organization="",
    )
    decision = await stub.CheckAccess(at_home, metadata=world.a_app)
    assert (decision.decision, decision.reason) == (PERMIT, "SAME_ORGANIZATION")

    revoked = await stub.RevokeConsent(
        identity_pb2.RevokeConsentRequest(consent_id=consent.consent_id), metadata=world.a_app
    )
    assert revoked.consent.status == identity_pb2.CONSENT_STATUS_REVOKED
    decision = await stub.CheckAccess(itself, metadata=world.b_app)
    assert (decision.decision, decision.reason) == (DENY, "NO_CONSENT")


async def test_one_holder_per_patient(identity: Any, world: World) -> None:
    stub = identity.stub
    admin = await identity.admin()
    await stub.RegisterPatientHolder(register(), metadata=world.record)
    code, reason = await refused(
        identity,
        stub.RegisterPatientHolder(register(organization="hospital-b"), metadata=world.record),
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLDER_CONFLICT")
    # Nothing changed: hospital-a still holds the record, hospital-b still may not manage it.
    await stub.GrantConsent(grant(), metadata=world.a_app)
    code, _ = await refused(identity, stub.GrantConsent(grant(), metadata=world.b_app))
    assert code == grpc.StatusCode.PERMISSION_DENIED

    # Nor may a patient account of another organisation be created for that patient.
    code, reason = await refused(
        identity,
        stub.CreateUser(
            identity_pb2.CreateUserRequest(
                username="pat.held",
                password="correct horse battery",
                kind=identity_pb2.USER_KIND_PATIENT,
                organization="hospital-b",
                patient_id=PATIENT_ID,
            ),
            metadata=admin,
        ),
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLDER_CONFLICT")

    # A patient with an account at hospital-b: hospital-a is not their holder, hospital-b is.
    await stub.CreateUser(
        identity_pb2.CreateUserRequest(
            username="pat.other",
            password="correct horse battery",
            kind=identity_pb2.USER_KIND_PATIENT,
            organization="hospital-b",
            patient_id="pat-held-2",
        ),
        metadata=admin,
    )
    code, reason = await refused(
        identity,
        stub.RegisterPatientHolder(register("pat-held-2", "hospital-a"), metadata=world.record),
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLDER_CONFLICT")
    registered = await stub.RegisterPatientHolder(
        register("pat-held-2", "hospital-b"), metadata=world.record
    )
    assert registered.created


async def test_bad_input_is_named_never_echoed(identity: Any, world: World) -> None:
    secret = "Jane Doe born 1970"
    cases = [
        ("RegisterPatientHolder", register("", ""), ["patient_id", "organization"]),
        ("RegisterPatientHolder", register(secret, "hospital-a"), ["patient_id"]),
        ("RegisterPatientHolder", register(PATIENT_ID, "Hospital A!"), ["organization"]),
        ("RegisterPatientHolder", register("x" * 65, "-a"), ["patient_id", "organization"]),
        ("ErasePatientData", erase(""), ["patient_id"]),
        ("ErasePatientData", erase(secret), ["patient_id"]),
    ]
    for method, message, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(identity.stub, method)(message, metadata=world.record)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, fields)
        assert identity.bad_fields(caught.value) == fields, method
        assert secret not in (caught.value.details() or "")
    code, reason = await refused(
        identity,
        identity.stub.RegisterPatientHolder(
            register(organization="no-such-hospital"), metadata=world.record
        ),
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ORGANIZATION_NOT_FOUND")


async def test_only_the_record_services_scope_may_call(identity: Any, world: World) -> None:
    stub = identity.stub
    check_access_only = identity.bearer(
        await identity.client_token(
            "checker",
            await identity.partner("checker", "medledger", [CHECK_ACCESS]),
            CHECK_ACCESS,
        )
    )
    admin = await identity.admin()
    # Not even an admin: only the record service knows who created a Patient.
    for metadata in (world.a_app, world.b_app, world.auditor, check_access_only, admin):
        for call in (
            stub.RegisterPatientHolder(register(), metadata=metadata),
            stub.ErasePatientData(erase(), metadata=metadata),
        ):
            code, reason = await refused(identity, call)
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    for call in (stub.RegisterPatientHolder(register()), stub.ErasePatientData(erase())):
        code, _ = await refused(identity, call)
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def _stored(mongo_server: Any, database: str) -> dict[str, int]:
    """How many documents identity's database keeps of patients (this test's only)."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    try:
        db = mongo[database]
        return {
            name: await db[name].count_documents({})
            for name in (
                "identity_consents",
                "identity_patient_leaves",
                "identity_patient_keys",
                "identity_patient_holders",
            )
        }
    finally:
        await mongo.close()


async def test_erasure_leaves_no_consent_in_force_once(
    identity: Any, world: World, mongo_server: Any
) -> None:
    stub = identity.stub
    await stub.RegisterPatientHolder(register(), metadata=world.record)
    # An emergency read (a practitioner app registered for ETREAT, no consent): permitted
    # because some organisation holds the patient, audited with the patient.
    broke = await stub.CheckAccess(
        b_reads(
            principal_id="er-app",
            client_id="er-app",
            scopes=["system/Observation.rs"],
            purposes=[TREAT, ETREAT],
            purpose=ETREAT,
            break_glass_reason="unconscious in the ED",
            patient_organization="",
        ),
        metadata=world.er_app,
    )
    assert (broke.decision, broke.reason) == (PERMIT, "BREAK_GLASS")
    kept = await stub.GrantConsent(grant(), metadata=world.a_app)
    ended = await stub.GrantConsent(grant(resource_types=["Condition"]), metadata=world.a_app)
    await stub.RevokeConsent(
        identity_pb2.RevokeConsentRequest(consent_id=ended.consent.consent_id),
        metadata=world.a_app,
    )
    decision = await stub.CheckAccess(b_reads(), metadata=world.record)
    assert (decision.decision, decision.reason) == (PERMIT, "CONSENT_PERMITS")
    audited = identity_pb2.ListBreakGlassAccessesRequest(patient_id=PATIENT_ID)
    assert (
        len(
            (
                await stub.ListBreakGlassAccesses(audited, metadata=world.auditor)
            ).break_glass_accesses
        )
        == 1
    )
    before = await _stored(mongo_server, identity.database)
    assert before == {
        "identity_consents": 2,
        # BREAK_GLASS, two CONSENT_GRANTED, CONSENT_REVOKED: the patient's entries
        "identity_patient_leaves": 4,
        "identity_patient_keys": 1,
        "identity_patient_holders": 1,
    }

    erased = await stub.ErasePatientData(erase(), metadata=world.record)
    assert erased == identity_pb2.ErasePatientDataResponse(
        consents_deleted=2,
        ledger_index_rows_destroyed=4,
        break_glass_accesses_unlinked=1,
        holder_registrations_deleted=1,
    )
    assert await _stored(mongo_server, identity.database) == dict.fromkeys(before, 0)
    # The consent that let hospital-b read permits nothing, and is gone for its grantee too.
    decision = await stub.CheckAccess(b_reads(), metadata=world.record)
    assert (decision.decision, decision.reason) == (DENY, "NO_CONSENT")
    code, _ = await refused(
        identity,
        stub.GetConsent(
            identity_pb2.GetConsentRequest(consent_id=kept.consent.consent_id),
            metadata=world.b_app,
        ),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    # The holder is forgotten: hospital-a no longer manages consents of the patient.
    code, _ = await refused(identity, stub.GrantConsent(grant(), metadata=world.a_app))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The break-glass access stays audited, no longer about the patient.
    assert not (
        await stub.ListBreakGlassAccesses(audited, metadata=world.auditor)
    ).break_glass_accesses
    everyone = identity_pb2.ListBreakGlassAccessesRequest()
    (access,) = (
        await stub.ListBreakGlassAccesses(everyone, metadata=world.auditor)
    ).break_glass_accesses
    assert (access.principal_id, access.ledgered) == ("er-app", True)

    # Again (a retry, or a patient identity never knew): nothing left, nothing done.
    for patient_id in (PATIENT_ID, "pat-never-seen"):
        again = await stub.ErasePatientData(erase(patient_id), metadata=world.record)
        assert again == identity_pb2.ErasePatientDataResponse()


async def test_the_scan_secret_keys_identitys_entries_until_erasure(
    identity: Any,
    world: World,
    mongo_server: Any,
    vault_server: Any,
    identity_vault_token: str,
    ledger_stub: ledger_pb2_grpc.LedgerServiceAsyncStub,
) -> None:
    stub = identity.stub
    secret = os.urandom(32)
    code, reason = await refused(
        identity, stub.RegisterPatientHolder(register(scan_secret=b"short"), metadata=world.record)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await stub.RegisterPatientHolder(register(scan_secret=secret), metadata=world.record)
    # The same again (a retry) is fine; another secret changes nothing.
    await stub.RegisterPatientHolder(register(scan_secret=secret), metadata=world.record)
    code, reason = await refused(
        identity,
        stub.RegisterPatientHolder(register(scan_secret=os.urandom(32)), metadata=world.record),
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SCAN_SECRET_CONFLICT")

    granted = await stub.GrantConsent(grant(), metadata=world.a_app)
    entries = await identity.ledger_entries(ledger_stub)
    index = int(granted.receipt.leaf_index)
    entry = next(e.entry for e in entries if e.leaf_index == index)
    hasher = SubjectHasher(
        VaultTransit(VaultSettings(addr=vault_server.addr, token=identity_vault_token))
    )
    pseudonym = await hasher.subject(PATIENT_ID)
    # Keyed by the scan secret: found with it, not with what the pseudonym alone makes.
    assert finds(entry, pseudonym, scan_key(secret))
    assert not finds(entry, pseudonym, legacy_scan_key(pseudonym))
    assert [e.leaf_index for e in entries if finds(e.entry, pseudonym, scan_key(secret))] == [index]

    # Kept sealed in the patient's key row, never in clear.
    patient_key = hashlib.sha256(b"medledger.patient-leaf-index\x00" + pseudonym).hexdigest()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    try:
        keys = mongo[identity.database]["identity_patient_keys"]
        row = await keys.find_one({"_id": patient_key})
        assert row is not None
        assert secret not in bytes(row["scan_secret"])
        await stub.ErasePatientData(erase(), metadata=world.record)
        assert await keys.find_one({"_id": patient_key}) is None
    finally:
        await mongo.close()
    assert entry == ledger_pb2.LedgerEntry.FromString(entry.SerializeToString())
