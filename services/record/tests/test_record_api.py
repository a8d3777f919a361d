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

import bson
import grpc
import pytest
from pymongo import AsyncMongoClient

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.blinding import Opening
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import from_settings
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.audit import LedgerAuditor
from medledger.verify.blinding import salted_subject
from medledger.verify.commitment import canonical_json, commit
from medledger.verify.ledger_client import LedgerApi
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
    cut_address: str

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
            cut_address=addresses[1],
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


async def test_date_ranges_find_what_overlaps(api: RecordApi) -> None:
    patient = await new_patient(api)
    dated = {
        when: await create(api.a, resource("Observation", patient.id, effectiveDateTime=when))
        for when in ("2023-06-01T08:00:00Z", "2024-03-05T09:30:00+01:00", "2025-01-10")
    }
    spanning = json.loads(resource("Observation", patient.id))
    del spanning["effectiveDateTime"]
    spanning["effectivePeriod"] = {"start": "2023-12-30", "end": "2024-01-02"}
    period = await create(api.a, json.dumps(spanning))
    del (found := dict(dated))["2023-06-01T08:00:00Z"]

    async def ids(*params: tuple[str, str]) -> set[str]:
        reply = await api.a.stub.SearchResources(
            record_pb2.SearchResourcesRequest(
                resource_type="Observation",
                params=[
                    record_pb2.SearchParam(name=n, value=v)
                    for n, v in (("patient", patient.id), *params)
                ],
                page_size=50,
                purpose=TREAT,
            )
        )
        return {r.id for r in reply.resources}

    assert await ids(("date", "ge2024-01-01")) == {r.id for r in found.values()} | {period.id}
    # Two bounds (each must match): 2024 alone, and the Period that reaches into it.
    assert await ids(("date", "ge2024-01-01"), ("date", "lt2025")) == {
        dated["2024-03-05T09:30:00+01:00"].id,
        period.id,
    }
    assert await ids(("date", "gt2025-01-10")) == set()
    assert await ids(("date", "le2023")) == {dated["2023-06-01T08:00:00Z"].id, period.id}
    assert await ids(("date", "2024-03")) == {dated["2024-03-05T09:30:00+01:00"].id}
    assert await ids(("date", "2024")) == {dated["2024-03-05T09:30:00+01:00"].id}  # not the Period


async def test_comma_separated_values_find_any_of_them_page_by_page(api: RecordApi) -> None:
    patient = await new_patient(api)
    codes = {"2345-7": "glucose", "2339-0": "glucose-blood", "2085-9": "hdl"}
    made = {}
    for code in codes:
        document = json.loads(resource("Observation", patient.id))
        document["code"] = {"coding": [{"system": "http://loinc.org", "code": code}]}
        made[code] = await create(api.a, json.dumps(document))

    async def page(value: str, token: str = "") -> record_pb2.SearchResourcesResponse:
        return await api.a.stub.SearchResources(
            record_pb2.SearchResourcesRequest(
                resource_type="Observation",
                params=[
                    record_pb2.SearchParam(name="patient", value=patient.id),
                    record_pb2.SearchParam(name="code", value=value),
                ],
                page_size=1,
                page_token=token,
                purpose=TREAT,
            )
        )

    either = "http://loinc.org|2345-7,http://loinc.org|2085-9"
    before = await api.size()
    first = await page(either)
    assert first.next_page_token
    # The same query with its values in another order goes on from the same token.
    second = await page("http://loinc.org|2085-9,http://loinc.org|2345-7", first.next_page_token)
    assert {r.id for r in [*first.resources, *second.resources]} == {
        made["2345-7"].id,
        made["2085-9"].id,
    }
    assert second.next_page_token == ""
    assert len(await api.reads_since(before, api.a)) == 2  # one entry per call
    # A token is bound to its query's values.
    other = await failure(page("http://loinc.org|2345-7", first.next_page_token))
    assert other.code == grpc.StatusCode.INVALID_ARGUMENT
    too_many = await failure(page(",".join(f"http://loinc.org|{n}" for n in range(65))))
    assert too_many.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in too_many.violations] == ["params.code"]


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
        (search(api.a, "Observation", date="ne2020"), "params.date"),
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


# -- the patient's rights: export, access log, erasure ---------------------------------------


async def export(
    caller: Caller, patient_id: str, *, pseudonymise: bool = False
) -> record_pb2.ExportPatientResponse:
    return await caller.stub.ExportPatient(
        record_pb2.ExportPatientRequest(
            patient_id=patient_id, purpose=TREAT, pseudonymise=pseudonymise
        )
    )


def _proof(entry: dict[str, Any]) -> dict[str, bytes]:
    (outer,) = entry["extension"]
    assert outer["url"] == "https://medledger.dev/fhir/StructureDefinition/ledger-proof"
    return {p["url"]: base64.b64decode(p["valueBase64Binary"]) for p in outer["extension"]}


