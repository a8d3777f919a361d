"""The record service over gRPC, as partners call it, against a real identity (CheckAccess,
consents, tokens), a real ledger, secantusdb and OpenBao: writes acknowledged with receipts
that verify offline and open to the returned JSON, reads decided by CheckAccess and ledgered
before they answer, consent across organisations, idempotent retries, stale updates, a
ledger that does not answer, and bad input.

Two record servers share one database: ``api`` appends to the platform's ledger, ``cut`` to
an address where nothing listens (the ledger down, for the writes and reads it serves).
"""

from __future__ import annotations

import base64
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
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import from_settings
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.commitment import canonical_json, commit
from medledger.verify.receipt import verify_receipt
from medledger.verify.trust import TrustPolicy

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
PATRQT = purpose_pb2.PURPOSE_OF_USE_PATRQT
ETREAT = purpose_pb2.PURPOSE_OF_USE_ETREAT
ORG_A, ORG_B = "hospital-a", "hospital-b"


@dataclass
class Caller:
    stub: record_pb2_grpc.RecordServiceAsyncStub
    client_id: str


@dataclass
class RecordApi:
    platform: Platform
    a: Caller  # hospital A: holds its patients' records
    b: Caller  # hospital B: reads under consent
    cut: Caller  # hospital A, through the record server whose ledger is down
    hasty: Caller  # hospital A, through one that waits 1 ms for the ledger
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    policy: TrustPolicy
    database: Any
    admin: str  # an admin token of identity
    record_address: str

    async def size(self) -> int:
        checkpoint = await self.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        return int(self.policy.open(checkpoint.checkpoint).size)

    async def entries_since(self, size: int) -> list[ledger_pb2.IndexedEntry]:
        reply = await self.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=size, page_size=1000)
        )
        return list(reply.entries)

    async def reads_since(self, size: int, caller: Caller) -> list[ledger_pb2.LedgerEntry]:
        return [
            e.entry
            for e in await self.entries_since(size)
            if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_READ
            and e.entry.actor == caller.client_id
        ]


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


@pytest.fixture(scope="module")
async def api(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[RecordApi]:
    platform = auth_platform
    database = f"recordapi{uuid.uuid4().hex[:8]}"
    mongo = MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database)
    vault = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record"))
    servers = [
        ServiceServer(
            from_settings(
                RecordSettings(grpc_port=0),
                mongo,
                vault,
                PeerSettings(identity_addr=platform.identity_address, ledger_addr=ledger),
                RecordConfig(ledger_timeout_seconds=timeout),
            )
        )
        for ledger, timeout in (
            (platform.ledger_address, 2.0),
            (f"127.0.0.1:{free_port()}", 2.0),
            # Gives up on the ledger before it answers: the entry may be appended all the same.
            (platform.ledger_address, 0.001),
        )
    ]
    for server in servers:
        await server.start()
    a_token = await platform.token("system/*.cruds", ORG_A, [TREAT])
    b_token = await platform.token("system/*.rs", ORG_B, [TREAT])
    reader = await platform.token("ledger.read", ORG_A)
    admin = await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    channels = [
        authed_channel(addresses[0], a_token),
        authed_channel(addresses[0], b_token),
        authed_channel(addresses[1], a_token),
        authed_channel(platform.ledger_address, reader),
        authed_channel(addresses[2], a_token),
    ]
    ledger_stub = ledger_pb2_grpc.LedgerServiceStub(channels[3])
    vkey = (await ledger_stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_server.uri, directConnection=True
    )
    try:
        yield RecordApi(
            platform=platform,
            a=Caller(record_pb2_grpc.RecordServiceStub(channels[0]), _subject(a_token)),
            b=Caller(record_pb2_grpc.RecordServiceStub(channels[1]), _subject(b_token)),
            cut=Caller(record_pb2_grpc.RecordServiceStub(channels[2]), _subject(a_token)),
            hasty=Caller(record_pb2_grpc.RecordServiceStub(channels[4]), _subject(a_token)),
            ledger=ledger_stub,
            policy=TrustPolicy.parse([vkey]),
            database=client[database],
            admin=admin,
            record_address=addresses[0],
        )
    finally:
        await client.close()
        for channel in channels:
            await channel.close(None)
        for server in servers:
            await server.stop(0)


async def failure(call: Any) -> MedledgerError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


def resource(resource_type: str, patient_id: str = "", **changes: Any) -> str:
    document = sample(resource_type)
    document.pop("id", None)
    if resource_type == "Observation":
        document["subject"] = {"reference": f"Patient/{patient_id}"}
    document.update(changes)
    return json.dumps(document)


async def create(caller: Caller, text: str, key: str = "") -> record_pb2.StoredResource:
    reply = await caller.stub.CreateResource(
        record_pb2.CreateResourceRequest(resource_json=text, purpose=TREAT, idempotency_key=key)
    )
    return reply.resource


