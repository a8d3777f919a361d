"""Duplicate patients over gRPC, against a real identity (CheckAccess, consents, tokens), a
real ledger, secantusdb and OpenBao: FindDuplicatePatients proposes pairs with the fields that
matched, only of patients the caller may search, ledgered as reads without patient data;
LinkPatients writes Patient.link on both as ledgered versions, idempotently; bad input is
INVALID_ARGUMENT naming the field; an erased patient's pairs are gone."""

from __future__ import annotations

import json
import math
import random
import string
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
from medledger.record.config import RecordSettings
from medledger.record.domain.patient_matching import patient_blocking_keys
from medledger.record.runtime import from_settings
from medledger.testkit.platform import Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.receipt import verify_receipt
from medledger.verify.trust import TrustPolicy

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
PATRQT = purpose_pb2.PURPOSE_OF_USE_PATRQT
ORG_A, ORG_B = "dup-hospital-a", "dup-hospital-b"


@dataclass
class DuplicatesApi:
    platform: Platform
    a: record_pb2_grpc.RecordServiceAsyncStub  # holds the patients
    b: record_pb2_grpc.RecordServiceAsyncStub  # another organisation: reads under consent
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    policy: TrustPolicy
    database: Any
    address: str

    async def size(self) -> int:
        checkpoint = await self.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        return int(self.policy.open(checkpoint.checkpoint).size)

    async def entries_since(self, size: int) -> list[ledger_pb2.IndexedEntry]:
        reply = await self.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=size, page_size=1000)
        )
        return list(reply.entries)


@pytest.fixture(scope="module")
async def api(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[DuplicatesApi]:
    platform = auth_platform
    database = f"dupapi{uuid.uuid4().hex[:8]}"
    server = ServiceServer(
        from_settings(
            RecordSettings(grpc_port=0),
            MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
            PeerSettings(
                identity_addr=platform.identity_address, ledger_addr=platform.ledger_address
            ),
        )
    )
    await server.start()
    address = f"127.0.0.1:{server.port}"
    channels = [
        authed_channel(address, await platform.token("system/*.cruds", ORG_A, [TREAT])),
        authed_channel(address, await platform.token("system/*.rs", ORG_B, [TREAT])),
        authed_channel(platform.ledger_address, await platform.token("ledger.read", ORG_A)),
    ]
    ledger = ledger_pb2_grpc.LedgerServiceStub(channels[2])
    vkey = (await ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_server.uri, directConnection=True
    )
    try:
        yield DuplicatesApi(
            platform=platform,
            a=record_pb2_grpc.RecordServiceStub(channels[0]),
            b=record_pb2_grpc.RecordServiceStub(channels[1]),
            ledger=ledger,
            policy=TrustPolicy.parse([vkey]),
            database=client[database],
            address=address,
        )
    finally:
        await client.close()
        for channel in channels:
            await channel.close(None)
        await server.stop(0)


def family_name() -> str:
    """A family name no other test uses (so this test's pairs are its own)."""
    return "Q" + "".join(random.choices(string.ascii_lowercase, k=7))


def patient_json(family: str, given: str, birth: str, **changes: Any) -> str:
    document: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": uuid.uuid4().hex}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
        "address": [{"line": ["12 Elm Street"], "city": "Salem", "postalCode": "01970"}],
    }
    document.update(changes)
    return json.dumps(document)


async def create(api: DuplicatesApi, text: str) -> record_pb2.StoredResource:
    reply = await api.a.CreateResource(
        record_pb2.CreateResourceRequest(resource_json=text, purpose=TREAT)
    )
    return reply.resource


async def find(
    stub: record_pb2_grpc.RecordServiceAsyncStub, **fields: Any
) -> record_pb2.FindDuplicatePatientsResponse:
    fields.setdefault("purpose", TREAT)
    return await stub.FindDuplicatePatients(record_pb2.FindDuplicatePatientsRequest(**fields))


def pairs_among(
    reply: record_pb2.FindDuplicatePatientsResponse, *ids: str
) -> list[record_pb2.DuplicateCandidate]:
    wanted = set(ids)
    return [c for c in reply.candidates if {c.first_patient_id, c.second_patient_id} <= wanted]


async def failure(call: Any) -> MedledgerError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


