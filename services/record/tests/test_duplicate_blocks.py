"""Blocking keys in the record's storage, against secantusdb and OpenBao: each Patient version
indexes keyed digests of its blocking keys (never the clear phonetic codes), an update
replaces them, a resumed write indexes the same ones, only live Patients come back, and an
erasure removes the patient's entries."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jellyfish

from medledger.record.domain.blind_index import BlindIndex
from medledger.record.domain.patient_matching import patient_blocking_keys
from medledger.testkit.fhir_samples import sample


def patient(family: str, given: str, birth: str, **changes: Any) -> str:
    """The sample Patient as another person: its identifiers and contacts are its own."""
    document = sample("Patient")
    document.pop("id", None)
    document["name"] = [{"family": family, "given": [given]}]
    document["birthDate"] = birth
    document["identifier"] = [{"system": "urn:test:mrn", "value": uuid.uuid4().hex}]
    document.pop("telecom", None)
    document.update(changes)
    return json.dumps(document)


async def block_entries(records: Any) -> list[dict[str, Any]]:
    return [doc async for doc in records.db["record_index"].find({"blocks": {"$exists": True}})]


async def test_patients_sharing_a_key_come_back_as_one_block(records: Any) -> None:
    smith, smyth, other = (uuid.uuid4().hex for _ in range(3))
    smith_text = patient("Smith", "John", "1970-03-04")
    await records.write("Patient", smith, smith, smith_text)
    await records.write("Patient", smyth, smyth, patient("Smyth", "Jon", "1970-04-03"))
    await records.write("Patient", other, other, patient("Okafor", "Ada", "1991-11-30"))
    # An Observation never carries blocking entries, whatever its JSON.
    await records.write("Observation", uuid.uuid4().hex, smith, "{}")

    found = await records.records.duplicate_blocks(max_block=50)
    assert set(found.patients) == {smith, smyth}
    # Soundex, Metaphone and the sorted birth date agree: each its own block of the two.
    assert len(found.blocks) >= 3
    assert all(list(block) == sorted((smith, smyth)) for block in found.blocks)
    assert json.loads(found.patients[smyth].resource_json)["name"][0]["family"] == "Smyth"

    # Digests only: neither a clear code nor a clear key is stored.
    entries = await block_entries(records)
    index = BlindIndex(await records.keys.index_key())
    keys = patient_blocking_keys(smith_text)
    assert {bytes(t) for e in entries for t in e["blocks"]} >= {
        index.blocking_token(k) for k in keys
    }
    raw = repr(entries).encode()
    for code in (jellyfish.soundex("Smith"), jellyfish.nysiis("Smith"), "1970"):
        assert code.encode() not in raw


async def test_an_update_replaces_the_keys_and_a_group_too_large_is_left_out(
    records: Any,
) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    await records.write("Patient", first, first, patient("Garcia", "Maria", "1980-01-02"))
    await records.write("Patient", second, second, patient("Garcia", "Maria", "1955-07-08"))
    assert len((await records.records.duplicate_blocks(max_block=50)).blocks) > 0
    assert (await records.records.duplicate_blocks(max_block=1)).oversized > 0

    await records.write(
        "Patient",
        second,
        second,
        patient("Nakamura", "Kenji", "1955-07-08"),
        expected_version=1,
    )
    found = await records.records.duplicate_blocks(max_block=50)
    assert found.blocks == []
    assert found.patients == {}


async def test_a_resumed_write_indexes_the_same_keys(records: Any) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    await records.write("Patient", first, first, patient("Novak", "Eva", "1966-05-06"))
    text = patient("Novak", "Eva", "1966-05-06")
    await records.prepare("Patient", second, second, text, idempotency_key="k", fingerprint=b"f")
    resumed = await records.records.resume_write("k", b"f")
    assert resumed is not None
    await records.records.commit_write(resumed, b"receipt")
    found = await records.records.duplicate_blocks(max_block=50)
    assert set(found.patients) == {first, second}


async def test_erasure_removes_the_blocking_entries(records: Any) -> None:
    kept, erased = uuid.uuid4().hex, uuid.uuid4().hex
    await records.write("Patient", kept, kept, patient("Dubois", "Claire", "1975-09-10"))
    await records.write("Patient", erased, erased, patient("Dubois", "Claire", "1975-10-09"))
    index = BlindIndex(await records.keys.index_key())
    pseudonym = index.pseudonym(erased)
    assert await records.db["record_index"].count_documents(
        {"patient": pseudonym, "blocks": {"$exists": True}}
    )

    await records.records.erase_patient(erased)
    assert (
        await records.db["record_index"].count_documents(
            {"patient": pseudonym, "blocks": {"$exists": True}}
        )
        == 0
    )
    assert (
        await records.db["record_index"].count_documents({"blocks": {"$exists": True}}) > 0
    )  # kept's
    found = await records.records.duplicate_blocks(max_block=50)
    assert found.blocks == []
    assert erased not in found.patients
