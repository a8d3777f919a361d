"""Consents and CheckAccess against real MongoDB, OpenBao and an in-process ledger, the caller
set as the auth interceptor sets it: grants and revocations ledgered with verifiable receipts
and no PHI, expiry, break-glass ledgered and audited, the FHIR export, pagination, who may do
what. Over gRPC through the whole identity server: test_consent_server.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from fhir.resources.R4B.consent import Consent as FhirConsent
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.blinding import opens
from medledger.common.config import MongoSettings, ServiceSettings, VaultSettings
from medledger.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from medledger.common.interceptors import Principal, current_principal
from medledger.common.ledger_client import LedgerClient
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.scopes import AUDIT_READ, LEDGER_APPEND, LEDGER_READ
from medledger.common.server import ServiceServer
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.devstack.process import free_port
from medledger.identity.adapters.consent_store import CONSENTS, ConsentStore
from medledger.identity.adapters.ledger_events import LedgerEvents
from medledger.identity.consent_rpc import ConsentRpcs
from medledger.identity.domain.access import AccessControl, Actor, BreakGlassPolicy
from medledger.identity.domain.consent import Grantee
from medledger.identity.domain.consent_registry import ConsentRegistry
from medledger.identity.domain.ports import Client
from medledger.identity.domain.scopes import CHECK_ACCESS
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.verify import verify_inclusion

ORIGIN = "consent.test/ledger"
TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
ETREAT = purpose_pb2.PURPOSE_OF_USE_ETREAT
HRESCH = purpose_pb2.PURPOSE_OF_USE_HRESCH
PERMIT = identity_pb2.DECISION_PERMIT
DENY = identity_pb2.DECISION_DENY

CLINICAL = frozenset({"TREAT", "ETREAT", "HOPERAT"})
STAFF_A = Principal("dr-a", "org-a", "", frozenset({"user/*.cruds"}), CLINICAL)
STAFF_B = Principal("dr-b", "org-b", "", frozenset({"user/*.cruds"}), CLINICAL)
# A partner app registered for TREAT, HPAYMT and HRESCH (not ETREAT).
PARTNER_PURPOSES = frozenset({"TREAT", "HPAYMT", "HRESCH"})
PARTNER = Principal(
    "lab-app", "org-b", "lab-app", frozenset({"system/Observation.rs"}), PARTNER_PURPOSES
)
# An emergency department's app of org-b, registered for ETREAT.
ER_APP = {
    "principal_id": "er-app",
    "client_id": "er-app",
    "organization": "org-b",
    "purposes": [TREAT, ETREAT],
}
RECORD_SERVICE = Principal("record", "medledger", "record", frozenset({CHECK_ACCESS}))
AUDITOR = Actor("auditor-app", "medledger", "auditor-app", frozenset({AUDIT_READ}))


class Clock:
    """Real time, movable forward (expiry without sleeping)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Harness:
    rpcs: ConsentRpcs
    registry: ConsentRegistry  # for what is not an RPC yet (the break-glass audit)
    store: ConsentStore
    database: Any
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    hasher: SubjectHasher
    leaves: MongoPatientLeafStore
    vault: VaultTransit
    patients: PatientLog  # identity's patient log, as wired
    ledger_client: LedgerClient
    clock: Clock
    patient_id: str
    patient_user: str
    # Parts to build a second ConsentRpcs on the same data (e.g. with the ledger down).
    directory: Directory

    def patient(self) -> Principal:
        return Principal(self.patient_user, "org-a", "", frozenset({"patient/*.cruds"}))

    def with_ledger(self, ledger: LedgerClient) -> ConsentRpcs:
        return wired(self.store, ledger, self.patient_log(ledger), self.directory, self.clock)[0]

    def patient_log(self, ledger: LedgerClient) -> PatientLog:
        """As identity keeps its patients' leaf indexes."""
        return PatientLog(ledger, self.hasher, self.leaves, self.vault, "identity-secrets")


def wired(
    store: ConsentStore,
    ledger: LedgerClient,
    patients: PatientLog,
    directory: Directory,
    clock: Clock,
    *,
    per_hour: int = 10,
) -> tuple[ConsentRpcs, ConsentRegistry]:
    """Wired as identity's runtime wires them, with ``directory`` for identity's users."""
    events = LedgerEvents(ledger, patients)
    access = AccessControl(
        store, store, events, directory, break_glass=BreakGlassPolicy(per_hour), clock=clock
    )
    registry = ConsentRegistry(store, store, events, directory, access, clock=clock)
    return ConsentRpcs(registry, access), registry