async def test_a_likely_pair_comes_back_with_the_fields_that_matched(api: DuplicatesApi) -> None:
    family = family_name()
    typo = family[:3] + family[4] + family[3] + family[5:]  # two letters swapped
    first = await create(api, patient_json(family, "Elizabeth", "1970-03-04"))
    second = await create(api, patient_json(typo, "Liz", "1970-04-03"))
    stranger = await create(api, patient_json(family_name(), "Maria", "1955-10-11"))

    before = await api.size()
    reply = await find(api.a, page_size=1000)
    (pair,) = pairs_among(reply, first.id, second.id, stranger.id)
    assert (pair.first_patient_id, pair.second_patient_id) == tuple(sorted((first.id, second.id)))
    assert pair.score >= 0.9
    assert {"name.family", "name.given", "birthDate", "gender", "address.postalCode"} <= set(
        pair.matched_fields
    )
    assert "identifier" not in pair.matched_fields  # each has its own record number
    scores = [c.score for c in reply.candidates]
    assert scores == sorted(scores, reverse=True)

    # One RECORD_READ of Patient per patient answered, and nothing of theirs in it.
    reads = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_READ
    ]
    answered = {p for c in reply.candidates for p in (c.first_patient_id, c.second_patient_id)}
    assert len(reads) == len(answered)
    assert {e.entry.resource.type for e in reads} == {"Patient"}
    assert {e.entry.organization for e in reads} == {ORG_A}
    for entry in reads:
        for secret in (first.id, second.id, family, typo, "1970", "Elizabeth"):
            assert secret.encode() not in entry.entry_bytes

    # A higher threshold than the pair's score leaves it out.
    above = math.nextafter(pair.score, 2.0)
    if above <= 1.0:
        assert pairs_among(await find(api.a, min_score=above), first.id, second.id) == []


async def test_only_patients_the_caller_may_search_are_paired(api: DuplicatesApi) -> None:
    family = family_name()
    first = await create(api, patient_json(family, "Margaret", "1981-06-07"))
    second = await create(api, patient_json(family, "Maggie", "1981-06-07"))
    assert pairs_among(await find(api.a), first.id, second.id)

    before = await api.size()
    hidden = await find(api.b, page_size=1000)
    assert pairs_among(hidden, first.id, second.id) == []
    reads = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_READ and e.entry.organization == ORG_B
    ]
    answered = {p for c in hidden.candidates for p in (c.first_patient_id, c.second_patient_id)}
    assert len(reads) == len(answered)  # nothing ledgered for what was left out

    async def grant(patient_id: str) -> None:
        token = await api.platform.token("system/*.cruds", ORG_A, [TREAT])
        async with authed_channel(api.platform.identity_address, token) as channel:
            await identity_pb2_grpc.IdentityServiceStub(channel).GrantConsent(
                identity_pb2.GrantConsentRequest(
                    patient_id=patient_id,
                    grantee=identity_pb2.Grantee(organization=ORG_B),
                    resource_types=["Patient"],
                    purposes=[TREAT],
                )
            )

    # One of the two consents: the pair would show the other, so it stays out.
    await grant(first.id)
    assert pairs_among(await find(api.b, page_size=1000), first.id, second.id) == []
    await grant(second.id)
    (pair,) = pairs_among(await find(api.b, page_size=1000), first.id, second.id)
    assert {pair.first_patient_id, pair.second_patient_id} == {first.id, second.id}


async def test_pages_follow_each_other_in_score_order(api: DuplicatesApi) -> None:
    family = family_name()
    for given, birth in (
        ("Katherine", "1990-01-02"),
        ("Kate", "1990-01-02"),
        ("Katie", "1990-02-01"),
    ):
        await create(api, patient_json(family, given, birth))
    everything = await find(api.a, page_size=1000)
    assert len(everything.candidates) >= 3
    assert everything.next_page_token == ""
    paged: list[record_pb2.DuplicateCandidate] = []
    token = ""
    while True:
        reply = await find(api.a, page_size=2, page_token=token)
        assert len(reply.candidates) <= 2
        paged += reply.candidates
        token = reply.next_page_token
        if not token:
            break
    assert paged == list(everything.candidates)
    # A token is bound to its threshold.
    first_page = await find(api.a, page_size=1)
    refused = await failure(
        find(api.a, page_size=1, page_token=first_page.next_page_token, min_score=0.5)
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.violations] == ["page_token"]


