"""GetAccessReport over gRPC against a real identity, ledger, secantusdb and OpenBao: a patient's
record written and read by their hospital, read by another hospital by break-glass and then
under consent, the patient logging in, another patient's entries in between. The streamed
report, assembled as the CLI assembles it, verifies offline with the ledger's key, and lists
exactly the patient's entries, which the test knows from its own receipts (the record's access
log, the consent's receipt, the ledger entries each step added): identity's entries included,
found by their nonce with the scan key of the patient's scan secret. A report continuing the
first from its checkpoint verifies too; the refusals are those of the access log.

Erasure: before it, the report finds every entry about the patient (the record's and
identity's, with one scan key); after it, whoever holds the deployment's subject key and the
patient's id (and so recomputes the pseudonym) finds NONE of them in the ledger, while a
patient whose services knew no scan secret (every patient before scan secrets) is found again
entry by entry that way, erasure or not."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.blinding import finds, legacy_scan_key
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.server import ServiceServer
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import from_settings
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.access_report import (
    FOUND_BY_NONCE,
    AccessReport,
    ReportAssembly,
    parse_access_report,
    verify_access_report,
)
from medledger.verify.trust import TrustPolicy

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
PATRQT = purpose_pb2.PURPOSE_OF_USE_PATRQT
ETREAT = purpose_pb2.PURPOSE_OF_USE_ETREAT
ORG_A, ORG_B = "hospital-a", "hospital-b"


@dataclass
class Stack:
    platform: Platform
    address: str
    a: record_pb2_grpc.RecordServiceAsyncStub  # hospital A, holding the patients
    a_client: str
    b: record_pb2_grpc.RecordServiceAsyncStub  # hospital B
    b_client: str
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    policy: TrustPolicy
    admin: str
    database: str  # the record service's
    vault: VaultSettings  # the record service's: it computes pseudonyms

    async def size(self) -> int:
        reply = await self.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        return self.policy.open(reply.checkpoint).size

    async def since(self, size: int) -> list[ledger_pb2.IndexedEntry]:
        reply = await self.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=size, page_size=1000)
        )
        return list(reply.entries)


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


@pytest.fixture(scope="module")
async def stack(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[Stack]:
    platform = auth_platform
    database = f"accessreport{uuid.uuid4().hex[:8]}"
    vault = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record"))
    server = ServiceServer(
        from_settings(
            RecordSettings(grpc_port=0),
            MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database),
            vault,
            PeerSettings(
                identity_addr=platform.identity_address, ledger_addr=platform.ledger_address
            ),
            RecordConfig(ledger_timeout_seconds=5.0),
        )
    )
    await server.start()
    address = f"127.0.0.1:{server.port}"
    a_token = await platform.token("system/*.cruds", ORG_A, [TREAT])
    b_token = await platform.token("system/*.rs", ORG_B, [TREAT])
    reader = await platform.token("ledger.read", ORG_A)
    admin = await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
    channels = [
        authed_channel(address, a_token),
        authed_channel(address, b_token),
        authed_channel(platform.ledger_address, reader),
    ]
    ledger = ledger_pb2_grpc.LedgerServiceStub(channels[2])
    vkey = (await ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    try:
        yield Stack(
            platform,
            address,
            record_pb2_grpc.RecordServiceStub(channels[0]),
            _subject(a_token),
            record_pb2_grpc.RecordServiceStub(channels[1]),
            _subject(b_token),
            ledger,
            TrustPolicy.parse([vkey]),
            admin,
            database,
            vault,
        )
    finally:
        for channel in channels:
            await channel.close(None)
        await server.stop(0)


def _json(resource_type: str, patient_id: str = "") -> str:
    document = sample(resource_type)
    document.pop("id", None)
    if resource_type == "Observation":
        document["subject"] = {"reference": f"Patient/{patient_id}"}
    return json.dumps(document)


async def _create(
    stub: record_pb2_grpc.RecordServiceAsyncStub, text: str
) -> record_pb2.StoredResource:
    request = record_pb2.CreateResourceRequest(resource_json=text, purpose=TREAT)
    return (await stub.CreateResource(request)).resource


async def _read(
    stub: record_pb2_grpc.RecordServiceAsyncStub,
    observation: str,
    purpose: int = TREAT,
    reason: str = "",
) -> None:
    await stub.GetResource(
        record_pb2.GetResourceRequest(
            resource_type="Observation",
            id=observation,
            purpose=purpose,  # type: ignore[arg-type]
            break_glass_reason=reason,
        )
    )


async def report(
    stub: record_pb2_grpc.RecordServiceAsyncStub,
    patient_id: str,
    purpose: int = TREAT,
    from_size: int = 0,
) -> AccessReport:
    assembly = ReportAssembly(patient_id, "2026-11-29T12:00:00.000Z")
    request = record_pb2.GetAccessReportRequest(
        patient_id=patient_id,
        purpose=purpose,  # type: ignore[arg-type]
        from_size=from_size,
    )
    async for part in stub.GetAccessReport(request):
        assembly.add(part)
    return assembly.report()


async def failure(stack_call: Any) -> MedledgerError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack_call
    return from_rpc_error(raised.value)


async def _indices(stack: Stack, before: int, kind: int) -> list[int]:
    return [int(e.leaf_index) for e in await stack.since(before) if e.entry.kind == kind]


async def test_the_report_lists_every_entry_about_the_patient_and_verifies(stack: Stack) -> None:
    patient = await _create(stack.a, _json("Patient"))
    other = await _create(stack.a, _json("Patient"))
    observation = await _create(stack.a, _json("Observation", patient.id))
    others = await _create(stack.a, _json("Observation", other.id))
    await _read(stack.a, observation.id)
    await _read(stack.a, others.id)

    username, password = f"patient-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex * 2
    await stack.platform.stub.CreateUser(
        identity_pb2.CreateUserRequest(
            username=username,
            password=password,
            kind=identity_pb2.USER_KIND_PATIENT,
            organization=ORG_A,
            patient_id=patient.id,
        ),
        metadata=[("authorization", f"Bearer {stack.admin}")],
    )
    before = await stack.size()
    login = await stack.platform.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(
                username=username, password=password, scope="patient/*.rs"
            )
        )
    )
    logins = await _indices(stack, before, ledger_pb2.EVENT_KIND_USER_LOGIN)

    # Hospital B's emergency department breaks the glass, then reads under a consent.
    er = await stack.platform.token("system/Observation.rs", ORG_B, [TREAT, ETREAT])
    before = await stack.size()
    async with authed_channel(stack.address, er) as channel:
        await _read(record_pb2_grpc.RecordServiceStub(channel), observation.id, ETREAT, "coma")
    glass = await _indices(stack, before, ledger_pb2.EVENT_KIND_BREAK_GLASS)
    async with authed_channel(
        stack.platform.identity_address,
        await stack.platform.token("system/*.cruds", ORG_A, [TREAT]),
    ) as channel:
        granted = await identity_pb2_grpc.IdentityServiceStub(channel).GrantConsent(
            identity_pb2.GrantConsentRequest(
                patient_id=patient.id,
                grantee=identity_pb2.Grantee(organization=ORG_B),
                resource_types=["Observation"],
                purposes=[TREAT],
            )
        )
    await _read(stack.b, observation.id)
    await _read(stack.a, others.id)

    before = await stack.size()
    log = await stack.a.GetAccessLog(
        record_pb2.GetAccessLogRequest(patient_id=patient.id, purpose=TREAT, page_size=1000)
    )
    # The log lists the record's entries; reading it is one more (a read of its AuditEvent).
    recorded = {int(e.leaf_index) for e in log.entries}
    (log_read,) = await _indices(stack, before, ledger_pb2.EVENT_KIND_RECORD_READ)
    expected = sorted(recorded | {log_read, int(granted.receipt.leaf_index), *logins, *glass})
    assert len(logins) == 1
    assert len(glass) == 1

    first = await report(stack.a, patient.id)
    verified = verify_access_report(parse_access_report(first.to_json()), stack.policy)
    # Everything before the report's checkpoint (its own read comes after).
    listed = [e.leaf_index for e in first.entries]
    assert listed == [i for i in expected if i < verified.size]
    assert verified.size > max(expected)
    assert len(first.leaves) == verified.size
    by_index = {e.leaf_index: e for e in first.entries}
    assert by_index[glass[0]].break_glass
    assert by_index[glass[0]].organization == ORG_B
    assert [e.leaf_index for e in first.entries if e.break_glass] == glass
    assert by_index[logins[0]].actor == "patient"
    assert by_index[int(granted.receipt.leaf_index)].event == "CONSENT_GRANTED"
    # identity's entries are found by their nonce and not opened here.
    for index in (glass[0], logins[0], int(granted.receipt.leaf_index)):
        assert by_index[index].found_by == FOUND_BY_NONCE
        assert by_index[index].resource_id == ""
    # The record's own are opened: they name the resources.
    opened = {(e.resource_type, e.resource_id) for e in first.entries if e.resource_id}
    assert ("Observation", observation.id) in opened
    assert ("Patient", patient.id) in opened
    assert ("Observation", others.id) not in opened
    reads = [e for e in first.entries if e.event == "RECORD_READ"]
    assert {(e.organization, e.purpose) for e in reads} >= {
        (ORG_A, "TREAT"),
        (ORG_B, "ETREAT"),
        (ORG_B, "TREAT"),
    }
    assert patient.id.encode() not in b"".join(first.leaves)

    # The patient asks for theirs: it now also lists the first report's read.
    async with authed_channel(stack.address, login.access_token) as channel:
        mine = await report(record_pb2_grpc.RecordServiceStub(channel), patient.id, PATRQT)
    assert verify_access_report(mine, stack.policy).size >= verified.size
    newer = [e for e in mine.entries if e.leaf_index >= verified.size]
    assert newer
    assert newer[0].resource_type == "AuditEvent"
    assert [e.leaf_index for e in mine.entries][: len(listed)] == listed

    # A report continuing the first: only the leaves after its checkpoint, still complete.
    later = await report(stack.a, patient.id, from_size=verified.size)
    continued = verify_access_report(parse_access_report(later.to_json()), stack.policy)
    assert continued.base is not None
    assert continued.base.size == verified.size
    assert len(later.leaves) == continued.size - verified.size
    assert all(e.leaf_index >= verified.size for e in later.entries)
    assert {e.leaf_index for e in mine.entries if e.leaf_index < continued.size} <= {
        *listed,
        *(e.leaf_index for e in later.entries),
    }


async def test_the_report_is_refused_as_the_access_log_is(stack: Stack) -> None:
    patient = await _create(stack.a, _json("Patient"))
    denied = await failure(report(stack.b, patient.id))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    bad = await failure(report(stack.a, "not an id!"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.violations] == ["patient_id"]
    no_purpose = await failure(report(stack.a, patient.id, purpose=0))
    assert [v.field for v in no_purpose.violations] == ["purpose"]
    missing = await failure(report(stack.a, "no-such-patient"))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    beyond = await failure(report(stack.a, patient.id, from_size=2**40))
    assert (beyond.code, beyond.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHECKPOINT_NOT_FOUND",
    )
    assert "not an id" not in (bad.message or "")


async def _grant(stack: Stack, patient_id: str) -> identity_pb2.GrantConsentResponse:
    async with authed_channel(
        stack.platform.identity_address,
        await stack.platform.token("system/*.cruds", ORG_A, [TREAT]),
    ) as channel:
        response: identity_pb2.GrantConsentResponse = await identity_pb2_grpc.IdentityServiceStub(
            channel
        ).GrantConsent(
            identity_pb2.GrantConsentRequest(
                patient_id=patient_id,
                grantee=identity_pb2.Grantee(organization=ORG_B),
                resource_types=["Observation"],
                purposes=[TREAT],
            )
        )
        return response


async def _ledger(stack: Stack) -> list[ledger_pb2.IndexedEntry]:
    """Every entry of the ledger up to its checkpoint."""
    size, entries = await stack.size(), []
    while len(entries) < size:
        entries += await stack.since(len(entries))
    return entries[:size]


def _patient_key(pseudonym: bytes) -> str:
    """Where both services keep the patient's key row (a digest of the pseudonym)."""
    return hashlib.sha256(b"medledger.patient-leaf-index\x00" + pseudonym).hexdigest()