async def new_patient(api: RecordApi, **changes: Any) -> record_pb2.StoredResource:
    return await create(api.a, resource("Patient", **changes))


async def get(
    caller: Caller, resource_type: str, resource_id: str, version: int = 0
) -> record_pb2.StoredResource:
    reply = await caller.stub.GetResource(
        record_pb2.GetResourceRequest(
            resource_type=resource_type, id=resource_id, version=version, purpose=TREAT
        )
    )
    return reply.resource


async def search(
    caller: Caller, resource_type: str, **params: str
) -> record_pb2.SearchResourcesResponse:
    return await caller.stub.SearchResources(
        record_pb2.SearchResourcesRequest(
            resource_type=resource_type,
            params=[record_pb2.SearchParam(name=n, value=v) for n, v in params.items()],
            purpose=TREAT,
        )
    )


async def check_receipt(
    api: RecordApi, stored: record_pb2.StoredResource, kind: int
) -> ledger_pb2.LedgerEntry:
    """The receipt verifies offline, its entry is the write's, and the commitment opens to
    the JSON returned; returns the entry."""
    entry_bytes = (
        await api.ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=stored.receipt.leaf_index))
    ).entry_bytes
    verified = verify_receipt(stored.receipt, api.policy, entry_bytes)
    assert verified.entry_checked
    entry = ledger_pb2.LedgerEntry.FromString(entry_bytes)
    assert entry.kind == kind
    assert entry.organization == ORG_A
    assert entry.resource.type == stored.resource_type
    assert entry.resource.version == 0  # blinded with the id
    assert stored.id not in entry.resource.id
    canonical = canonical_json(json.loads(stored.resource_json))
    assert entry.content_commitment == commit(stored.commitment_salt, canonical)
    assert stored.id.encode() not in entry_bytes
    return entry