async def test_one_patients_pairs_come_from_its_own_blocks(api: DuplicatesApi) -> None:
    family, other = family_name(), family_name()
    anne = await create(api, patient_json(family, "Anne", "1961-07-08"))
    ann = await create(api, patient_json(family, "Ann", "1961-07-08"))
    annie = await create(api, patient_json(family, "Annie", "1961-08-07"))
    # A pair of others that shares none of Anne's keys.
    await create(api, patient_json(other, "Boris", "1944-02-03"))
    await create(api, patient_json(other, "Borys", "1944-02-03"))
    everything = await find(api.a, page_size=1000)
    of_anne = [
        c for c in everything.candidates if anne.id in (c.first_patient_id, c.second_patient_id)
    ]
    assert len(of_anne) == 2  # with Ann and with Annie; Ann and Annie pair too, elsewhere
    assert pairs_among(everything, ann.id, annie.id)

    before = await api.size()
    reply = await find(api.a, page_size=1000, patient_id=anne.id)
    assert list(reply.candidates) == of_anne  # the same pairs, scores and order
    assert reply.next_page_token == ""
    reads = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_READ
    ]
    assert len(reads) == 3  # Anne and the two patients shown with her
    paged = await find(api.a, page_size=1, patient_id=anne.id)
    assert list(paged.candidates) == of_anne[:1]
    rest = await find(api.a, page_size=1, patient_id=anne.id, page_token=paged.next_page_token)
    assert list(rest.candidates) == of_anne[1:]
    # A token is bound to its patient.
    refused = await failure(
        find(api.a, page_size=1, patient_id=ann.id, page_token=paged.next_page_token)
    )
    assert [v.field for v in refused.violations] == ["page_token"]

    alone = await create(api, patient_json(family_name(), "Zelda", "2001-12-13"))
    assert list((await find(api.a, patient_id=alone.id)).candidates) == []


async def test_one_patients_pairs_are_refused_when_it_is_unknown_or_not_shown(
    api: DuplicatesApi,
) -> None:
    missing = await failure(find(api.a, patient_id=str(uuid.uuid4())))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    held = await create(api, patient_json(family_name(), "Olga", "1950-05-06"))
    denied = await failure(find(api.b, patient_id=held.id))  # no consent for B
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"patient_id": "not an id!"}, "patient_id"),
        ({"min_score": 1.5}, "min_score"),
        ({"min_score": -0.1}, "min_score"),
        ({"min_score": math.nan}, "min_score"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_size": -1}, "page_size"),
        ({"purpose": purpose_pb2.PURPOSE_OF_USE_UNSPECIFIED}, "purpose"),
    ],
)
async def test_bad_input_names_the_field(
    api: DuplicatesApi, fields: dict[str, Any], named: str
) -> None:
    error = await failure(find(api.a, **fields))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == [named]


async def link(api: DuplicatesApi, **fields: Any) -> record_pb2.LinkPatientsResponse:
    fields.setdefault("purpose", TREAT)
    return await api.a.LinkPatients(record_pb2.LinkPatientsRequest(**fields))