class Directory:
    """Stands in for identity's users and organisations (the ``Parties`` port): who is
    which patient, which organisation holds them, which grantees exist. The real one is
    tested through the identity server (test_consent_server.py)."""

    def __init__(self) -> None:
        self.organizations: dict[str, str] = {}
        self.patients: dict[str, str] = {}
        self.practitioners: dict[str, str] = {}
        self.clients: dict[str, Client] = {}

    async def patient_organization(self, patient_id: str) -> str | None:
        return self.organizations.get(patient_id)

    async def patient_of_user(self, user_id: str) -> str | None:
        return self.patients.get(user_id)

    async def practitioner_organization(self, user_id: str) -> str | None:
        return self.practitioners.get(user_id)

    async def client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def register_client(self, client_id: str, organization: str, *purposes: str) -> None:
        self.clients[client_id] = Client(
            client_id, organization, "{}", (), purposes, "", datetime.now(UTC)
        )

    async def grantee_exists(self, grantee: Grantee) -> bool:
        return True  # every grantee these tests name


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    token = current_principal.set(principal)
    try:
        yield
    finally:
        current_principal.reset(token)


@pytest.fixture(scope="module")
async def consent_ledger(mongo_server: Any, vault_server: Any) -> AsyncIterator[str]:
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0, health_interval_seconds=0.2),
        LedgerConfig(origin=ORIGIN, lease_ttl_seconds=2),
        MongoSettings.model_validate(
            {
                "MONGODB_URI": mongo_server.uri,
                "MEDLEDGER_MONGODB_DATABASE": f"l{uuid.uuid4().hex[:10]}",
            }
        ),
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    address = f"127.0.0.1:{server.port}"
    async with TEST_TOKENS.channel(address, [LEDGER_READ]) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(100):  # until the sequencer holds its lease and has a checkpoint
            try:
                await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    yield address
    await server.stop(0)


@pytest.fixture
async def harness(
    mongo_server: Any, vault_server: Any, consent_ledger: str
) -> AsyncIterator[Harness]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, tz_aware=True)
    name = f"i{uuid.uuid4().hex[:10]}"
    store = ConsentStore(mongo, name)
    await store.ensure_indexes()
    vault = VaultTransit(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    )
    hasher = SubjectHasher(vault)
    ledger = LedgerClient(
        consent_ledger, ServiceSettings(), token=TEST_TOKENS.source([LEDGER_APPEND])
    )
    patient_id = f"pat-{uuid.uuid4().hex[:12]}"
    patient_user = f"user-{uuid.uuid4().hex[:12]}"
    directory = Directory()
    directory.organizations[patient_id] = "org-a"
    directory.patients[patient_user] = patient_id
    directory.practitioners.update({"dr-a": "org-a", "dr-b": "org-b"})
    directory.register_client("lab-app", "org-b", "TREAT", "HPAYMT", "HRESCH")
    directory.register_client("er-app", "org-b", "TREAT", "ETREAT")
    clock = Clock()
    channel = TEST_TOKENS.channel(consent_ledger, [LEDGER_READ])
    leaves = MongoPatientLeafStore(mongo, name, "identity")
    patients = PatientLog(ledger, hasher, leaves, vault, "identity-secrets")
    rpcs, registry = wired(store, ledger, patients, directory, clock)
    harness = Harness(
        rpcs=rpcs,
        registry=registry,
        store=store,
        database=mongo[name],
        ledger=ledger_pb2_grpc.LedgerServiceStub(channel),
        hasher=hasher,
        leaves=leaves,
        vault=vault,
        patients=patients,
        ledger_client=ledger,
        clock=clock,
        patient_id=patient_id,
        patient_user=patient_user,
        directory=directory,
    )
    yield harness
    await channel.close(None)
    await ledger.aclose()
    await mongo.close()


@pytest.fixture
async def dead_ledger() -> AsyncIterator[LedgerClient]:
    client = LedgerClient(f"127.0.0.1:{free_port()}", ServiceSettings())
    yield client
    await client.aclose()