async def test_create_read_update_history_and_search(api: RecordApi) -> None:
    patient = await new_patient(api)
    assert patient.version == 1
    document = json.loads(patient.resource_json)
    assert document["id"] == patient.id
    assert document["meta"]["versionId"] == "1"
    assert document["meta"]["lastUpdated"].endswith("Z")
    assert document["meta"]["profile"]  # the client's meta is kept
    await check_receipt(api, patient, ledger_pb2.EVENT_KIND_RECORD_CREATED)

    observation = await create(api.a, resource("Observation", patient.id))
    entry = await check_receipt(api, observation, ledger_pb2.EVENT_KIND_RECORD_CREATED)
    assert entry.actor == api.a.client_id
    assert entry.purpose == TREAT

    before = await api.size()
    read = await get(api.a, "Observation", observation.id)
    assert read == observation
    assert len(await api.reads_since(before, api.a)) == 1  # ledgered, once

    changed = json.loads(observation.resource_json)
    changed["status"] = "amended"
    updated = (
        await api.a.stub.UpdateResource(
            record_pb2.UpdateResourceRequest(
                resource_json=json.dumps(changed), expected_version=1, purpose=TREAT
            )
        )
    ).resource
    assert (updated.id, updated.version) == (observation.id, 2)
    assert json.loads(updated.resource_json)["meta"]["versionId"] == "2"
    await check_receipt(api, updated, ledger_pb2.EVENT_KIND_RECORD_UPDATED)

    before = await api.size()
    history = await api.a.stub.ListResourceHistory(
        record_pb2.ListResourceHistoryRequest(
            resource_type="Observation", id=observation.id, purpose=TREAT
        )
    )
    assert [v.version for v in history.versions] == [2, 1]
    assert list(history.versions) == [updated, observation]
    assert await get(api.a, "Observation", observation.id, 1) == observation  # vread
    assert len(await api.reads_since(before, api.a)) == 2

    found = await search(api.a, "Observation", patient=patient.id, code="http://loinc.org|2345-7")
    assert list(found.resources) == [updated]
    assert found.next_page_token == ""
    family = json.loads(patient.resource_json)["name"][0]["family"]
    by_name = await search(api.a, "Patient", family=family.upper(), birthdate="1815")
    assert patient.id in [p.id for p in by_name.resources]

    stale = await failure(
        api.a.stub.UpdateResource(
            record_pb2.UpdateResourceRequest(
                resource_json=json.dumps(changed), expected_version=1, purpose=TREAT
            )
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.reason == "STALE_VERSION"


async def _patient_user(api: RecordApi, patient_id: str) -> tuple[str, str]:
    """A patient account of hospital A for ``patient_id`` (so identity knows the patient is
    A's, and A's staff may record the patient's consents); its username and password."""
    username, password = f"patient-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex * 2
    await api.platform.stub.CreateUser(
        identity_pb2.CreateUserRequest(
            username=username,
            password=password,
            kind=identity_pb2.USER_KIND_PATIENT,
            organization=ORG_A,
            patient_id=patient_id,
        ),
        metadata=[("authorization", f"Bearer {api.admin}")],
    )
    return username, password


async def test_another_organisation_reads_only_under_consent(api: RecordApi) -> None:
    patient = await new_patient(api)
    observation = await create(api.a, resource("Observation", patient.id))
    await _patient_user(api, patient.id)

    before = await api.size()
    denied = await failure(get(api.b, "Observation", observation.id))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.reason == "NO_CONSENT"
    hidden = await search(api.b, "Observation", patient=patient.id)
    assert list(hidden.resources) == []
    assert hidden.next_page_token == ""
    assert hidden.ListFields() == []  # nothing at all: no count, no token
    assert await api.reads_since(before, api.b) == []  # nothing read, nothing ledgered

    a_channel_token = await api.platform.token("system/*.cruds", ORG_A, [TREAT])
    async with authed_channel(api.platform.identity_address, a_channel_token) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        granted = await identity.GrantConsent(
            identity_pb2.GrantConsentRequest(
                patient_id=patient.id,
                grantee=identity_pb2.Grantee(organization=ORG_B),
                resource_types=["Observation"],
                purposes=[TREAT],
            )
        )
        assert (await get(api.b, "Observation", observation.id)) == observation
        # Across patients, only the consenting patient's match comes back.
        everyone = await search(api.b, "Observation", code="2345-7")
        assert [r.id for r in everyone.resources] == [observation.id]
        assert [
            r.id for r in (await search(api.b, "Observation", patient=patient.id)).resources
        ] == [observation.id]
        # Only what the consent covers: not the Patient resource itself.
        assert (await failure(get(api.b, "Patient", patient.id))).reason == "NO_CONSENT"
        assert len(await api.reads_since(before, api.b)) == 3  # one per call with results

        await identity.RevokeConsent(
            identity_pb2.RevokeConsentRequest(consent_id=granted.consent.consent_id)
        )
    revoked = await failure(get(api.b, "Observation", observation.id))
    assert revoked.code == grpc.StatusCode.PERMISSION_DENIED
    assert list((await search(api.b, "Observation", patient=patient.id)).resources) == []


async def test_an_idempotent_retry_returns_the_first_result(api: RecordApi) -> None:
    patient = await new_patient(api)
    text = resource("Observation", patient.id)
    first = await create(api.a, text, key="lab-run-1")
    before = await api.size()
    again = await create(api.a, text, key="lab-run-1")
    assert again == first
    created = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_CREATED
    ]
    assert created == []  # one entry for both
    reused = await failure(
        create(api.a, resource("Observation", patient.id, status="amended"), key="lab-run-1")
    )
    assert reused.code == grpc.StatusCode.ABORTED
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_with_the_ledger_down_nothing_is_written_or_read(api: RecordApi) -> None:
    patient = await new_patient(api)
    text = resource("Observation", patient.id)
    pending = {"state": "pending"}
    kept = await api.database["record_versions"].count_documents(pending)
    # Without an idempotency key the prepared version is dropped.
    unkeyed = await failure(create(api.cut, text))
    assert unkeyed.code == grpc.StatusCode.UNAVAILABLE
    assert unkeyed.retry_delay_seconds is not None
    assert await api.database["record_versions"].count_documents(pending) == kept
    # With one it stays, invisible, for the retry.
    down = await failure(create(api.cut, text, key="down-1"))
    assert down.code == grpc.StatusCode.UNAVAILABLE
    assert down.retry_delay_seconds is not None
    assert await api.database["record_versions"].count_documents(pending) == kept + 1
    assert list((await search(api.a, "Observation", patient=patient.id)).resources) == []

    before = await api.size()
    written = await create(api.a, text, key="down-1")  # the retry, once the ledger answers
    assert written.version == 1
    assert await api.database["record_versions"].count_documents(pending) == kept
    assert [
        e.leaf_index
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_CREATED
    ] == [written.receipt.leaf_index]
    await check_receipt(api, written, ledger_pb2.EVENT_KIND_RECORD_CREATED)
    # Reads fail closed: no RECORD_READ entry, no data.
    blind = await failure(get(api.cut, "Observation", written.id))
    assert blind.code == grpc.StatusCode.UNAVAILABLE


async def test_a_retry_after_a_lost_ledger_answer_keeps_one_entry(api: RecordApi) -> None:
    """The ledger may append an entry whose answer the record never got: the retry sends
    the very same entry under the same key, and the ledger keeps one."""
    patient = await new_patient(api)
    for attempt in range(3):
        text = resource(
            "Observation", patient.id, status=("final", "amended", "preliminary")[attempt]
        )
        key = f"lost-{attempt}-{uuid.uuid4().hex[:6]}"
        before = await api.size()
        try:
            await create(api.hasty, text, key=key)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        written = await create(api.a, text, key=key)
        created = [
            e
            for e in await api.entries_since(before)
            if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_CREATED
        ]
        assert [e.leaf_index for e in created] == [written.receipt.leaf_index]
        await check_receipt(api, written, ledger_pb2.EVENT_KIND_RECORD_CREATED)


async def test_bad_input_is_invalid_argument_naming_fhir_paths(api: RecordApi) -> None:
    patient = await new_patient(api)
    secret = "Ada-" + uuid.uuid4().hex
    bad = await failure(create(api.a, resource("Observation", patient.id, status=secret)))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.violations] == ["status"]
    assert secret not in bad.message
    assert secret not in str(bad.violations)

    orphan = await failure(create(api.a, resource("Observation", "no-such-patient")))
    assert orphan.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in orphan.violations] == ["subject.reference"]

    for call, field in [
        (get(api.a, "Alien", "x"), "resource_type"),
        (get(api.a, "Observation", "not an id"), "id"),
        (
            api.a.stub.GetResource(record_pb2.GetResourceRequest(resource_type="Patient", id="x")),
            "purpose",
        ),
        (search(api.a, "Observation", date="ge2020"), "params.date"),
    ]:
        refused = await failure(call)
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert [v.field for v in refused.violations] == [field]

    # A Provenance's other targets must lie in its patient's compartment.
    elsewhere = await create(api.a, resource("Observation", (await new_patient(api)).id))
    provenance = resource(
        "Provenance",
        target=[
            {"reference": f"Observation/{elsewhere.id}"},
            {"reference": f"Patient/{patient.id}"},
        ],
    )
    outside = await failure(create(api.a, provenance))
    assert [v.field for v in outside.violations] == ["target[0].reference"]

    missing_id = await failure(
        api.a.stub.UpdateResource(
            record_pb2.UpdateResourceRequest(
                resource_json=resource("Patient"), expected_version=1, purpose=TREAT
            )
        )
    )
    assert [v.field for v in missing_id.violations] == ["id"]
    unknown = await failure(get(api.a, "Observation", str(uuid.uuid4())))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_a_patient_reads_and_searches_their_own_record(api: RecordApi) -> None:
    patient = await new_patient(api)
    own = await create(api.a, resource("Observation", patient.id))
    other = await create(api.a, resource("Observation", (await new_patient(api)).id))
    username, password = await _patient_user(api, patient.id)
    login = await api.platform.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(
                username=username, password=password, scope="patient/*.rs"
            )
        )
    )
    async with authed_channel(f"{api.record_address}", login.access_token) as channel:
        stub = record_pb2_grpc.RecordServiceStub(channel)
        before = await api.size()
        mine = await stub.GetResource(
            record_pb2.GetResourceRequest(resource_type="Observation", id=own.id, purpose=PATRQT)
        )
        assert mine.resource == own
        found = await stub.SearchResources(
            record_pb2.SearchResourcesRequest(
                resource_type="Observation",
                params=[record_pb2.SearchParam(name="code", value="2345-7")],
                purpose=PATRQT,
            )
        )
        assert [r.id for r in found.resources] == [own.id]  # only their own
        refused = await failure(
            stub.GetResource(
                record_pb2.GetResourceRequest(
                    resource_type="Observation", id=other.id, purpose=PATRQT
                )
            )
        )
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    reads = [
        e.entry
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_READ
    ]
    assert len(reads) == 2
    # The patient acted: the actor is blinded like the subject, never their user id.
    assert all(r.actor.startswith("patient:") for r in reads)
    assert all(username not in r.actor for r in reads)


async def test_break_glass_opens_another_organisations_record(api: RecordApi) -> None:
    patient = await new_patient(api)
    observation = await create(api.a, resource("Observation", patient.id))
    await _patient_user(api, patient.id)  # identity knows some organisation holds the patient
    er = await api.platform.token("system/Observation.rs", ORG_B, [TREAT, ETREAT])
    async with authed_channel(api.record_address, er) as channel:
        stub = record_pb2_grpc.RecordServiceStub(channel)
        request = record_pb2.GetResourceRequest(
            resource_type="Observation", id=observation.id, purpose=ETREAT
        )
        no_reason = await failure(stub.GetResource(request))
        assert no_reason.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in no_reason.violations] == ["break_glass_reason"]
        before = await api.size()
        request.break_glass_reason = "unconscious in the emergency department"
        assert (await stub.GetResource(request)).resource == observation
    kinds = [e.entry.kind for e in await api.entries_since(before)]
    assert ledger_pb2.EVENT_KIND_BREAK_GLASS in kinds
    assert ledger_pb2.EVENT_KIND_RECORD_READ in kinds
    entries = b"".join(e.entry_bytes for e in await api.entries_since(before))
    assert b"unconscious" not in entries
