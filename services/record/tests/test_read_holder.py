"""A read (get, history, search) asks CheckAccess with the record holder named by the
patient's row it read to open the versions, instead of reading that row (and the Patient's
pointer) a second time; a row whose holder fails its tag still makes the read DATA_LOSS."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.common.errors import DataLoss
from medledger.common.interceptors import Principal
from medledger.record.domain.peers import (
    AccessQuery,
    AccessVerdict,
    RecordEvent,
    Requester,
)
from medledger.record.domain.ports import ResourceWrite
from medledger.record.domain.resources import ResourceService
from medledger.testkit.fhir_samples import sample

from .conftest import Records
from .test_storage_tamper import set_field

HOLDER = "org-a"


class Access:
    def __init__(self) -> None:
        self.queries: list[AccessQuery] = []

    async def check(self, query: AccessQuery) -> AccessVerdict:
        self.queries.append(query)
        return AccessVerdict(True, "SAME_ORGANIZATION")


class Ledger:
    def __init__(self) -> None:
        self.events: list[tuple[str, RecordEvent]] = []

    async def append(
        self, patient_id: str, event: RecordEvent, *, idempotency_key: str = ""
    ) -> bytes:
        self.events.append((patient_id, event))
        return b"receipt"

    async def append_many(self, events: Sequence[tuple[str, RecordEvent, str]]) -> list[bytes]:
        raise AssertionError("a read appends one entry")

    async def new_scan_secret(self, patient_id: str) -> bytes:
        raise AssertionError("no Patient is created here")


class Directory:
    async def register_holder(
        self, patient_id: str, organization: str, scan_secret: bytes = b""
    ) -> None:
        raise AssertionError("no Patient is created here")

    async def erase_patient(self, patient_id: str) -> None:
        raise AssertionError("nothing is erased here")


class Storage:
    """The real storage, counting the holder lookups a read makes."""

    def __init__(self, records: Records) -> None:
        self._inner = records.records
        self.holder_lookups = 0

    async def patient_holder(self, patient_id: str) -> str:
        self.holder_lookups += 1
        return await self._inner.patient_holder(patient_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def stored_observation(records: Records) -> tuple[str, str]:
    patient, observation = uuid.uuid4().hex, uuid.uuid4().hex
    for write in (
        ResourceWrite("Patient", patient, patient, "{}", {}, holder_organization=HOLDER),
        ResourceWrite(
            "Observation",
            observation,
            patient,
            json.dumps(sample("Observation")),
            {"patient": {patient}},
        ),
    ):
        pending = await records.records.prepare_write(write)
        await records.records.commit_write(pending, records.receipt_for(pending.ref))
    return patient, observation


def requester() -> Requester:
    return Requester(
        Principal(subject="app", organization=HOLDER, scopes=frozenset({"system/*.r"})),
        purpose_pb2.PURPOSE_OF_USE_TREAT,
    )


@pytest.fixture
def service(records: Records) -> tuple[ResourceService, Storage, Access, Ledger]:
    storage, access, ledger = Storage(records), Access(), Ledger()
    return (
        ResourceService(storage, access, ledger, directory=Directory()),  # type: ignore[arg-type]
        storage,
        access,
        ledger,
    )


async def test_a_version_read_carries_its_patients_holder(records: Records) -> None:
    _, observation = await stored_observation(records)
    stored = await records.records.read("Observation", observation)
    assert stored.holder == HOLDER
    (history,) = (
        await records.records.history("Observation", observation, page_size=5, page_token="")
    ).items
    assert history.holder == HOLDER
    # Not part of the version: a reading with and without it compare equal.
    assert dataclasses.replace(stored, holder=None) == history


async def test_get_asks_with_the_holder_it_read_and_looks_nothing_up_again(
    records: Records, service: tuple[ResourceService, Storage, Access, Ledger]
) -> None:
    resources, storage, access, ledger = service
    patient, observation = await stored_observation(records)
    stored = await resources.get(requester(), "Observation", observation)
    assert stored.ref.resource_id == observation
    (query,) = access.queries
    assert (query.patient_id, query.holder, query.resource_type) == (patient, HOLDER, "Observation")
    assert storage.holder_lookups == 0
    assert [p for p, _ in ledger.events] == [patient]


async def test_history_asks_with_the_holder_it_read(
    records: Records, service: tuple[ResourceService, Storage, Access, Ledger]
) -> None:
    resources, storage, access, _ = service
    _, observation = await stored_observation(records)
    page = await resources.history(
        requester(), "Observation", observation, page_size=5, page_token=""
    )
    assert len(page.items) == 1
    assert [q.holder for q in access.queries] == [HOLDER]
    assert storage.holder_lookups == 0


async def test_search_asks_with_the_holders_it_read(
    records: Records, service: tuple[ResourceService, Storage, Access, Ledger]
) -> None:
    resources, storage, access, ledger = service
    patient, observation = await stored_observation(records)
    page = await resources.search(
        requester(), "Observation", [("patient", patient)], page_size=10, page_token=""
    )
    assert [v.ref.resource_id for v in page.items] == [observation]
    # The search-wide check (no patient), then the patient's, with its holder.
    assert [(q.patient_id, q.holder) for q in access.queries] == [("", ""), (patient, HOLDER)]
    assert storage.holder_lookups == 0
    assert [p for p, _ in ledger.events] == [patient]


async def test_a_changed_holder_still_makes_a_get_data_loss(
    records: Records, service: tuple[ResourceService, Storage, Access, Ledger]
) -> None:
    resources, storage, access, ledger = service
    _, observation = await stored_observation(records)
    row = await records.db["record_patients"].find_one({})
    assert row is not None
    await set_field(records, "record_patients", row["_id"], "holder", "org-b")
    stored = await records.records.read("Observation", observation)
    assert stored.holder is None
    with pytest.raises(DataLoss) as raised:
        await resources.get(requester(), "Observation", observation)
    assert raised.value.reason == "RECORD_DAMAGED"
    assert storage.holder_lookups == 1
    assert access.queries == []
    assert ledger.events == []