def stamp(when: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(when)
    return value


def grant_request(h: Harness, **overrides: Any) -> identity_pb2.GrantConsentRequest:
    fields: dict[str, Any] = {
        "patient_id": h.patient_id,
        "grantee": identity_pb2.Grantee(organization="org-b"),
        "resource_types": ["Observation"],
        "purposes": [TREAT],
    }
    fields.update(overrides)
    return identity_pb2.GrantConsentRequest(**fields)


def check_request(h: Harness, **overrides: Any) -> identity_pb2.CheckAccessRequest:
    """The partner lab app of org-b reads one of org-a's patient's Observations."""
    fields: dict[str, Any] = {
        "principal_id": PARTNER.subject,
        "organization": PARTNER.organization,
        "client_id": PARTNER.client_id,
        "scopes": sorted(PARTNER.scopes),
        "patient_id": h.patient_id,
        "resource_type": "Observation",
        "action": identity_pb2.ACTION_READ,
        "purpose": TREAT,
        "purposes": [TREAT, purpose_pb2.PURPOSE_OF_USE_HPAYMT, HRESCH],
    }
    fields.update(overrides)
    return identity_pb2.CheckAccessRequest(**fields)


async def grant(h: Harness, **overrides: Any) -> identity_pb2.GrantConsentResponse:
    with acting_as(h.patient()):
        return await h.rpcs.GrantConsent(grant_request(h, **overrides), None)


async def check(h: Harness, **overrides: Any) -> identity_pb2.CheckAccessResponse:
    with acting_as(RECORD_SERVICE):
        return await h.rpcs.CheckAccess(check_request(h, **overrides), None)


async def ledger_entry(h: Harness, index: int) -> ledger_pb2.GetEntryResponse:
    return await h.ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=index))