async def test_an_export_holds_every_current_resource_with_its_ledger_proof(
    api: RecordApi,
) -> None:
    patient = await new_patient(api)
    first = await create(api.a, resource("Observation", patient.id))
    updated = json.loads(first.resource_json)
    updated["status"] = "amended"
    second = (
        await api.a.stub.UpdateResource(
            record_pb2.UpdateResourceRequest(
                resource_json=json.dumps(updated), expected_version=1, purpose=TREAT
            )
        )
    ).resource
    condition = await create(
        api.a,
        resource("Condition", subject={"reference": f"Patient/{patient.id}"}),
    )
    before = await api.size()
    reply = await export(api.a, patient.id)
    bundle = json.loads(reply.bundle_json)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    listed = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert listed[0] == ("Patient", patient.id)
    assert sorted(listed) == sorted(
        [("Patient", patient.id), ("Observation", first.id), ("Condition", condition.id)]
    )
    assert len(reply.receipts) == len(bundle["entry"])
    by_id = {r.id: r for r in (patient, second, condition)}
    for entry, receipt in zip(bundle["entry"], reply.receipts, strict=True):
        stored = by_id[entry["resource"]["id"]]
        assert entry["fullUrl"] == f"urn:uuid:{stored.id}"
        assert entry["resource"] == json.loads(stored.resource_json)  # the current version
        proof = _proof(entry)
        assert proof["receipt"] == receipt.SerializeToString()
        assert proof["commitmentSalt"] == stored.commitment_salt
        assert verify_receipt(receipt, api.policy, proof["entry"]).entry_checked
        ledgered = ledger_pb2.LedgerEntry.FromString(proof["entry"])
        canonical = canonical_json(entry["resource"])
        assert ledgered.content_commitment == commit(proof["commitmentSalt"], canonical)
        assert receipt.leaf_index == stored.receipt.leaf_index
    # One RECORD_EXPORTED entry, before the answer, whose receipt verifies.
    exported = await api.entries_since(before)
    assert [e.entry.kind for e in exported] == [ledger_pb2.EVENT_KIND_RECORD_EXPORTED]
    assert exported[0].leaf_index == reply.export_receipt.leaf_index
    assert verify_receipt(reply.export_receipt, api.policy, exported[0].entry_bytes)
    assert patient.id.encode() not in exported[0].entry_bytes


async def test_a_pseudonymised_export_replaces_direct_identifiers(api: RecordApi) -> None:
    patient = await new_patient(
        api,
        name=[{"family": "Zyxwarden", "given": ["Quillon"]}],
        identifier=[{"system": "urn:oid:1.2.3.4", "value": "MRN-77123"}],
        birthDate="1961-04-17",
        telecom=[{"system": "phone", "value": "+44 20 7946 0958"}],
    )
    observation = await create(api.a, resource("Observation", patient.id))
    reply = await export(api.a, patient.id, pseudonymise=True)
    text = reply.bundle_json
    for secret in ("Zyxwarden", "Quillon", "MRN-77123", "1961-04-17", "7946", patient.id):
        assert secret not in text
    assert observation.id not in text
    bundle = json.loads(text)
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "PSEUDED",
        "display": "pseudonymized",
    } in bundle["meta"]["security"]
    resources = {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}
    pseudo = resources["Patient"]
    assert pseudo["birthDate"] == "1961"
    assert pseudo["identifier"][0]["system"] == "urn:medledger:pseudonymised"
    assert "name" not in pseudo
    # Still linked inside the Bundle, and no ledger proofs.
    assert resources["Observation"]["subject"]["reference"] == f"Patient/{pseudo['id']}"
    assert all("extension" not in e for e in bundle["entry"])
    assert list(reply.receipts) == []
    assert reply.export_receipt.leaf_hash


