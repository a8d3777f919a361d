"""docs/export-format.md states what the verifier does: its constants are the code's, and its
worked example, a complete one-entry export with fixed keys and salt, is recomputed here from
the format's definition and verifies (and fails, once one byte of its resource changes)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.testkit.doc_examples import (
    example_json,
    example_keys,
    example_policy,
    example_receipt,
)
from medledger.verify import blinding, commitment, export
from medledger.verify.export import EntryInvalid, parse_bundle, verify_export

DOC = Path(__file__).resolve().parents[3] / "docs" / "export-format.md"


def example() -> dict[str, Any]:
    """The doc's example export, from the format's definition."""
    resource_id = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    resource = {
        "resourceType": "Patient",
        "id": resource_id,
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"},
        "name": [{"family": "Example", "given": ["Ada"]}],
        "birthDate": "1970-01-01",
    }
    salt = bytes(range(32))
    blinded = blinding.blinded_resource_id(
        blinding.record_blinding_salt(salt), "Patient", resource_id, 1
    )
    entry = ledger_pb2.LedgerEntry(
        kind=ledger_pb2.EVENT_KIND_RECORD_CREATED,
        subject=bytes([0x11]) * 32,
        resource=ledger_pb2.ResourceRef(type="Patient", id=blinded),
        content_commitment=commitment.commit_json(salt, resource),
        actor="hospital-a-app",
        organization="hospital-a",
        purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
        trace_id=bytes(16),
    )
    entry.time.FromSeconds(1767225600)
    entry_bytes = entry.SerializeToString(deterministic=True)
    # Leaf 1 of a tree of two; leaf 0 is some other event.
    receipt = example_receipt(entry_bytes)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "resourceType": "Bundle",
        "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "type": "collection",
        "timestamp": "2026-01-02T00:00:00.000Z",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{resource_id}",
                "resource": resource,
                "extension": [
                    {
                        "url": "https://medledger.dev/fhir/StructureDefinition/ledger-proof",
                        "extension": [
                            {
                                "url": "receipt",
                                "valueBase64Binary": b64(receipt.SerializeToString()),
                            },
                            {"url": "entry", "valueBase64Binary": b64(entry_bytes)},
                            {"url": "commitmentSalt", "valueBase64Binary": b64(salt)},
                        ],
                    }
                ],
            }
        ],
    }


def doc_example() -> str:
    return example_json(DOC.read_text(encoding="utf-8"), "bundle")


def test_the_example_is_the_formats() -> None:
    assert json.loads(doc_example()) == example()


def test_the_example_verifies_with_the_documented_keys() -> None:
    log, witness = example_keys()
    doc = DOC.read_text(encoding="utf-8")
    assert f"--vkey {log.verifier_key}" in doc
    assert f"--witness-vkey {witness.verifier_key}" in doc
    verified = verify_export(parse_bundle(doc_example().encode()), example_policy())
    (entry,) = verified.entries
    assert (entry.resource_type, entry.version, entry.leaf_index) == ("Patient", 1, 1)


def test_the_example_fails_once_a_byte_changes() -> None:
    changed = doc_example().replace('"Example"', '"Exbmple"')
    with pytest.raises(EntryInvalid) as failure:
        verify_export(parse_bundle(changed.encode()), example_policy())
    assert failure.value.check == "commitment"
    doc = DOC.read_text(encoding="utf-8")
    assert (
        f"{failure.value.entry} ({failure.value.check} check failed)\n  {failure.value.message}"
        in doc
    )


def test_the_intermediate_values_are_the_documents() -> None:
    """The values a partner's re-implementation can compare with, step by step."""
    bundle = example()
    (entry,) = bundle["entry"]
    salt = bytes(range(32))
    canonical = commitment.canonical_json(entry["resource"])
    blinding_salt = blinding.record_blinding_salt(salt)
    doc = DOC.read_text(encoding="utf-8")
    for value in (
        canonical.decode(),
        commitment.commit(salt, canonical).hex(),
        blinding_salt.hex(),
        blinding.blinded_resource_id(blinding_salt, "Patient", entry["resource"]["id"], 1),
    ):
        assert value in doc, value


def test_the_constants_are_the_codes() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for constant in (
        export.LEDGER_PROOF_URL,
        export.PSEUDONYMISED_SYSTEM,
        export.PSEUDONYMISED_CODE,
        *export.PROOF_PARTS,
        *(f'"{check}"' for check in export.CHECKS),
    ):
        assert constant in doc, constant
    assert repr(blinding.BLINDING_SALT_LABEL.rstrip(b"\x00"))[2:-1] in doc
    assert repr(blinding.RESOURCE_LABEL.rstrip(b"\x00"))[2:-1] in doc
    assert repr(commitment.COMMITMENT_DOMAIN.rstrip(b"\x00"))[2:-1] in doc