async def verify_receipt(h: Harness, receipt: ledger_pb2.Receipt) -> bytes:
    """Checks the receipt with public material only; returns the entry's bytes."""
    vkey = (await h.ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    checkpoint = verify_checkpoint(receipt.checkpoint, [vkey], [], 0, origin=ORIGIN)
    verify_inclusion(
        receipt.leaf_hash,
        receipt.leaf_index,
        checkpoint.size,
        list(receipt.inclusion_proof),
        checkpoint.root_hash,
    )
    data = (await ledger_entry(h, receipt.leaf_index)).entry_bytes
    assert receipt.leaf_hash == leaf_hash(data)
    return bytes(data)


# --- grant, decide, revoke ------------------------------------------------------------------------


async def test_grant_permits_and_is_ledgered_without_phi(harness: Harness) -> None:
    h = harness
    assert (await check(h)).reason == "NO_CONSENT"
    response = await grant(h)
    consent = response.consent
    assert consent.status == identity_pb2.CONSENT_STATUS_ACTIVE
    assert consent.granted_by == h.patient_user
    assert consent.grantor_role == identity_pb2.GRANTOR_ROLE_PATIENT
    data = await verify_receipt(h, response.receipt)
    entry = (await ledger_entry(h, response.receipt.leaf_index)).entry
    assert entry.kind == ledger_pb2.EVENT_KIND_CONSENT_GRANTED
    # Blinded: neither the patient's pseudonym, nor the consent id, nor the patient's user.
    assert len(entry.subject) == 32
    assert entry.subject != await h.hasher.subject(h.patient_id)
    assert entry.resource.type == "Consent"
    assert consent.consent_id.encode() not in data
    assert entry.actor.startswith("patient:")
    assert h.patient_user.encode() not in data
    assert entry.organization == "org-a"
    assert len(entry.content_commitment) == 32
    assert h.patient_id.encode() not in data
    # identity, owning the patient's leaf index, proves the entry is theirs.
    (leaf,) = (await h.patients.leaves(h.patient_id)).items
    assert (leaf.leaf_index, leaf.leaf_hash) == (response.receipt.leaf_index, leaf_hash(data))
    assert opens(entry, leaf.opening)
    assert (leaf.opening.resource_id, leaf.opening.patient_actor) == (
        consent.consent_id,
        h.patient_user,
    )

    decision = await check(h)
    assert (decision.decision, decision.reason, decision.consent_id) == (
        PERMIT,
        "CONSENT_PERMITS",
        consent.consent_id,
    )


async def test_revocation_stands_when_the_ledger_is_down(
    harness: Harness, dead_ledger: LedgerClient
) -> None:
    h = harness
    consent_id = (await grant(h)).consent.consent_id
    cut_off = h.with_ledger(dead_ledger)
    with acting_as(h.patient()), pytest.raises(Unavailable):
        await cut_off.RevokeConsent(identity_pb2.RevokeConsentRequest(consent_id=consent_id), None)
    assert (await check(h)).decision == DENY  # revoked even though not yet ledgered
    with acting_as(h.patient()):  # the retry ledgers it, once
        first = await h.rpcs.RevokeConsent(
            identity_pb2.RevokeConsentRequest(consent_id=consent_id), None
        )
        again = await h.rpcs.RevokeConsent(
            identity_pb2.RevokeConsentRequest(consent_id=consent_id), None
        )
    assert first.receipt.leaf_index == again.receipt.leaf_index
    await verify_receipt(h, first.receipt)


async def test_grant_is_not_stored_when_the_ledger_is_down(
    harness: Harness, dead_ledger: LedgerClient
) -> None:
    h = harness
    with acting_as(h.patient()), pytest.raises(Unavailable):
        await h.with_ledger(dead_ledger).GrantConsent(grant_request(h), None)
    assert await h.database[CONSENTS].count_documents({}) == 0
    assert (await check(h)).decision == DENY


async def test_idempotent_grant(harness: Harness) -> None:
    h = harness
    first = await grant(h, idempotency_key="k-1")
    again = await grant(h, idempotency_key="k-1")
    assert again.consent.consent_id == first.consent.consent_id
    assert again.receipt.leaf_index == first.receipt.leaf_index
    with pytest.raises(FailedPrecondition) as caught:
        await grant(h, idempotency_key="k-1", purposes=[HRESCH])
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # Keys are per caller: the same key from someone else is another grant.
    with acting_as(STAFF_A):
        other = await h.rpcs.GrantConsent(grant_request(h, idempotency_key="k-1"), None)
    assert other.consent.consent_id != first.consent.consent_id


async def test_expiry(harness: Harness) -> None:
    h = harness
    end = h.clock() + timedelta(hours=1)
    consent_id = (await grant(h, period_end=stamp(end))).consent.consent_id
    assert (await check(h)).decision == PERMIT
    h.clock.offset = timedelta(hours=2)
    decision = await check(h)
    assert (decision.decision, decision.reason) == (DENY, "NO_CONSENT")
    with acting_as(h.patient()):
        got = (
            await h.rpcs.GetConsent(identity_pb2.GetConsentRequest(consent_id=consent_id), None)
        ).consent
        expired = await h.rpcs.ListConsents(
            identity_pb2.ListConsentsRequest(
                patient_id=h.patient_id, status=identity_pb2.CONSENT_STATUS_EXPIRED
            ),
            None,
        )
        active = await h.rpcs.ListConsents(
            identity_pb2.ListConsentsRequest(
                patient_id=h.patient_id, status=identity_pb2.CONSENT_STATUS_ACTIVE
            ),
            None,
        )
    assert got.status == identity_pb2.CONSENT_STATUS_EXPIRED
    assert json.loads(got.fhir_json)["status"] == "inactive"
    assert [c.consent_id for c in expired.consents] == [consent_id]
    assert list(active.consents) == []


async def test_period_not_yet_started(harness: Harness) -> None:
    h = harness
    await grant(h, period_start=stamp(h.clock() + timedelta(hours=1)))
    assert (await check(h)).reason == "NO_CONSENT"
    h.clock.offset = timedelta(hours=2)
    assert (await check(h)).reason == "CONSENT_PERMITS"


async def test_purpose_resource_type_and_category_coverage(harness: Harness) -> None:
    h = harness
    await grant(h)
    assert (await check(h, purpose=HRESCH)).reason == "PURPOSE_NOT_ALLOWED"
    wide = sorted({"system/*.rs"})
    assert (await check(h, resource_type="Condition", scopes=wide)).reason == "NO_CONSENT"
    assert (await check(h, resource_type="Condition")).reason == "SCOPE_MISSING"
    # A category-only consent does not cover data whose category CheckAccess is not told.
    await grant(
        h,
        grantee=identity_pb2.Grantee(client_id="other-app"),
        resource_types=[],
        categories=["laboratory"],
    )
    other_app = {"principal_id": "other-app", "client_id": "other-app", "organization": "org-c"}
    assert (await check(h, **other_app)).reason == "NO_CONSENT"


async def test_grantee_client_and_user(harness: Harness) -> None:
    h = harness
    await grant(h, grantee=identity_pb2.Grantee(client_id="lab-app"))
    await grant(h, grantee=identity_pb2.Grantee(user_id="dr-c"))
    assert (await check(h, organization="org-z")).reason == "CONSENT_PERMITS"  # via client
    user = {
        "principal_id": "dr-c",
        "organization": "org-c",
        "client_id": "",
        "scopes": ["user/Observation.rs"],
    }
    assert (await check(h, **user)).reason == "CONSENT_PERMITS"
    assert (await check(h, **(user | {"principal_id": "dr-d"}))).reason == "NO_CONSENT"


async def test_same_organization_needs_the_scope(harness: Harness) -> None:
    h = harness
    staff = {"principal_id": "dr-a", "organization": "org-a", "client_id": ""}
    decision = await check(h, **staff, scopes=["user/Observation.rs"])
    assert (decision.decision, decision.reason) == (PERMIT, "SAME_ORGANIZATION")
    decision = await check(h, **staff, scopes=["user/Condition.rs"])
    assert (decision.decision, decision.reason) == (DENY, "SCOPE_MISSING")
    # The record holder's word wins over the patient's account.
    moved = await check(h, **staff, scopes=["user/Observation.rs"], patient_organization="org-z")
    assert moved.reason == "NO_CONSENT"


async def test_patient_self(harness: Harness) -> None:
    h = harness
    me = {"principal_id": h.patient_user, "organization": "org-a", "client_id": ""}
    decision = await check(h, **me, scopes=["patient/*.rs"])
    assert (decision.decision, decision.reason) == (PERMIT, "PATIENT_SELF")
    someone_else = await check(h, **me, scopes=["patient/*.rs"], patient_id="pat-other")
    assert someone_else.reason == "SCOPE_MISSING"


# --- break-glass --------------------------------------------------------------------------------


async def test_break_glass_needs_a_reason(harness: Harness) -> None:
    h = harness
    with pytest.raises(InvalidArgument) as caught:
        await check(h, **ER_APP, purpose=ETREAT)
    assert [v.field for v in caught.value.violations] == ["break_glass_reason"]
    with pytest.raises(InvalidArgument) as caught:
        await check(h, **ER_APP, purpose=TREAT, break_glass_reason="unconscious in ER")
    assert [v.field for v in caught.value.violations] == ["break_glass_reason"]
    assert await h.database["identity_break_glass"].count_documents({}) == 0


async def test_break_glass_permits_ledgers_and_is_audited(harness: Harness) -> None:
    h = harness
    reason = "patient unconscious in ER, allergy history needed"
    decision = await check(h, **ER_APP, purpose=ETREAT, break_glass_reason=reason)
    assert (decision.decision, decision.reason, decision.break_glass) == (
        PERMIT,
        "BREAK_GLASS",
        True,
    )
    records = (await h.registry.list_break_glass(AUDITOR, patient_id=h.patient_id)).items
    assert len(records) == 1
    record = records[0]
    assert (record.reason, record.principal_id, record.organization) == (reason, "er-app", "org-b")
    assert abs(record.time - h.clock()) < timedelta(seconds=10)
    assert record.leaf_index is not None
    by_organization = (await h.registry.list_break_glass(AUDITOR, organization="org-b")).items
    assert record.record_id in {r.record_id for r in by_organization}
    with pytest.raises(PermissionDenied):  # auditors only
        await h.registry.list_break_glass(Actor("er-app", "org-b", "er-app", frozenset()))

    found = await ledger_entry(h, record.leaf_index)
    entry, data = found.entry, bytes(found.entry_bytes)
    assert entry.kind == ledger_pb2.EVENT_KIND_BREAK_GLASS
    assert (entry.actor, entry.organization) == ("er-app", "org-b")
    assert entry.subject != await h.hasher.subject(h.patient_id)
    assert record.record_id.encode() not in data
    assert entry.resource.type == "Observation"
    assert entry.purpose == ETREAT
    assert entry.content_commitment == record.commitment()
    assert h.patient_id.encode() not in data
    for word in reason.split():
        if len(word) > 3:
            assert word.encode() not in data
    (leaf,) = (await h.patients.leaves(h.patient_id)).items
    assert leaf.leaf_index == record.leaf_index
    assert opens(entry, leaf.opening)


async def test_break_glass_only_for_those_registered_for_it(harness: Harness) -> None:
    """Practitioners, and clients registered for ETREAT, of the organisation in their token;
    never a partner app whose token lacks ETREAT, nor one claiming it without registration."""
    h = harness
    reason = {"purpose": ETREAT, "break_glass_reason": "cardiac arrest"}
    # The partner app of the finding: TREAT, HPAYMT and HRESCH only.
    assert (await check(h, **reason)).reason == "PURPOSE_NOT_IN_TOKEN"
    # A token saying ETREAT does not make a client registered without it one that may.
    claimed = await check(h, **reason, purposes=[TREAT, ETREAT])
    assert (claimed.decision, claimed.reason) == (DENY, "BREAK_GLASS_NOT_ALLOWED")
    elsewhere = ER_APP | {"organization": "org-c"}  # its registration says org-b
    assert (await check(h, **elsewhere, **reason)).reason == "BREAK_GLASS_NOT_ALLOWED"
    practitioner = {
        "principal_id": "dr-b",
        "client_id": "",
        "organization": "org-b",
        "scopes": ["user/*.cruds"],
        "purposes": [TREAT, ETREAT],
    }
    assert (await check(h, **practitioner, **reason)).reason == "BREAK_GLASS"
    not_a_practitioner = practitioner | {"principal_id": "clerk-b"}
    assert (await check(h, **not_a_practitioner, **reason)).reason == "BREAK_GLASS_NOT_ALLOWED"
    records = (await h.registry.list_break_glass(AUDITOR, patient_id=h.patient_id)).items
    assert [r.principal_id for r in records] == ["dr-b"]


async def test_break_glass_only_for_a_patient_someone_holds(harness: Harness) -> None:
    h = harness
    reason = {"purpose": ETREAT, "break_glass_reason": "cardiac arrest"}
    nobody = await check(h, **ER_APP, **reason, patient_id="pat-made-up")
    assert (nobody.decision, nobody.reason) == (DENY, "PATIENT_NOT_FOUND")
    # The record service knows the patients it holds, with or without a user account.
    held = await check(
        h, **ER_APP, **reason, patient_id="pat-made-up", patient_organization="org-a"
    )
    assert (held.decision, held.reason) == (PERMIT, "BREAK_GLASS")


async def test_break_glass_is_rate_limited_per_principal(harness: Harness) -> None:
    h = harness
    rpcs, _ = wired(h.store, h.ledger_client, h.patients, h.directory, h.clock, per_hour=2)
    reason = {"purpose": ETREAT, "break_glass_reason": "mass casualty"}

    async def break_glass(**who: Any) -> str:
        with acting_as(RECORD_SERVICE):
            return (await rpcs.CheckAccess(check_request(h, **who, **reason), None)).reason

    assert [await break_glass(**ER_APP) for _ in range(3)] == [
        "BREAK_GLASS",
        "BREAK_GLASS",
        "BREAK_GLASS_RATE_LIMITED",
    ]
    colleague = {
        "principal_id": "dr-b",
        "client_id": "",
        "organization": "org-b",
        "scopes": ["user/*.cruds"],
        "purposes": [ETREAT],
    }
    assert await break_glass(**colleague) == "BREAK_GLASS"  # per principal
    h.clock.offset = timedelta(hours=1, seconds=1)
    assert await break_glass(**ER_APP) == "BREAK_GLASS"


async def test_break_glass_is_refused_when_the_ledger_is_down(
    harness: Harness, dead_ledger: LedgerClient
) -> None:
    h = harness
    with acting_as(RECORD_SERVICE), pytest.raises(Unavailable):
        await h.with_ledger(dead_ledger).CheckAccess(
            check_request(h, **ER_APP, purpose=ETREAT, break_glass_reason="cardiac arrest"), None
        )
    records = (await h.registry.list_break_glass(AUDITOR, patient_id=h.patient_id)).items
    assert [r.leaf_index for r in records] == [None]  # attempted, never permitted


async def test_consent_for_etreat_needs_no_break_glass(harness: Harness) -> None:
    h = harness
    await grant(h, purposes=[TREAT, ETREAT])
    decision = await check(h, **ER_APP, purpose=ETREAT)
    assert (decision.reason, decision.break_glass) == ("CONSENT_PERMITS", False)


# --- FHIR ---------------------------------------------------------------------------------------


async def test_fhir_export(harness: Harness) -> None:
    h = harness
    end = (h.clock() + timedelta(days=30)).replace(microsecond=0)
    with acting_as(STAFF_A):  # staff enter a form a guardian signed
        consent = (
            await h.rpcs.GrantConsent(
                grant_request(
                    h,
                    resource_types=["Observation", "DiagnosticReport"],
                    categories=["laboratory"],
                    purposes=[TREAT, HRESCH],
                    period_end=stamp(end),
                    proxy_relationship="GUARD",
                ),
                None,
            )
        ).consent
    resource = json.loads(consent.fhir_json)
    FhirConsent.model_validate(resource)
    assert resource["resourceType"] == "Consent"
    assert resource["id"] == consent.consent_id
    assert resource["status"] == "active"
    assert resource["scope"]["coding"][0]["code"] == "patient-privacy"
    assert resource["patient"] == {"reference": f"Patient/{h.patient_id}"}
    assert resource["dateTime"].startswith(str(consent.create_time.ToDatetime().year))
    provision = resource["provision"]
    assert provision["type"] == "permit"
    assert provision["period"]["end"] == end.isoformat().replace("+00:00", "Z")
    assert provision["actor"] == [
        {
            "role": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "IRCP",
                    }
                ]
            },
            "reference": {"reference": "Organization/org-b"},
        }
    ]
    assert provision["purpose"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"},
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"},
    ]
    classes = {(c.get("system"), c["code"]) for c in provision["class"]}
    assert classes == {
        ("http://hl7.org/fhir/resource-types", "Observation"),
        ("http://hl7.org/fhir/resource-types", "DiagnosticReport"),
        ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"),
    }
    assert resource["performer"] == [{"reference": "#proxy"}]
    proxy = resource["contained"][0]
    assert proxy["resourceType"] == "RelatedPerson"
    assert proxy["relationship"][0]["coding"][0]["code"] == "GUARD"

    with acting_as(STAFF_A):
        revoked = await h.rpcs.RevokeConsent(
            identity_pb2.RevokeConsentRequest(consent_id=consent.consent_id), None
        )
    assert json.loads(revoked.consent.fhir_json)["status"] == "inactive"


