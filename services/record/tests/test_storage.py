"""The record's storage: round trips, versions, concurrency, search, idempotency and the
two-phase write, against the real secantusdb and OpenBao."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from medledger.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MedledgerError,
    NotFound,
)
from medledger.common.paging import Listing
from medledger.record.domain.ports import ResourceKey, ResourceWrite, VersionRef
from medledger.record.domain.records import PATIENT_LISTING
from medledger.verify.commitment import SALT_SIZE


def new_id() -> str:
    return uuid.uuid4().hex


def observation(value: float, code: str = "2345-7") -> str:
    return json.dumps(
        {"resourceType": "Observation", "code": {"text": code}, "valueQuantity": {"value": value}}
    )


async def test_a_committed_resource_reads_back_with_its_receipt_and_salt(records: Any) -> None:
    rid, patient = new_id(), new_id()
    body = observation(5.4)
    ref = await records.write("Observation", rid, patient, body)
    assert ref == VersionRef("Observation", rid, 1)
    stored = await records.records.read("Observation", rid)
    assert stored.ref == ref
    assert stored.resource_json == body
    assert stored.patient_id == patient
    assert stored.receipt == records.receipt_for(ref)
    assert len(stored.salt) == SALT_SIZE
    assert stored.updated_time.tzinfo is not None
    # Another replica (cold key cache) reads the same.
    assert await records.replica().read("Observation", rid, 1) == stored


async def test_a_write_is_invisible_until_committed_and_gone_when_aborted(
    records: Any,
) -> None:
    rid, patient = new_id(), new_id()
    pending = await records.prepare("Observation", rid, patient, observation(1))
    with pytest.raises(NotFound) as missing:
        await records.records.read("Observation", rid)
    assert missing.value.reason == "RESOURCE_NOT_FOUND"
    await records.records.abort_write(pending)
    assert await records.db["record_versions"].count_documents({}) == 0
    # The slot is free again; a committed update's next version is invisible while pending.
    await records.write("Observation", rid, patient, observation(1))
    update = await records.prepare("Observation", rid, patient, observation(2), expected_version=1)
    assert (await records.records.read("Observation", rid)).ref.version == 1
    with pytest.raises(NotFound) as missing:
        await records.records.read("Observation", rid, 2)
    assert missing.value.reason == "VERSION_NOT_FOUND"
    await records.records.commit_write(update, records.receipt_for(update.ref))
    assert (await records.records.read("Observation", rid)).resource_json == observation(2)


async def test_every_version_is_kept_and_history_pages_newest_first(records: Any) -> None:
    rid, patient = new_id(), new_id()
    for version in range(1, 6):
        await records.write(
            "Observation", rid, patient, observation(version), expected_version=version - 1
        )
    for version in range(1, 6):
        stored = await records.records.read("Observation", rid, version)
        assert stored.resource_json == observation(version)
        assert stored.receipt == records.receipt_for(stored.ref)
    seen: list[int] = []
    token = ""
    while True:
        page = await records.records.history("Observation", rid, page_size=2, page_token=token)
        assert len(page.items) <= 2
        seen += [v.ref.version for v in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]
    first = await records.records.history("Observation", rid, page_size=2, page_token="")
    with pytest.raises(InvalidArgument):  # a token of another resource's history
        await records.records.history(
            "Observation", new_id(), page_size=2, page_token=first.next_page_token
        )


async def test_a_stale_expected_version_is_aborted(records: Any) -> None:
    rid, patient = new_id(), new_id()
    await records.write("Observation", rid, patient, observation(1))
    await records.write("Observation", rid, patient, observation(2), expected_version=1)
    with pytest.raises(Aborted) as stale:
        await records.write("Observation", rid, patient, observation(3), expected_version=1)
    assert stale.value.reason == "STALE_VERSION"
    assert stale.value.metadata == {"current_version": "2"}
    assert (await records.records.read("Observation", rid)).resource_json == observation(2)


async def test_of_concurrent_updates_from_one_version_only_one_wins(records: Any) -> None:
    rid, patient = new_id(), new_id()
    await records.write("Observation", rid, patient, observation(0))
    replicas = [records.replica() for _ in range(6)]

    async def update(n: int) -> VersionRef | MedledgerError:
        try:
            return await records.write(
                "Observation",
                rid,
                patient,
                observation(n),
                expected_version=1,
                records=replicas[n],
            )
        except MedledgerError as error:
            return error

    results = await asyncio.gather(*(update(n) for n in range(6)))
    won = [r for r in results if isinstance(r, VersionRef)]
    lost = [r for r in results if isinstance(r, MedledgerError)]
    assert won == [VersionRef("Observation", rid, 2)]
    assert all(isinstance(e, Aborted) for e in lost), lost
    assert {e.reason for e in lost} <= {"CONCURRENT_WRITE", "STALE_VERSION"}
    latest = await records.records.read("Observation", rid)
    assert latest.ref.version == 2
    assert latest.resource_json == observation(results.index(won[0]))


async def test_creates_updates_and_compartments_are_checked(records: Any) -> None:
    rid, patient = new_id(), new_id()
    await records.write("Observation", rid, patient, observation(1))
    with pytest.raises(AlreadyExists):
        await records.write("Observation", rid, patient, observation(1))
    with pytest.raises(NotFound) as missing:
        await records.write("Observation", new_id(), patient, observation(1), expected_version=1)
    assert missing.value.reason == "RESOURCE_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as moved:
        await records.write("Observation", rid, new_id(), observation(2), expected_version=1)
    assert moved.value.reason == "PATIENT_CHANGED"
    with pytest.raises(NotFound):
        await records.records.read("Observation", rid, 2)
    with pytest.raises(InvalidArgument):
        await records.write("Observation", rid, patient, expected_version=-1)
    with pytest.raises(InvalidArgument):
        await records.records.history("Observation", rid, page_size=-1, page_token="")
    forged = Listing(PATIENT_LISTING, (patient,)).token("not a digest")  # the tag is keyless
    with pytest.raises(InvalidArgument):
        await records.records.patient_resources(patient, page_size=1, page_token=forged)


async def test_search_matches_exactly_on_latest_versions_and_pages(records: Any) -> None:
    patient, other = new_id(), new_id()
    glucose = {f"Observation/{new_id()}" for _ in range(5)}
    for name in sorted(glucose):
        await records.write(
            "Observation",
            name.split("/")[1],
            patient,
            observation(6.1),
            search={"code": {"http://loinc.org|2345-7"}, "patient": {f"Patient/{patient}"}},
        )
    bmi = new_id()
    await records.write(
        "Observation",
        bmi,
        other,
        observation(31),
        search={"code": {"http://loinc.org|39156-5"}, "patient": {f"Patient/{other}"}},
    )
    query = [("code", ("http://loinc.org|2345-7",))]
    found: list[str] = []
    token = ""
    while True:
        page = await records.records.search("Observation", query, page_size=2, page_token=token)
        assert len(page.items) <= 2
        found += [str(v.ref.resource) for v in page.items]
        token = page.next_page_token
        if not token:
            break
    assert len(found) == len(glucose)
    assert set(found) == glucose
    both = await records.records.search(
        "Observation",
        [("code", ("http://loinc.org|39156-5",)), ("patient", (f"Patient/{other}",))],
        page_size=10,
        page_token="",
    )
    assert [v.ref.resource_id for v in both.items] == [bmi]
    assert [v.resource_json for v in both.items] == [observation(31)]
    for mismatch in (
        [("code", ("http://loinc.org|39156-5",)), ("patient", (f"Patient/{patient}",))],
        [("code", ("http://loinc.org|2345-",))],  # exact match only
        [("patient", (f"Patient/{patient}".upper(),))],
    ):
        assert not (
            await records.records.search("Observation", mismatch, page_size=10, page_token="")
        ).items
    assert not (  # the type is part of the token
        await records.records.search("Condition", query, page_size=10, page_token="")
    ).items
    # An update that changes the code leaves the old code's results.
    moved = sorted(glucose)[0].split("/")[1]
    await records.write(
        "Observation",
        moved,
        patient,
        observation(31),
        search={"code": {"http://loinc.org|39156-5"}},
        expected_version=1,
    )
    page = await records.records.search("Observation", query, page_size=10, page_token="")
    assert moved not in {v.ref.resource_id for v in page.items}
    assert len(page.items) == 4
    first = await records.records.search("Observation", query, page_size=1, page_token="")
    with pytest.raises(InvalidArgument):  # a token bound to another query
        await records.records.search(
            "Observation",
            [("code", ("http://loinc.org|39156-5",))],
            page_size=1,
            page_token=first.next_page_token,
        )
    with pytest.raises(InvalidArgument):
        await records.records.search("Observation", [], page_size=1, page_token="")


async def test_a_patients_resources_are_listed_latest_versions(records: Any) -> None:
    patient = new_id()
    ids = [new_id() for _ in range(3)]
    for rid in ids:
        await records.write("Observation", rid, patient, observation(1))
    await records.write("Observation", ids[1], patient, observation(2), expected_version=1)
    await records.write("Observation", new_id(), new_id(), observation(9))
    first = await records.records.patient_resources(patient, page_size=2, page_token="")
    rest = await records.records.patient_resources(
        patient, page_size=2, page_token=first.next_page_token
    )
    assert not rest.next_page_token
    listed = [*first.items, *rest.items]
    assert {v.ref.resource_id: v.ref.version for v in listed} == {ids[0]: 1, ids[1]: 2, ids[2]: 1}
    assert len(listed) == 3


async def test_an_idempotency_key_gives_the_first_result(records: Any) -> None:
    patient = new_id()
    key, fingerprint = f"client-a:{new_id()}", b"digest of request 1"
    assert await records.records.idempotent_result(key, fingerprint) is None
    first = await records.write(
        "Observation", new_id(), patient, idempotency_key=key, fingerprint=fingerprint
    )
    replayed = await records.records.idempotent_result(key, fingerprint)
    assert replayed.ref == first
    assert replayed.receipt == records.receipt_for(first)
    with pytest.raises(Aborted) as reused:
        await records.records.idempotent_result(key, b"digest of request 2")
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # A retry that raced past the lookup: its commit yields the first result, and its own
    # version is dropped.
    retry_id = new_id()
    assert (
        await records.write(
            "Observation", retry_id, patient, idempotency_key=key, fingerprint=fingerprint
        )
        == first
    )
    with pytest.raises(NotFound):
        await records.records.read("Observation", retry_id)
    assert await records.db["record_versions"].count_documents({}) == 1
    with pytest.raises(Aborted) as reused:
        await records.write(
            "Observation", new_id(), patient, idempotency_key=key, fingerprint=b"other"
        )
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_a_stale_pending_write_gives_its_slot_up(records: Any) -> None:
    rid, patient = new_id(), new_id()
    hasty = records.replica(pending_timeout=timedelta(0))
    crashed = await records.prepare("Observation", rid, patient, observation(1))
    # Without a timeout the slot is held ...
    with pytest.raises(Aborted) as held:
        await records.prepare("Observation", rid, patient, observation(2))
    assert held.value.reason == "CONCURRENT_WRITE"
    # ... once stale, the next writer takes it, and the first writer's commit is refused.
    await records.write("Observation", rid, patient, observation(2), records=hasty)
    with pytest.raises(Aborted) as expired:
        await records.records.commit_write(crashed, records.receipt_for(crashed.ref))
    assert expired.value.reason == "WRITE_EXPIRED"
    assert (await records.records.read("Observation", rid)).resource_json == observation(2)
    # The sweep removes pending versions of crashed writers, and only those.
    await records.prepare("Observation", new_id(), patient)
    assert await records.records.sweep_pending() == 0
    assert await hasty.sweep_pending() == 1
    assert await records.db["record_versions"].count_documents({"state": "pending"}) == 0


async def test_the_first_write_names_the_holder_and_the_patient_must_be_stored(
    records: Any,
) -> None:
    patient, observation_id = new_id(), new_id()
    with pytest.raises(NotFound) as missing:
        await records.records.patient_holder(patient)
    assert missing.value.reason == "PATIENT_NOT_FOUND"
    when = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    pending = await records.records.prepare_write(
        ResourceWrite(
            "Patient", patient, patient, "{}", {}, holder_organization="org-a", updated_time=when
        )
    )
    assert pending.updated_time == when
    with pytest.raises(NotFound) as pending_only:  # not visible before its commit
        await records.records.patient_holder(patient)
    assert pending_only.value.reason == "PATIENT_NOT_FOUND"
    await records.records.commit_write(pending, records.receipt_for(pending.ref))
    assert (await records.records.read("Patient", patient)).updated_time == when
    assert await records.records.patient_holder(patient) == "org-a"
    # Later writes, whoever makes them, leave the holder as it is.
    await records.write("Observation", observation_id, patient, observation(1))
    assert await records.records.patient_holder(patient) == "org-a"

    other = new_id()
    others = await records.write("Observation", new_id(), other, observation(2))
    members = [
        ResourceKey("Observation", observation_id),
        others.resource,
        ResourceKey("Observation", new_id()),
    ]
    assert await records.records.outside_compartment(patient, members) == members[1:]

    await records.records.erase_patient(patient)
    with pytest.raises(NotFound) as erased:
        await records.records.patient_holder(patient)
    assert erased.value.reason == "ERASED"
    assert await records.records.outside_compartment(patient, members[:1]) == members[:1]


async def test_a_keyed_write_left_pending_is_resumed_as_it_was(records: Any) -> None:
    rid, patient, key = new_id(), new_id(), new_id()
    assert await records.records.resume_write(key, b"f") is None
    first = await records.prepare(
        "Observation", rid, patient, observation(1), idempotency_key=key, fingerprint=b"f"
    )
    resumed = await records.replica().resume_write(key, b"f")  # another replica, cold cache
    assert resumed is not None
    assert resumed == first  # ref, patient, JSON, salt and time
    assert resumed.write_id == first.write_id
    with pytest.raises(Aborted) as reused:
        await records.records.resume_write(key, b"another request")
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # Once stale it is not resumed (a retry then prepares afresh).
    assert await records.replica(pending_timeout=timedelta(0)).resume_write(key, b"f") is None
    stored = await records.records.commit_write(resumed, records.receipt_for(resumed.ref))
    assert (stored.ref, stored.salt) == (first.ref, first.salt)
    assert await records.records.resume_write(key, b"f") is None
    assert await records.records.idempotent_result(key, b"f") == stored


async def test_a_keyed_write_prepared_again_leaves_its_live_attempt_in_place(
    records: Any,
) -> None:
    """An attempt still pending keeps its slot from the same key too (a resend racing it
    finishes it instead: two attempts would both be ledgered); once stale, any writer
    takes the slot."""
    rid, patient, key = new_id(), new_id(), new_id()
    first = await records.prepare(
        "Observation", rid, patient, observation(1), idempotency_key=key, fingerprint=b"f"
    )
    for other_key in (new_id(), key):
        with pytest.raises(Aborted) as held:
            await records.prepare(
                "Observation",
                rid,
                patient,
                observation(1),
                idempotency_key=other_key,
                fingerprint=b"f",
            )
        assert held.value.reason == "CONCURRENT_WRITE"
    resumed = await records.records.resume_write(key, b"f")
    assert resumed is not None
    assert resumed.write_id == first.write_id
    again = await records.prepare(
        "Observation",
        rid,
        patient,
        observation(1),
        idempotency_key=key,
        fingerprint=b"f",
        records=records.replica(pending_timeout=timedelta(0)),
    )
    assert await records.db["record_versions"].count_documents({"state": "pending"}) == 1
    await records.records.commit_write(again, records.receipt_for(again.ref))
    assert (await records.records.read("Observation", rid)).resource_json == observation(1)


async def test_one_keyed_attempt_at_a_time_may_ledger_its_write(records: Any) -> None:
    """A claim on an idempotency key: the first attempt holds it; another (a resend racing
    the first) does not while the first's version is pending or committed, nor with
    another request; one taking over from an attempt that left nothing does."""
    patient, key = new_id(), new_id()

    async def attempt(store: Any = None) -> Any:
        return await records.prepare(
            "Observation",
            new_id(),
            patient,
            observation(1),
            idempotency_key=key,
            fingerprint=b"f",
            records=store,
        )

    first, racing = await attempt(), await attempt()
    assert await records.records.claim_write(key, b"f", first)
    assert await records.records.claim_write(key, b"f", first)  # its own claim, again
    assert not await records.records.claim_write(key, b"f", racing)
    with pytest.raises(Aborted) as reused:
        await records.records.claim_write(key, b"another request", racing)
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # The first's version expired (a crash): the next attempt takes the key over, once.
    hasty = records.replica(pending_timeout=timedelta(0))
    later, latest = await attempt(hasty), await attempt(hasty)
    assert await hasty.claim_write(key, b"f", later)
    assert not await records.records.claim_write(key, b"f", latest)
    # Committed, the key stays with the committed write.
    await records.records.commit_write(later, records.receipt_for(later.ref))
    assert not await hasty.claim_write(key, b"f", latest)
