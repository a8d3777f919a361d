"""The record audit's checks of one opened version against a ledger entry: each kind of
mismatch is named (the storage-level damage is tested over gRPC in test_record_api)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

from medledger.api.ledger.v1 import ledger_pb2
from medledger.record.domain.ports import StoredVersion, VersionRef
from medledger.record.domain.record_audit import COMMITMENT, LEAF, RESOURCE, _check
from medledger.verify.blinding import blinded_resource_id, record_blinding_salt
from medledger.verify.commitment import commit

SALT = os.urandom(32)
JSON = '{"id":"obs-1","resourceType":"Observation","status":"final"}'


def entry(
    *,
    kind: int = ledger_pb2.EVENT_KIND_RECORD_UPDATED,
    resource_type: str = "Observation",
    resource_id: str = "obs-1",
    version: int = 2,
    content: str = JSON,
) -> bytes:
    blinded = blinded_resource_id(record_blinding_salt(SALT), resource_type, resource_id, version)
    return ledger_pb2.LedgerEntry(
        kind=kind,  # type: ignore[arg-type]
        resource=ledger_pb2.ResourceRef(type=resource_type, id=blinded),
        content_commitment=commit(SALT, content.encode()),
    ).SerializeToString()


def stored(entry_bytes: bytes, *, leaf: bytes | None = None) -> StoredVersion:
    receipt = ledger_pb2.Receipt(
        leaf_index=7, leaf_hash=leaf or hashlib.sha256(b"\x00" + entry_bytes).digest()
    )
    return StoredVersion(
        ref=VersionRef("Observation", "obs-1", 2),
        patient_id="p-1",
        resource_json=JSON,
        updated_time=datetime.now(UTC),
        receipt=receipt.SerializeToString(),
        salt=SALT,
    )


def test_the_entry_of_the_write_passes() -> None:
    good = entry()
    assert _check(stored(good), good) is None


def test_each_mismatch_is_named() -> None:
    good = entry()
    assert _check(stored(good, leaf=bytes(32)), good)[0] == LEAF  # type: ignore[index]
    for other in (
        entry(version=3),
        entry(resource_id="obs-2"),
        entry(resource_type="Condition"),
        entry(kind=ledger_pb2.EVENT_KIND_RECORD_CREATED),
    ):
        assert _check(stored(other), other)[0] == RESOURCE  # type: ignore[index]
    edited = entry(content=JSON.replace("final", "amended"))
    found = _check(stored(edited), edited)
    assert found is not None
    assert found[0] == COMMITMENT
    assert "final" not in found[1]  # names the leaf, never content
