"""Tamper evidence: a byte changed anywhere the storage reads makes the read fail with
DATA_LOSS, never a wrong answer (another version, another resource, an older pointer)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bson.binary import Binary

from medledger.common.errors import DataLoss
from medledger.record.domain.ports import ResourceWrite


def new_id() -> str:
    return uuid.uuid4().hex


def flip(value: bytes, at: int = -1) -> Binary:
    changed = bytearray(value)
    changed[at] ^= 0x01
    return Binary(bytes(changed))


async def three_versions(records: Any) -> tuple[str, str]:
    rid, patient = new_id(), new_id()
    for version in (1, 2, 3):
        await records.write(
            "Observation",
            rid,
            patient,
            json.dumps({"resourceType": "Observation", "valueInteger": version}),
            search={"code": {"c"}},
            expected_version=version - 1,
        )
    return rid, patient


async def version_doc(records: Any, version: int) -> dict[str, Any]:
    doc = await records.db["record_versions"].find_one({"version": version})
    assert doc is not None
    return dict(doc)


async def set_field(records: Any, collection: str, doc_id: Any, field: str, value: Any) -> None:
    result = await records.db[collection].update_one({"_id": doc_id}, {"$set": {field: value}})
    assert result.modified_count == 1


async def assert_damaged(read: Callable[[], Awaitable[object]]) -> None:
    with pytest.raises(DataLoss) as raised:
        await read()
    assert raised.value.reason == "RECORD_DAMAGED"


# Each case damages version 2 of a resource with three versions.
VERSION_DAMAGE: dict[str, Callable[[dict[str, Any]], tuple[str, Any]]] = {
    "a byte of the content": lambda d: ("content", flip(d["content"], 40)),
    "the last byte of the content (its tag)": lambda d: ("content", flip(d["content"])),
    "a byte of the nonce": lambda d: ("nonce", flip(d["nonce"], 0)),
    "a byte of the receipt": lambda d: ("receipt", flip(d["receipt"], 3)),
    "a byte of the receipt's nonce": lambda d: ("receipt_nonce", flip(d["receipt_nonce"])),
    "the version number": lambda d: ("version", 3),
    "a byte of the resource digest": lambda d: ("resource", flip(d["resource"], 5)),
    "a byte of the patient pseudonym": lambda d: ("patient", flip(d["patient"], 7)),
    "a byte of the state": lambda d: ("state", "committes"),
    "the state, made pending": lambda d: ("state", "pending"),
    "the content of another version": lambda d: ("content", "version 1's content"),
}


@pytest.mark.parametrize("damage", list(VERSION_DAMAGE))
async def test_a_damaged_version_is_data_loss_wherever_it_is_read(
    records: Any, damage: str
) -> None:
    rid, _ = await three_versions(records)
    doc = await version_doc(records, 2)
    field, value = VERSION_DAMAGE[damage](doc)
    if value == "version 1's content":
        other = await version_doc(records, 1)
        value = other["content"]
        await set_field(records, "record_versions", doc["_id"], "nonce", other["nonce"])
    await set_field(records, "record_versions", doc["_id"], field, value)
    await assert_damaged(lambda: records.records.read("Observation", rid, 2))
    await assert_damaged(
        lambda: records.records.history("Observation", rid, page_size=10, page_token="")
    )
    # Versions not damaged still read.
    assert (await records.records.read("Observation", rid)).ref.version == 3
    assert (await records.records.read("Observation", rid, 1)).ref.version == 1


async def test_a_damaged_latest_version_fails_search_and_exports(records: Any) -> None:
    rid, patient = await three_versions(records)
    doc = await version_doc(records, 3)
    await set_field(records, "record_versions", doc["_id"], "content", flip(doc["content"], 9))
    await assert_damaged(lambda: records.records.read("Observation", rid))
    await assert_damaged(
        lambda: records.records.search(
            "Observation", [("code", ("c",))], page_size=5, page_token=""
        )
    )
    await assert_damaged(
        lambda: records.records.patient_resources(patient, page_size=5, page_token="")
    )


@pytest.mark.parametrize("field", ["version", "tag", "patient"])
async def test_a_changed_pointer_is_data_loss_not_an_older_answer(records: Any, field: str) -> None:
    rid, _ = await three_versions(records)
    pointer = await records.db["record_current"].find_one({})
    value = 2 if field == "version" else flip(pointer[field])
    await set_field(records, "record_current", pointer["_id"], field, value)
    await assert_damaged(lambda: records.records.read("Observation", rid))
    await assert_damaged(lambda: records.records.read("Observation", rid, 1))


async def test_an_index_entry_pointing_elsewhere_is_data_loss(records: Any) -> None:
    await three_versions(records)
    await records.write("Observation", new_id(), new_id(), search={"code": {"d"}})
    first, second = await records.db["record_index"].find({}).to_list()
    # Each resource now holds the other's tokens: "c" finds the resource indexed under "d".
    await set_field(records, "record_index", first["_id"], "tokens", second["tokens"])
    await set_field(records, "record_index", second["_id"], "tokens", first["tokens"])
    await assert_damaged(
        lambda: records.records.search(
            "Observation", [("code", ("c",))], page_size=5, page_token=""
        )
    )


async def test_a_damaged_wrapped_key_is_data_loss(records: Any) -> None:
    rid, _ = await three_versions(records)
    row = await records.db["record_patients"].find_one({})
    wrapped = row["wrapped"]
    prefix, encoded = wrapped.rsplit(":", 1)
    damaged = f"{prefix}:{encoded[:10]}{'A' if encoded[10] != 'A' else 'B'}{encoded[11:]}"
    await set_field(records, "record_patients", row["_id"], "wrapped", damaged)
    cold = records.replica()  # a key cached before the damage would hide it
    await assert_damaged(lambda: cold.read("Observation", rid))


async def test_a_changed_idempotency_record_is_data_loss(records: Any) -> None:
    rid, patient = new_id(), new_id()
    await records.write("Observation", rid, patient, idempotency_key="k", fingerprint=b"f")
    await records.write("Observation", rid, patient, expected_version=1)
    entry = await records.db["record_idempotency"].find_one({})
    await set_field(records, "record_idempotency", entry["_id"], "version", 2)
    await assert_damaged(lambda: records.records.idempotent_result("k", b"f"))


async def test_a_changed_record_holder_is_data_loss(records: Any) -> None:
    patient = new_id()
    pending = await records.records.prepare_write(
        ResourceWrite("Patient", patient, patient, "{}", {}, holder_organization="org-a")
    )
    await records.records.commit_write(pending, records.receipt_for(pending.ref))
    row = await records.db["record_patients"].find_one({})
    await set_field(records, "record_patients", row["_id"], "holder", "org-b")
    await assert_damaged(lambda: records.records.patient_holder(patient))