async def test_an_export_is_refused_without_access_and_for_bad_input(api: RecordApi) -> None:
    patient = await new_patient(api)
    denied = await failure(export(api.b, patient.id))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    missing = await failure(export(api.a, str(uuid.uuid4())))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    bad = await failure(export(api.a, "not an id!"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.violations] == ["patient_id"]
    down = await failure(export(api.cut, patient.id))
    assert down.code == grpc.StatusCode.UNAVAILABLE


async def access_log(
    stub: record_pb2_grpc.RecordServiceAsyncStub, patient_id: str, purpose: int = TREAT
) -> record_pb2.GetAccessLogResponse:
    return await stub.GetAccessLog(
        record_pb2.GetAccessLogRequest(patient_id=patient_id, purpose=purpose, page_size=1000)
    )


async def test_the_access_log_lists_each_entry_with_its_opening(api: RecordApi) -> None:
    patient = await new_patient(api)
    observation = await create(api.a, resource("Observation", patient.id))
    await get(api.a, "Observation", observation.id)
    log = await access_log(api.a.stub, patient.id)
    kinds = [e.entry.kind for e in log.entries]
    assert kinds == [
        ledger_pb2.EVENT_KIND_RECORD_CREATED,
        ledger_pb2.EVENT_KIND_RECORD_CREATED,
        ledger_pb2.EVENT_KIND_RECORD_READ,
    ]
    assert len(log.openings) == len(log.entries)
    pseudonyms = set()
    for indexed, opening in zip(log.entries, log.openings, strict=True):
        entry = ledger_pb2.LedgerEntry.FromString(indexed.entry_bytes)
        opened = Opening(
            salt=opening.salt,
            pseudonym=opening.subject_pseudonym,
            resource_type=opening.resource_type,
            resource_id=opening.resource_id,
            resource_version=opening.resource_version,
            patient_actor=opening.patient_actor,
        )
        # The subject's key derives from the patient's scan key and the entry's public
        # nonce: the log reveals that key for this entry alone, not the scan key.
        assert entry.nonce
        assert len(opening.subject_salt) == 32
        assert opening.subject_salt != opening.salt
        assert entry.subject == salted_subject(opening.subject_salt, opening.subject_pseudonym)
        assert entry.resource == opened.resource()
        pseudonyms.add(opening.subject_pseudonym)
        proof = await api.ledger.GetInclusionProof(
            ledger_pb2.GetInclusionProofRequest(leaf_index=indexed.leaf_index)
        )
        assert proof.leaf_index == indexed.leaf_index
    assert len(pseudonyms) == 1
    assert [o.resource_id for o in log.openings] == [patient.id, observation.id, observation.id]
    # Reading the log is a read, ledgered: the next page of the log shows it.
    again = await access_log(api.a.stub, patient.id)
    assert [e.entry.kind for e in again.entries][-1] == ledger_pb2.EVENT_KIND_RECORD_READ
    assert again.openings[-1].resource_type == "AuditEvent"
    assert len(again.entries) == 4
    # Another organisation, without consent, sees nothing.
    assert (await failure(access_log(api.b.stub, patient.id))).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_a_patient_reads_their_own_access_log(api: RecordApi) -> None:
    patient = await new_patient(api)
    observation = await create(api.a, resource("Observation", patient.id))
    await get(api.a, "Observation", observation.id)
    username, password = await _patient_user(api, patient.id)
    login = await api.platform.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(
                username=username, password=password, scope="patient/*.rs"
            )
        )
    )
    async with authed_channel(api.record_address, login.access_token) as channel:
        stub = record_pb2_grpc.RecordServiceStub(channel)
        log = await access_log(stub, patient.id, PATRQT)
        assert [e.entry.organization for e in log.entries] == [ORG_A, ORG_A, ORG_A]
        assert [e.entry.actor for e in log.entries] == [api.a.client_id] * 3
        other = await new_patient(api)
        refused = await failure(access_log(stub, other.id, PATRQT))
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED


async def erase(
    stub: record_pb2_grpc.RecordServiceAsyncStub, patient_id: str, reason: int = 1
) -> record_pb2.ErasePatientResponse:
    return await stub.ErasePatient(
        record_pb2.ErasePatientRequest(patient_id=patient_id, reason=reason, purpose=PATRQT)
    )