# --- listing ------------------------------------------------------------------------------------


async def test_list_consents_pages(harness: Harness) -> None:
    h = harness
    granted = [
        (await grant(h, grantee=identity_pb2.Grantee(organization=f"org-{n}"))).consent.consent_id
        for n in range(5)
    ]
    pages: list[list[str]] = []
    token = ""
    with acting_as(h.patient()):
        while True:
            page = await h.rpcs.ListConsents(
                identity_pb2.ListConsentsRequest(
                    patient_id=h.patient_id, page_size=2, page_token=token
                ),
                None,
            )
            pages.append([c.consent_id for c in page.consents])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [c for p in pages for c in p] == granted  # creation order

        first = await h.rpcs.ListConsents(
            identity_pb2.ListConsentsRequest(patient_id=h.patient_id, page_size=2), None
        )
        with pytest.raises(InvalidArgument) as caught:  # a token is for its own filters
            await h.rpcs.ListConsents(
                identity_pb2.ListConsentsRequest(
                    patient_id=h.patient_id,
                    status=identity_pb2.CONSENT_STATUS_ACTIVE,
                    page_token=first.next_page_token,
                ),
                None,
            )
        assert [v.field for v in caught.value.violations] == ["page_token"]
        with pytest.raises(InvalidArgument):
            await h.rpcs.ListConsents(
                identity_pb2.ListConsentsRequest(patient_id=h.patient_id, page_token="garbage"),
                None,
            )
        with pytest.raises(InvalidArgument):
            await h.rpcs.ListConsents(
                identity_pb2.ListConsentsRequest(patient_id=h.patient_id, page_size=-1), None
            )
        await h.rpcs.RevokeConsent(identity_pb2.RevokeConsentRequest(consent_id=granted[1]), None)
        revoked = await h.rpcs.ListConsents(
            identity_pb2.ListConsentsRequest(
                patient_id=h.patient_id, status=identity_pb2.CONSENT_STATUS_REVOKED
            ),
            None,
        )
        assert [c.consent_id for c in revoked.consents] == [granted[1]]
    # A grantee lists what it was granted.
    partner = Principal("lab-app", "org-3", "lab-app", frozenset({"system/Consent.rs"}))
    with acting_as(partner):
        mine = await h.rpcs.ListConsents(
            identity_pb2.ListConsentsRequest(grantee=identity_pb2.Grantee(organization="org-3")),
            None,
        )
    assert [c.consent_id for c in mine.consents] == [granted[3]]