async def _key_rows(stack: Stack, mongo: Any, pseudonym: bytes) -> dict[str, Any]:
    """The patient's key row in the record's and in identity's database (None: none)."""
    identity_db = stack.platform.database
    return {
        "record": await mongo[stack.database]["record_patient_keys"].find_one(
            {"_id": _patient_key(pseudonym)}
        ),
        "identity": await mongo[identity_db]["identity_patient_keys"].find_one(
            {"_id": _patient_key(pseudonym)}
        ),
    }


async def test_after_erasure_the_pseudonym_finds_none_of_the_patients_entries(
    stack: Stack, mongo_server: Any
) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    try:
        await _erasure_unlinks(stack, mongo)
    finally:
        await mongo.close()


async def _erasure_unlinks(stack: Stack, mongo: Any) -> None:
    # Whoever holds the deployment's subject key (here: the record's Vault token) and an
    # erased patient's id recomputes the pseudonym.
    hasher = SubjectHasher(VaultTransit(stack.vault))

    patient = await _create(stack.a, _json("Patient"))
    observation = await _create(stack.a, _json("Observation", patient.id))
    await _read(stack.a, observation.id)
    granted = int((await _grant(stack, patient.id)).receipt.leaf_index)
    await _read(stack.b, observation.id)  # under the consent
    first = await report(stack.a, patient.id)
    verified = verify_access_report(parse_access_report(first.to_json()), stack.policy)
    theirs = {e.leaf_index for e in first.entries}
    # The record's and identity's entries, all found with the one scan key.
    assert first.scan_key is not None
    assert {e.found_by for e in first.entries} == {FOUND_BY_NONCE}
    assert granted in theirs
    assert {e.event for e in first.entries} >= {"RECORD_CREATED", "RECORD_READ", "CONSENT_GRANTED"}
    assert len(theirs) >= 5
    assert verified.legacy == 0
    pseudonym = await hasher.subject(patient.id)
    assert pseudonym == first.pseudonym
    rows = await _key_rows(stack, mongo, pseudonym)
    # Both services keep the scan secret, sealed in the patient's key row.
    assert rows["record"]["scan_secret"]
    assert rows["identity"]["scan_secret"]

    # As every patient was before scan secrets: a patient whose services know none (taken
    # out of both key rows once the Patient exists), then entries about them.
    old = await _create(stack.a, _json("Patient"))
    old_pseudonym = await hasher.subject(old.id)
    identity_db = stack.platform.database
    for database, collection in (
        (stack.database, "record_patient_keys"),
        (identity_db, "identity_patient_keys"),
    ):
        unset = await mongo[database][collection].update_one(
            {"_id": _patient_key(old_pseudonym)}, {"$unset": {"scan_secret": ""}}
        )
        assert unset.modified_count == 1
    before = await stack.size()
    old_observation = await _create(stack.a, _json("Observation", old.id))
    await _read(stack.a, old_observation.id)
    await _grant(stack, old.id)
    written_old_way = {int(e.leaf_index) for e in await stack.since(before) if e.entry.subject}
    assert len(written_old_way) == 3

    eraser = await stack.platform.token("system/*.cruds", ORG_A, [PATRQT])
    async with authed_channel(stack.address, eraser) as channel:
        for erased in (patient.id, old.id):
            await record_pb2_grpc.RecordServiceStub(channel).ErasePatient(
                record_pb2.ErasePatientRequest(patient_id=erased, reason=1, purpose=PATRQT)
            )
    # Neither service keeps anything of the patient's keys.
    assert await _key_rows(stack, mongo, pseudonym) == {"record": None, "identity": None}

    ledger = await _ledger(stack)

    def found(key: bytes, who: bytes) -> set[int]:
        return {int(e.leaf_index) for e in ledger if finds(e.entry, who, key)}

    # After erasure, the recomputed pseudonym finds NONE of the patient's entries...
    assert found(legacy_scan_key(pseudonym), pseudonym) == set()
    # ...though they are all still in the ledger: the scan key the report carried (and only
    # it, which nobody keeps after erasure) finds them, and the erasure's own entry.
    assert theirs < found(first.scan_key, pseudonym)
    # The patient without a scan secret is found again, every entry written for them, by
    # the same recomputation after erasure: the flaw scan secrets close.
    assert written_old_way <= found(legacy_scan_key(old_pseudonym), old_pseudonym)
