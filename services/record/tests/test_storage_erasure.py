"""Erasure by crypto-shredding: afterwards every read of the patient answers NOT_FOUND with
reason ERASED, the database holds nothing of the patient that can be opened (the wrapped key
is gone, and so are the sealed versions, index entries and idempotency records), and other
patients are untouched."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from medledger.common.errors import NotFound


def new_id() -> str:
    return uuid.uuid4().hex


async def assert_erased(read: Callable[[], Awaitable[object]]) -> None:
    with pytest.raises(NotFound) as raised:
        await read()
    assert raised.value.reason == "ERASED"


async def everything(records: Any) -> bytes:
    raw = b""
    for name in await records.db.list_collection_names():
        collection = records.db.get_collection(
            name, codec_options=CodecOptions(document_class=RawBSONDocument)
        )
        raw += b"".join([doc.raw async for doc in collection.find({})])
    return raw


async def test_an_erased_patient_is_gone_and_others_are_not(records: Any) -> None:
    patient, other = new_id(), new_id()
    obs, risk, provenance = new_id(), new_id(), new_id()
    subject = {"patient": {f"Patient/{patient}"}}
    await records.write("Patient", patient, patient, '{"resourceType":"Patient"}', search={})
    await records.write("Observation", obs, patient, search=subject, idempotency_key="k1")
    await records.write("Observation", obs, patient, search=subject, expected_version=1)
    await records.write("RiskAssessment", risk, patient, search=subject)
    await records.write("Provenance", provenance, patient, search=subject)
    kept = new_id()
    await records.write(
        "Observation", kept, other, search={"patient": {f"Patient/{other}"}}, idempotency_key="k2"
    )
    # Another replica has the patient's key in its cache.
    replica = records.replica()
    await replica.read("Observation", obs)
    before = await everything(records)
    wrapped = {doc["_id"]: doc["wrapped"] async for doc in records.db["record_patients"].find()}
    sealed = [
        (doc["patient"], doc["content"]) async for doc in records.db["record_versions"].find()
    ]

    assert await records.records.erase_patient(patient) == 5

    for storage in (records.records, replica, records.replica()):
        for resource_type, rid in (
            ("Patient", patient),
            ("Observation", obs),
            ("RiskAssessment", risk),
            ("Provenance", provenance),
        ):
            await assert_erased(lambda s=storage, t=resource_type, r=rid: s.read(t, r))
        await assert_erased(lambda s=storage: s.read("Observation", obs, 1))
        await assert_erased(
            lambda s=storage: s.history("Observation", obs, page_size=5, page_token="")
        )
        await assert_erased(
            lambda s=storage: s.patient_resources(patient, page_size=5, page_token="")
        )
        assert not (
            await storage.search(
                "Observation", [("patient", (f"Patient/{patient}",))], page_size=5, page_token=""
            )
        ).items
        assert await storage.idempotent_result("k1", b"") is None
    # Nor can anything be written for the patient again.
    await assert_erased(lambda: records.write("Observation", new_id(), patient))
    await assert_erased(lambda: records.write("Observation", obs, patient, expected_version=2))

    # The other patient is untouched.
    assert (await records.records.read("Observation", kept)).patient_id == other
    assert (await records.records.idempotent_result("k2", b"")).ref.resource_id == kept
    found = await records.records.search(
        "Observation", [("patient", (f"Patient/{other}",))], page_size=5, page_token=""
    )
    assert [v.ref.resource_id for v in found.items] == [kept]

    # Nothing decryptable is left: neither the wrapped key nor any of the sealed versions,
    # and the patient's pseudonym remains only as the tombstone's id.
    after = await everything(records)
    tombstone = await records.db["record_patients"].find_one({"erased": True})
    assert set(tombstone) == {"_id", "erased", "erased_at"}
    pseudonym = tombstone["_id"]
    assert wrapped[pseudonym].encode() in before
    assert wrapped[pseudonym].encode() not in after
    shredded = [content for owner, content in sealed if owner == pseudonym]
    assert len(shredded) == 5
    for content in shredded:
        assert content in before
        assert content not in after
    assert after.count(pseudonym) == 1
    for collection in ("record_versions", "record_index", "record_idempotency"):
        assert await records.db[collection].count_documents({"patient": pseudonym}) == 0
    assert await records.db["record_current"].count_documents({"erased": True}) == 4
    assert await records.db["record_current"].count_documents({"patient": pseudonym}) == 0

    assert await records.records.erase_patient(patient) == 0  # a retry finishes, harmlessly


async def test_a_write_prepared_before_erasure_is_never_committed(records: Any) -> None:
    patient = new_id()
    await records.write("Observation", new_id(), patient)
    pending = await records.prepare(
        "Observation", new_id(), patient, json.dumps({"resourceType": "Observation"})
    )
    await records.records.erase_patient(patient)
    await assert_erased(
        lambda: records.records.commit_write(pending, records.receipt_for(pending.ref))
    )
    with pytest.raises(NotFound):  # never committed, so never named the patient
        await records.records.read("Observation", pending.ref.resource_id)
    assert await records.db["record_versions"].count_documents({}) == 0