# --- who may do what ------------------------------------------------------------------------------


async def test_who_may_manage_consents(harness: Harness) -> None:
    h = harness
    other_patient = Principal("user-other", "org-a", "", frozenset({"patient/*.cruds"}))
    h.directory.patients["user-other"] = "pat-other"
    for outsider in (other_patient, STAFF_B):
        with acting_as(outsider), pytest.raises(PermissionDenied):
            await h.rpcs.GrantConsent(grant_request(h), None)
    unscoped = Principal("dr-a", "org-a", "", frozenset({"user/Observation.rs"}))
    with acting_as(unscoped), pytest.raises(PermissionDenied) as caught:
        await h.rpcs.GrantConsent(grant_request(h), None)
    assert caught.value.reason == "SCOPE_MISSING"
    # A patient grants in their own name only; a proxy's signed form is entered by the
    # organisation, which is then the grantor, as record holder.
    with acting_as(h.patient()), pytest.raises(PermissionDenied) as caught:
        await h.rpcs.GrantConsent(grant_request(h, proxy_relationship="GUARD"), None)
    assert caught.value.reason == "GRANTOR_MISMATCH"
    with acting_as(STAFF_A), pytest.raises(PermissionDenied) as caught:
        await h.rpcs.GrantConsent(
            grant_request(h, granted_by="guardian-7", proxy_relationship="GUARD"), None
        )
    assert caught.value.reason == "GRANTOR_MISMATCH"
    with acting_as(STAFF_A):
        entered = (
            await h.rpcs.GrantConsent(grant_request(h, proxy_relationship="GUARD"), None)
        ).consent
    assert (entered.granted_by, entered.grantor_role) == (
        STAFF_A.subject,
        identity_pb2.GRANTOR_ROLE_RECORD_HOLDER,
    )
    consent_id = entered.consent_id
    request = identity_pb2.GetConsentRequest(consent_id=consent_id)
    reader = Principal("lab-app", "org-b", "lab-app", frozenset({"system/Consent.rs"}))
    with acting_as(reader):  # the grantee
        assert (await h.rpcs.GetConsent(request, None)).consent.consent_id == consent_id
    for outsider in (other_patient, Principal("x", "org-c", "x", frozenset({"system/*.rs"}))):
        with acting_as(outsider), pytest.raises(PermissionDenied):
            await h.rpcs.GetConsent(request, None)
    with acting_as(STAFF_B), pytest.raises(PermissionDenied):
        await h.rpcs.RevokeConsent(identity_pb2.RevokeConsentRequest(consent_id=consent_id), None)
    with acting_as(h.patient()):
        await h.rpcs.RevokeConsent(identity_pb2.RevokeConsentRequest(consent_id=consent_id), None)
    with acting_as(other_patient), pytest.raises(PermissionDenied):
        await h.rpcs.ListConsents(identity_pb2.ListConsentsRequest(patient_id=h.patient_id), None)
    with acting_as(h.patient()), pytest.raises(NotFound):
        await h.rpcs.GetConsent(identity_pb2.GetConsentRequest(consent_id="nope"), None)


