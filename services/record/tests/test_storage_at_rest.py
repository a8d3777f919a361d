"""No PHI in clear at rest: resources written with known strings and numbers, then every
byte of every collection the record store writes is searched for them."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument


async def raw_bytes(records: Any) -> dict[str, bytes]:
    """Each collection of the store's database, every document's BSON concatenated."""
    names = await records.db.list_collection_names()
    assert set(names) <= set(records.store.collections), names
    raw: dict[str, bytes] = {}
    for name in names:
        collection = records.db.get_collection(
            name, codec_options=CodecOptions(document_class=RawBSONDocument)
        )
        raw[name] = b"".join([doc.raw async for doc in collection.find({})])
    return raw


def encodings(marker: str | int | float) -> list[bytes]:
    """How a value could appear in BSON or JSON bytes."""
    if isinstance(marker, str):
        forms = {marker, marker.lower(), marker.upper()}
        return [f.encode() for f in forms] + [f.encode("utf-16-le") for f in forms]
    if isinstance(marker, float):
        return [repr(marker).encode(), struct.pack("<d", marker)]
    return [str(marker).encode(), struct.pack("<i", marker), struct.pack("<q", marker)]


async def test_no_phi_in_clear_in_any_collection(records: Any) -> None:
    tag = uuid.uuid4().hex[:12]
    patient_id = f"pat-{tag}"
    family = f"Quetzalcoatl{tag}"
    mrn = f"MRN-{tag}-77"
    phone = "+44 7700 900461"
    birth = "1931-07-19"
    glucose = 98765.4321
    count = 8675309
    patient = {
        "resourceType": "Patient",
        "id": patient_id,
        "name": [{"family": family, "given": ["Eulalia"]}],
        "identifier": [{"system": "urn:mrn", "value": mrn}],
        "telecom": [{"system": "phone", "value": phone}],
        "birthDate": birth,
    }
    obs_id = uuid.uuid4().hex
    observation = {
        "resourceType": "Observation",
        "id": obs_id,
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": glucose},
        "component": [{"valueInteger": count}],
        "note": [{"text": f"seen with {family}"}],
    }
    await records.write(
        "Patient",
        patient_id,
        patient_id,
        json.dumps(patient),
        search={"family": {family.lower()}, "identifier": {f"urn:mrn|{mrn}"}, "phone": {phone}},
        idempotency_key=f"client-x:create {family}",
        fingerprint=f"sha of {family}".encode(),
    )
    await records.write(
        "Observation",
        obs_id,
        patient_id,
        json.dumps(observation),
        search={"patient": {f"Patient/{patient_id}"}, "value-quantity": {str(glucose)}},
    )
    observation["valueQuantity"] = {"value": glucose + 1}
    await records.write(
        "Observation",
        obs_id,
        patient_id,
        json.dumps(observation),
        search={"patient": {f"Patient/{patient_id}"}},
        expected_version=1,
    )
    # A pending version is at rest too.
    await records.prepare(
        "Observation", obs_id, patient_id, json.dumps(observation), expected_version=2
    )
    # A bulk write's recorded attempt (HL7 v2, CSV): its key holds whatever the client put in.
    await records.records.record_batch_attempt(
        f"client-x:bulk {family} {mrn}", f"sha of batch {family}".encode(), "a1b2c3", 2
    )
    # The storage works, so the markers went in ...
    found = await records.records.search(
        "Patient", [("family", (family.lower(),))], page_size=5, page_token=""
    )
    assert family in found.items[0].resource_json
    # ... and none of them is anywhere in clear.
    markers: list[str | int | float] = [
        patient_id,
        family,
        mrn,
        phone,
        "7700 900461",
        birth,
        "Eulalia",
        glucose,
        glucose + 1,
        count,
    ]
    raw = await raw_bytes(records)
    assert set(raw) == set(records.store.collections)
    for name, data in raw.items():
        assert data, name
        for marker in markers:
            for form in encodings(marker):
                assert form not in data, (name, marker)