async def test_a_link_writes_both_patients_as_ledgered_versions(api: DuplicatesApi) -> None:
    family = family_name()
    source = await create(api, patient_json(family, "Robert", "1960-08-09"))
    target = await create(api, patient_json(family, "Bob", "1960-08-09"))
    request = {
        "source_patient_id": source.id,
        "target_patient_id": target.id,
        "source_expected_version": 1,
        "target_expected_version": 1,
        "idempotency_key": "merge-1",
    }
    assert pairs_among(await find(api.a, patient_id=source.id), source.id, target.id)
    before = await api.size()
    linked = await link(api, **request)
    assert (linked.source.id, linked.source.version) == (source.id, 2)
    assert (linked.target.id, linked.target.version) == (target.id, 2)
    retired = json.loads(linked.source.resource_json)
    kept = json.loads(linked.target.resource_json)
    assert retired["link"] == [
        {"other": {"reference": f"Patient/{target.id}"}, "type": "replaced-by"}
    ]
    assert retired["active"] is False
    assert kept["link"] == [{"other": {"reference": f"Patient/{source.id}"}, "type": "replaces"}]
    assert retired["name"] == json.loads(source.resource_json)["name"]  # nothing else changed
    # Judged and linked: no longer a candidate, from either side or in a whole listing.
    for one in (source.id, target.id):
        assert pairs_among(await find(api.a, patient_id=one), source.id, target.id) == []
    assert pairs_among(await find(api.a, page_size=1000), source.id, target.id) == []

    updates = [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_UPDATED
    ]
    assert sorted(e.leaf_index for e in updates) == sorted(
        (linked.source.receipt.leaf_index, linked.target.receipt.leaf_index)
    )
    by_leaf = {e.leaf_index: e for e in updates}
    for stored in (linked.source, linked.target):
        entry = by_leaf[stored.receipt.leaf_index]
        assert verify_receipt(stored.receipt, api.policy, entry.entry_bytes).entry_checked
        assert entry.entry.organization == ORG_A
        assert entry.entry.resource.type == "Patient"
        assert family.encode() not in entry.entry_bytes

    # The retry answers the first result and writes nothing.
    middle = await api.size()
    assert await link(api, **request) == linked
    assert [
        e
        for e in await api.entries_since(middle)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_UPDATED
    ] == []
    # A linked source cannot be linked to a third patient.
    third = await create(api, patient_json(family, "Robbie", "1960-08-09"))
    replaced = await failure(
        link(
            api,
            source_patient_id=source.id,
            target_patient_id=third.id,
            source_expected_version=2,
            target_expected_version=1,
        )
    )
    assert replaced.code == grpc.StatusCode.FAILED_PRECONDITION
    assert replaced.reason == "PATIENT_REPLACED"


async def test_a_link_refuses_unknown_stale_and_bad_requests(api: DuplicatesApi) -> None:
    family = family_name()
    source = await create(api, patient_json(family, "Susan", "1977-12-01"))
    target = await create(api, patient_json(family, "Sue", "1977-12-01"))
    base = {
        "source_patient_id": source.id,
        "target_patient_id": target.id,
        "source_expected_version": 1,
        "target_expected_version": 1,
    }
    before = await api.size()
    unknown = await failure(link(api, **{**base, "target_patient_id": uuid.uuid4().hex}))
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    stale = await failure(link(api, **{**base, "target_expected_version": 2}))
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.reason == "STALE_VERSION"
    same = await failure(link(api, **{**base, "target_patient_id": source.id}))
    assert same.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in same.violations] == ["target_patient_id"]
    missing = await failure(link(api, **{**base, "source_expected_version": 0}))
    assert [v.field for v in missing.violations] == ["source_expected_version"]
    # hospital B may not update A's patients.
    denied = await failure(
        api.b.LinkPatients(record_pb2.LinkPatientsRequest(**base, purpose=TREAT))
    )
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert [
        e
        for e in await api.entries_since(before)
        if e.entry.kind == ledger_pb2.EVENT_KIND_RECORD_UPDATED
    ] == []  # nothing written by any of them


async def blocking_tokens_stored(api: DuplicatesApi) -> int:
    found = api.database["record_index"].find({"blocks": {"$exists": True}})
    return sum([len(doc["blocks"]) async for doc in found])


async def test_an_erased_patient_leaves_no_pair_and_no_blocking_entry(api: DuplicatesApi) -> None:
    family = family_name()
    kept = await create(api, patient_json(family, "Dorothy", "1949-05-06"))
    erased = await create(api, patient_json(family, "Dot", "1949-05-06"))
    assert pairs_among(await find(api.a), kept.id, erased.id)
    before = await blocking_tokens_stored(api)

    token = await api.platform.token("system/*.cruds", ORG_A, [PATRQT])
    async with authed_channel(api.address, token) as channel:
        await record_pb2_grpc.RecordServiceStub(channel).ErasePatient(
            record_pb2.ErasePatientRequest(
                patient_id=erased.id,
                reason=record_pb2.ERASURE_REASON_PATIENT_REQUEST,
                purpose=PATRQT,
            )
        )
    assert pairs_among(await find(api.a, page_size=1000), kept.id, erased.id) == []
    # Exactly the erased patient's entries went away; the kept patient's stay.
    removed = before - await blocking_tokens_stored(api)
    assert removed == len(patient_blocking_keys(erased.resource_json)) > 0
