"""The search index's earlier layout (one row per token) is converted to one document per
resource when storage starts: what a deployment upgraded in place finds."""

from __future__ import annotations

import uuid
from typing import Any

from medledger.record.adapters.mongo_store import RecordStore

from .conftest import Records
from .test_duplicate_blocks import patient as patient_json

GLUCOSE = "http://loinc.org|2345-7"
BMI = "http://loinc.org|39156-5"


def new_id() -> str:
    return uuid.uuid4().hex


async def as_token_rows(records: Records) -> int:
    """Rewrites every index document as the earlier layout stored it, with its indexes;
    the rows written."""
    index = records.db["record_index"]
    await index.create_index([("token", 1), ("resource", 1)])
    await index.create_index([("resource", 1)])
    await index.create_index([("block", 1), ("token", 1)], sparse=True)
    rows: list[dict[str, Any]] = []
    async for doc in index.find({}):
        common = {"resource": doc["_id"], "patient": doc["patient"]}
        rows += [{"token": t, **common} for t in doc["tokens"]]
        rows += [{"token": t, **common, "block": True} for t in doc.get("blocks", [])]
    await index.delete_many({})
    await index.insert_many(rows)
    return len(rows)


async def layout(records: Records) -> dict[bytes, tuple[bytes, set[bytes], set[bytes]]]:
    return {
        bytes(doc["_id"]): (
            bytes(doc["patient"]),
            {bytes(t) for t in doc["tokens"]},
            {bytes(t) for t in doc.get("blocks", [])},
        )
        async for doc in records.db["record_index"].find({})
    }


async def search(records: Records, *query: tuple[str, tuple[str, ...]]) -> set[str]:
    page = await records.records.search("Observation", list(query), page_size=50, page_token="")
    return {v.ref.resource.resource_id for v in page.items}


async def test_token_rows_become_one_document_per_resource_at_start(records: Records) -> None:
    patient, other = new_id(), new_id()
    glucose = {new_id() for _ in range(3)}
    for rid in glucose:
        await records.write("Observation", rid, patient, search={"code": {GLUCOSE}})
    bmi = new_id()
    await records.write("Observation", bmi, other, search={"code": {BMI}, "status": {"final"}})
    await records.write("Patient", patient, patient, patient_json("Smith", "John", "1970-03-04"))
    before = await layout(records)
    assert any(blocks for _, _, blocks in before.values())
    assert await as_token_rows(records) > 5
    assert await search(records, ("code", (GLUCOSE,))) == set()  # the old rows are not read

    restarted = RecordStore(records.store._client, records.db.name)
    await restarted.ensure_indexes()

    index = records.db["record_index"]
    assert await index.count_documents({"token": {"$exists": True}}) == 0
    assert await layout(records) == before  # one document per resource, as written
    assert set(await index.index_information()) == {
        "_id_",
        "tokens_1__id_1",
        "patient_1",
        "blocks_1",
    }
    assert await search(records, ("code", (GLUCOSE,))) == glucose
    assert await search(records, ("code", (BMI,)), ("status", ("final",))) == {bmi}


async def test_a_resource_committed_since_keeps_its_new_document(records: Records) -> None:
    patient, rid = new_id(), new_id()
    await records.write("Observation", rid, patient, search={"code": {GLUCOSE}})
    index = records.db["record_index"]
    current = await index.find_one({})
    assert current is not None
    # A row left from before the upgrade (the earlier layout's index still there), naming
    # a code the resource no longer has.
    await index.create_index([("token", 1), ("resource", 1)])
    await index.insert_one(
        {
            "token": current["tokens"][0][::-1],
            "resource": current["_id"],
            "patient": current["patient"],
        }
    )

    restarted = RecordStore(records.store._client, records.db.name)
    await restarted.ensure_indexes()

    assert await index.count_documents({}) == 1
    assert await index.find_one({}) == current
    assert await search(records, ("code", (GLUCOSE,))) == {rid}


async def test_a_collection_without_the_earlier_indexes_is_not_searched_for_rows(
    records: Records,
) -> None:
    await records.write("Observation", new_id(), new_id(), search={"code": {GLUCOSE}})
    index = records.db["record_index"]
    await index.insert_one({"token": b"x" * 32, "resource": b"y" * 32, "patient": b"z" * 32})

    restarted = RecordStore(records.store._client, records.db.name)
    await restarted.ensure_indexes()

    # Converted already (its indexes dropped last): no start scans the collection again.
    assert await index.count_documents({"token": {"$exists": True}}) == 1