async def test_check_access_is_asked_by_the_principal_or_a_trusted_service(
    harness: Harness,
) -> None:
    h = harness
    with acting_as(PARTNER):
        assert (await h.rpcs.CheckAccess(check_request(h), None)).reason == "NO_CONSENT"
        for forged in (
            {"principal_id": "someone-else", "client_id": "someone-else"},
            {"scopes": ["system/*.cruds"]},
            {"organization": "org-a"},
            {"purposes": [TREAT, ETREAT]},
        ):
            with pytest.raises(PermissionDenied) as caught:
                await h.rpcs.CheckAccess(check_request(h, **forged), None)
            assert caught.value.reason == "CHECK_ACCESS_NOT_ALLOWED"
        # The finding: org-b's app claiming org-b holds org-a's patient.
        with pytest.raises(PermissionDenied) as caught:
            await h.rpcs.CheckAccess(check_request(h, patient_organization="org-b"), None)
        assert caught.value.reason == "PATIENT_ORGANIZATION_NOT_ALLOWED"
    with acting_as(RECORD_SERVICE):  # the record service speaks for the record holder
        moved = await h.rpcs.CheckAccess(check_request(h, patient_organization="org-b"), None)
    assert (moved.decision, moved.reason) == (PERMIT, "SAME_ORGANIZATION")
