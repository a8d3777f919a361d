"""Which index entries a search reads: the group likely to match fewest drives, and a token
most resources share (a LOINC code) is not read whole when a patient's token is selective.
On secantusdb a capped count or a limited find of a token reads every entry of it, so a
search that touched the common token grew with the store (0.5 s at 100,000 resources)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import bson
import pytest
from bson.binary import Binary
from pymongo import AsyncMongoClient, monitoring

from medledger.common.key_cache import DataKeyCache
from medledger.record.adapters.mongo_store import TOKEN_COUNT_CAP, RecordStore
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.domain.records import EncryptedRecords
from medledger.record.domain.search_params import selectivity_rank

from .conftest import Records
from .test_storage_index_layout import search

INDEX = "record_index"


class IndexReads(monitoring.CommandListener):
    """The commands sent to the search index collection, encoded, while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.commands: list[bytes] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.armed and event.command.get(event.command_name) == INDEX:
            self.commands.append(bson.encode(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def read(self, token: bytes) -> bool:
        """Whether a command named ``token`` (in a filter: ids are not tokens)."""
        return any(token in command for command in self.commands)


@pytest.fixture
async def watched(
    mongo_server: Any, record_keys: VaultPatientKeys
) -> AsyncIterator[tuple[Records, IndexReads]]:
    reads = IndexReads()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_server.uri, tz_aware=True, event_listeners=[reads]
    )
    database = f"record{uuid.uuid4().hex[:10]}"
    store = RecordStore(client, database)
    await store.ensure_indexes()
    records = Records(
        EncryptedRecords(store, record_keys, cache=DataKeyCache()),
        store,
        record_keys,
        client[database],
    )
    try:
        yield records, reads
    finally:
        await client.close()


def new_id() -> str:
    return uuid.uuid4().hex


async def index_tokens(records: Records) -> dict[bytes, set[bytes]]:
    return {
        bytes(doc["_id"]): {bytes(t) for t in doc["tokens"]}
        async for doc in records.db[INDEX].find({})
    }


@dataclass(frozen=True)
class Stored:
    patient: str
    code: str  # system|code
    ids: set[str]  # the patient's three Observations with the code
    code_token: bytes
    patient_token: bytes


async def store_patient(records: Records) -> Stored:
    """A patient with three Observations of a code (and another patient with one): their
    ids and the blinded tokens of the code and of the patient. The patient's token sorts
    after the code's, so that only the parameters' ranking puts it first."""
    for _ in range(16):  # with a fresh patient and code, a chance of 1/2 each
        code = f"http://loinc.org|{uuid.uuid4().int % 100000}-{uuid.uuid4().int % 10}"
        other, patient = new_id(), new_id()
        before = set(await index_tokens(records))
        await records.write(
            "Observation", new_id(), other, search={"code": {code}, "patient": {f"Patient/{other}"}}
        )
        (others,) = [t for i, t in (await index_tokens(records)).items() if i not in before]
        before = set(await index_tokens(records))
        mine = {new_id() for _ in range(3)}
        for rid in sorted(mine):
            await records.write(
                "Observation",
                rid,
                patient,
                search={"code": {code}, "patient": {f"Patient/{patient}"}},
            )
        new = [t for i, t in (await index_tokens(records)).items() if i not in before]
        shared = set.intersection(*new)
        (code_token,) = shared & others
        (own,) = shared - {code_token}
        if own > code_token:
            return Stored(patient, code, mine, code_token, own)
    raise AssertionError("no patient token sorted after its code's in 16 tries")


async def many_with(records: Records, token: bytes, count: int) -> None:
    """``count`` index documents of other patients holding ``token``, as a large store has."""
    await records.db[INDEX].insert_many(
        [
            {"_id": Binary(os.urandom(32)), "patient": Binary(os.urandom(32)), "tokens": [token]}
            for _ in range(count)
        ]
    )


async def test_a_patient_s_search_never_reads_a_common_code_whole(
    watched: tuple[Records, IndexReads],
) -> None:
    records, reads = watched
    stored = await store_patient(records)
    await many_with(records, stored.code_token, TOKEN_COUNT_CAP + 100)

    reads.armed = True
    found = await search(
        records, ("code", (stored.code,)), ("patient", (f"Patient/{stored.patient}",))
    )
    reads.armed = False

    assert found == stored.ids
    assert reads.read(stored.patient_token)
    assert not reads.read(stored.code_token)


async def test_a_common_first_group_gives_way_to_the_rarest(
    watched: tuple[Records, IndexReads],
) -> None:
    """The order is a hint: when the first group matches many, the others are counted and
    the rarest drives; the answer is the same."""
    records, reads = watched
    stored = await store_patient(records)
    code, own = stored.code_token, stored.patient_token
    await many_with(records, code, TOKEN_COUNT_CAP + 100)
    store = records.store

    reads.armed = True
    common_first = await store.matching([[code], [own]], None, 50)
    reads.armed = False
    rare_first = await store.matching([[own], [code]], None, 50)

    assert len(common_first) == 3
    assert common_first == rare_first == sorted(common_first)
    walks = [c for c in reads.commands if b"sort" in c]  # the driver's walk is sorted
    assert walks
    assert all(own in walk and code not in walk for walk in walks)
    query = (("patient", (f"Patient/{stored.patient}",)), ("code", (stored.code,)))
    assert await search(records, *query) == stored.ids


async def test_groups_nothing_matches_give_nothing_whatever_their_order(
    watched: tuple[Records, IndexReads],
) -> None:
    records, _ = watched
    stored = await store_patient(records)
    code, own = stored.code_token, stored.patient_token
    await many_with(records, code, TOKEN_COUNT_CAP + 100)
    absent = os.urandom(32)
    store = records.store
    for groups in ([[own], [absent]], [[absent], [own]], [[code], [absent]], [[own], []]):
        assert await store.matching(groups, None, 50) == []


def test_identifiers_and_patients_rank_before_codes_and_statuses() -> None:
    ranks = [
        selectivity_rank(name)
        for name in ("identifier", "patient", "family", "given", "code", "date", "status")
    ]
    assert ranks == sorted(ranks)
    assert selectivity_rank("patient") < selectivity_rank("code") < selectivity_rank("category")
    assert selectivity_rank("no-such-parameter") > selectivity_rank("gender")