async def test_erasure_shreds_the_patient_and_leaves_the_ledger_valid(api: RecordApi) -> None:
    patient = await new_patient(api)
    observation = await create(api.a, resource("Observation", patient.id))
    await _patient_user(api, patient.id)
    async with authed_channel(
        api.platform.identity_address, await api.platform.token("system/*.cruds", ORG_A, [TREAT])
    ) as channel:
        await identity_pb2_grpc.IdentityServiceStub(channel).GrantConsent(
            identity_pb2.GrantConsentRequest(
                patient_id=patient.id,
                grantee=identity_pb2.Grantee(organization=ORG_B),
                resource_types=["Observation"],
                purposes=[TREAT],
            )
        )
    assert (await get(api.b, "Observation", observation.id)) == observation

    # The patient asked (PATRQT): the holder's staff erase, nobody else.
    a_erases = await api.platform.token("system/*.cruds", ORG_A, [PATRQT])
    b_erases = await api.platform.token("system/*.cruds", ORG_B, [PATRQT])
    async with (
        authed_channel(api.record_address, a_erases) as a_channel,
        authed_channel(api.record_address, b_erases) as b_channel,
        authed_channel(api.cut_address, a_erases) as cut_channel,
    ):
        a_stub = record_pb2_grpc.RecordServiceStub(a_channel)
        b_stub = record_pb2_grpc.RecordServiceStub(b_channel)
        cut_stub = record_pb2_grpc.RecordServiceStub(cut_channel)
        refused = await failure(erase(b_stub, patient.id))
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
        bad = await failure(erase(a_stub, patient.id, reason=0))
        assert [v.field for v in bad.violations] == ["reason"]
        assert (await failure(erase(cut_stub, patient.id))).code == grpc.StatusCode.UNAVAILABLE
        assert (await get(api.a, "Observation", observation.id)) == observation  # nothing lost

        before = await api.size()
        erased = await erase(a_stub, patient.id)
        again = await failure(erase(a_stub, patient.id))
    assert (again.code, again.reason) == (grpc.StatusCode.NOT_FOUND, "ERASED")
    assert erased.erased_versions == 2
    (entry,) = await api.entries_since(before)
    assert entry.entry.kind == ledger_pb2.EVENT_KIND_RECORD_ERASED
    assert verify_receipt(erased.receipt, api.policy, entry.entry_bytes).entry_checked

    for call in (
        get(api.a, "Observation", observation.id),
        get(api.a, "Patient", patient.id),
        get(api.b, "Observation", observation.id),
        export(api.a, patient.id),
        access_log(api.a.stub, patient.id),
    ):
        gone = await failure(call)
        assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "ERASED")
    assert list((await search(api.a, "Observation", patient=patient.id)).resources) == []
    # The ledger is still one consistent log: an audit of every leaf and checkpoint passes.
    reader = await api.platform.token("ledger.read", ORG_A)
    async with authed_channel(api.platform.ledger_address, reader) as channel:
        report = await LedgerAuditor(LedgerApi(channel), api.policy, sample=16).run()
    assert report.size > before
    # Nothing of the patient stays in the record's database in clear or decryptable: the
    # patient's key rows hold no wrapped key, and no leaf-index row remains.
    for doc in [d async for d in api.database["record_patients"].find({"erased": True})]:
        assert "wrapped" not in doc
    names = await api.database.list_collection_names()
    dump = b"".join([bson.encode(d) for name in names async for d in api.database[name].find({})])
    assert patient.id.encode() not in dump
    assert observation.id.encode() not in dump


async def audit_all(stub: record_pb2_grpc.RecordServiceAsyncStub) -> tuple[int, list[Any]]:
    checked, findings, token = 0, [], ""
    while True:
        page = await stub.AuditRecords(
            record_pb2.AuditRecordsRequest(page_size=50, page_token=token)
        )
        checked += page.checked_versions
        findings += list(page.findings)
        token = page.next_page_token
        if not token:
            return checked, findings


async def test_the_record_audit_checks_every_version_against_the_ledger(
    api: RecordApi,
) -> None:
    patient = await new_patient(api)
    await create(api.a, resource("Observation", patient.id))
    auditor = await api.platform.token("audit.read", ORG_A)
    async with authed_channel(api.record_address, auditor) as channel:
        stub = record_pb2_grpc.RecordServiceStub(channel)
        checked, findings = await audit_all(stub)
        assert checked >= 2
        assert findings == []
        versions = api.database["record_versions"]
        victim = await versions.find_one({"state": "committed"})
        assert victim is not None
        content = bytearray(victim["content"])
        content[len(content) // 2] ^= 0x01
        await versions.update_one({"_id": victim["_id"]}, {"$set": {"content": bytes(content)}})
        try:
            again, findings = await audit_all(stub)
        finally:
            await versions.update_one({"_id": victim["_id"]}, {"$set": victim})
        assert again == checked
        assert [(f.check, f.id) for f in findings] == [("stored", victim["_id"])]
    # Partners without audit.read are refused before anything is read.
    refused = await failure(api.a.stub.AuditRecords(record_pb2.AuditRecordsRequest()))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED


async def test_the_holder_grants_consent_for_a_patient_without_an_account(
    api: RecordApi,
) -> None:
    """identity learns the holder when the Patient is created: no patient user needed."""
    patient = await new_patient(api)
    observation = await create(api.a, resource("Observation", patient.id))
    assert (await failure(get(api.b, "Observation", observation.id))).reason == "NO_CONSENT"
    grant = identity_pb2.GrantConsentRequest(
        patient_id=patient.id,
        grantee=identity_pb2.Grantee(organization=ORG_B),
        resource_types=["Observation"],
        purposes=[TREAT],
    )
    b_token = await api.platform.token("system/*.cruds", ORG_B, [TREAT])
    async with authed_channel(api.platform.identity_address, b_token) as channel:
        refused = await failure(identity_pb2_grpc.IdentityServiceStub(channel).GrantConsent(grant))
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED  # not B's patient
    a_token = await api.platform.token("system/*.cruds", ORG_A, [TREAT])
    async with authed_channel(api.platform.identity_address, a_token) as channel:
        await identity_pb2_grpc.IdentityServiceStub(channel).GrantConsent(grant)
    assert (await get(api.b, "Observation", observation.id)) == observation
