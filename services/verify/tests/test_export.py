"""Patient exports built on the real ledger, cosigned by two real witnesses, verified offline.

The fixture writes what the record service writes for each version: the stored resource (its
RFC 8785 JSON, with id, versionId and lastUpdated), a fresh commitment salt, and a ledger entry
blinded as the patient log blinds it (``medledger.common.patient_log.blinded_event``) with the
blinding salt derived from the commitment salt; it appends the entry through ``LedgerClient``,
reads back the exact leaf bytes, waits for a checkpoint both witnesses cosigned and fetches
each leaf's inclusion proof against it, as an exporter does. The Bundles are written by hand
from docs/export-format.md, not with the verifier's own helper, so the two are checked against
the written format.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.blinding import Opening
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event
from medledger.testkit.fhir_samples import sample
from medledger.testkit.witnessed import WitnessedLedger, witnessed_ledger
from medledger.tlog import Cosigner, Ed25519Signer
from medledger.verify.blinding import record_blinding_salt
from medledger.verify.commitment import canonical_json, commit
from medledger.verify.export import (
    EntryInvalid,
    ExportFormatError,
    ExportNotVerifiable,
    ledger_proof_extension,
    parse_bundle,
    verify_export,
)
from medledger.verify.trust import TrustPolicy

ORIGIN = "export.test/ledger"
PROOF_URL = "https://medledger.dev/fhir/StructureDefinition/ledger-proof"
CREATED = ledger_pb2.EVENT_KIND_RECORD_CREATED
UPDATED = ledger_pb2.EVENT_KIND_RECORD_UPDATED


@dataclass
class Version:
    """One stored version and what the ledger holds about it."""

    resource: dict[str, Any]
    salt: bytes
    entry: bytes
    leaf_index: int
    appended: ledger_pb2.Receipt  # as Append answered: signed by the log, not yet witnessed
    witnessed: ledger_pb2.Receipt  # proven against a checkpoint both witnesses cosigned


@dataclass
class Ledgered:
    versions: dict[str, Version]
    log_vkeys: list[str]
    witness_vkeys: list[str]

    def policy(self, quorum: int = 2, extra_witnesses: tuple[str, ...] = ()) -> TrustPolicy:
        return TrustPolicy.parse(
            self.log_vkeys, [*self.witness_vkeys, *extra_witnesses], quorum, ORIGIN
        )


def stored(resource_type: str, resource_id: str, version: int, **changes: Any) -> dict[str, Any]:
    """The resource as the record service stores it (server id, versionId, lastUpdated) and
    exports it: its canonical JSON, parsed."""
    document = {**sample(resource_type), **changes, "id": resource_id}
    document["meta"] = {
        **document.get("meta", {}),
        "versionId": str(version),
        "lastUpdated": f"2025-06-0{version}T10:00:00.000Z",
    }
    return json.loads(canonical_json(document))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def ledgered(mongo_server: Any, vault_server: Any) -> AsyncIterator[Ledgered]:
    async with witnessed_ledger(mongo_server, vault_server, ORIGIN) as ledger:
        yield await _ledger_versions(ledger)


async def _ledger_versions(ledger: WitnessedLedger) -> Ledgered:
    pseudonym = os.urandom(32)  # the patient, under the deployment's key (never ledgered)
    patient_id, observation_id, condition_id = (str(uuid.uuid4()) for _ in range(3))
    # name: (resource, kind ledgered, id blinded in the entry)
    writes: dict[str, tuple[dict[str, Any], int, str]] = {
        "patient": (stored("Patient", patient_id, 1), CREATED, patient_id),
        "observation-1": (stored("Observation", observation_id, 1), CREATED, observation_id),
        "observation-2": (
            stored("Observation", observation_id, 2, status="amended"),
            UPDATED,
            observation_id,
        ),
        "condition": (stored("Condition", condition_id, 1), CREATED, condition_id),
        # Entries that commit to their resource but misdescribe the write.
        "wrong-kind": (stored("Condition", str(uuid.uuid4()), 1), UPDATED, ""),
        "wrong-id": (stored("Condition", str(uuid.uuid4()), 1), CREATED, condition_id),
    }
    versions: dict[str, Version] = {}
    for name, (resource, kind, blinded_as) in writes.items():
        salt = os.urandom(32)
        version = int(resource["meta"]["versionId"])
        event = LedgerEvent(
            kind=kind,
            actor="client-export-test",
            organization="hospital-a",
            resource_type=resource["resourceType"],
            resource_id=resource["id"],
            resource_version=version,
            content_commitment=commit(salt, canonical_json(resource)),
            purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
        )
        opening = Opening(
            salt=record_blinding_salt(salt),
            pseudonym=pseudonym,
            resource_type=resource["resourceType"],
            resource_id=blinded_as or resource["id"],
            resource_version=version,
        )
        appended = await ledger.append(blinded_event(event, opening))
        entry = await ledger.leaf(appended.leaf_index)
        versions[name] = Version(resource, salt, entry, appended.leaf_index, appended, appended)
    # Prove each leaf against a checkpoint of every leaf that both witnesses cosigned (what an
    # exporter sends).
    checkpoint = await ledger.cosigned_checkpoint(len(writes))
    for version in versions.values():
        version.witnessed = await ledger.proven(version.appended, checkpoint)
    return Ledgered(versions, [ledger.log_vkey], ledger.witness_vkeys)


# --- Bundles, written from docs/export-format.md ----------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def proof_extension(receipt: ledger_pb2.Receipt, entry: bytes, salt: bytes) -> list[dict[str, Any]]:
    return [
        {
            "url": PROOF_URL,
            "extension": [
                {"url": "receipt", "valueBase64Binary": b64(receipt.SerializeToString())},
                {"url": "entry", "valueBase64Binary": b64(entry)},
                {"url": "commitmentSalt", "valueBase64Binary": b64(salt)},
            ],
        }
    ]


def entry_of(version: Version, *, witnessed: bool = True) -> dict[str, Any]:
    receipt = version.witnessed if witnessed else version.appended
    return {
        "fullUrl": f"urn:uuid:{version.resource['id']}",
        "resource": copy.deepcopy(version.resource),
        "extension": proof_extension(receipt, version.entry, version.salt),
    }


def bundle_of(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": "2025-06-10T12:00:00.000Z",
        "entry": list(entries),
    }


EXPORTED = ("patient", "observation-2", "condition")


def export(ledgered: Ledgered, **options: bool) -> dict[str, Any]:
    """The patient's export: the current version of each resource."""
    return bundle_of(*(entry_of(ledgered.versions[name], **options) for name in EXPORTED))


def refused(bundle: dict[str, Any], policy: TrustPolicy) -> EntryInvalid:
    with pytest.raises(EntryInvalid) as failure:
        verify_export(bundle, policy)
    return failure.value


def proof_part(entry: dict[str, Any], name: str) -> dict[str, Any]:
    (part,) = [p for p in entry["extension"][0]["extension"] if p["url"] == name]
    return part  # type: ignore[no-any-return]


# --- tests ------------------------------------------------------------------------------------


def test_a_patient_export_verifies(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    text = json.dumps(bundle, indent=2).encode()
    verified = verify_export(parse_bundle(text), ledgered.policy())
    assert verified.bundle_id == bundle["id"]
    assert [(e.resource_type, e.version, e.kind) for e in verified.entries] == [
        ("Patient", 1, CREATED),
        ("Observation", 2, UPDATED),
        ("Condition", 1, CREATED),
    ]
    assert [e.leaf_index for e in verified.entries] == [
        ledgered.versions[name].leaf_index for name in EXPORTED
    ]
    (checkpoint,) = verified.checkpoints
    assert (checkpoint.checkpoint.origin, checkpoint.size) == (ORIGIN, 6)
    assert len(checkpoint.witnesses) == 2


def test_formatting_and_member_order_are_free(ledgered: Ledgered) -> None:
    """The commitment is to the canonical form: reordered members and other whitespace are
    the same resource."""
    bundle = export(ledgered)
    for entry in bundle["entry"]:
        entry["resource"] = dict(reversed(entry["resource"].items()))
    text = json.dumps(bundle, indent="\t", ensure_ascii=True).encode()
    assert len(verify_export(parse_bundle(text), ledgered.policy()).entries) == 3


def test_one_changed_byte_in_a_resource_fails_at_its_commitment(ledgered: Ledgered) -> None:
    text = json.dumps(export(ledgered)).encode()
    assert text.count(b'"value": 5.4') == 1  # the glucose result of the Observation
    changed = text.replace(b'"value": 5.4', b'"value": 5.9')
    failure = refused(parse_bundle(changed), ledgered.policy())
    observation = ledgered.versions["observation-2"].resource
    assert failure.index == 1
    assert failure.check == "commitment"
    assert failure.reference == f"Observation/{observation['id']} version 2"
    assert "do not match the ledgered commitment" in str(failure)


def test_every_single_byte_change_to_a_resource_is_caught(ledgered: Ledgered) -> None:
    """Each byte of the serialised Observation, flipped in its low bit: either the Bundle is no
    longer JSON, or the Observation's entry fails (its commitment, or before it the resource
    check when the flip hits its type, id or versionId). Any verifying change would have to be
    formatting only (1E5 for 1e5), of which this compact serialisation has none."""
    bundle = export(ledgered)
    text = json.dumps(bundle, separators=(",", ":")).encode()
    resource = json.dumps(bundle["entry"][1]["resource"], separators=(",", ":")).encode()
    start = text.index(resource)
    policy = ledgered.policy()
    outcomes: dict[str, int] = {}
    for position in range(start, start + len(resource)):
        changed = text[:position] + bytes([text[position] ^ 0x01]) + text[position + 1 :]
        try:
            verify_export(parse_bundle(changed), policy)
        except ExportFormatError:
            outcome = "not JSON"
        except EntryInvalid as failure:
            assert failure.index == 1, failure
            outcome = failure.check
        else:
            raise AssertionError(f"a flip at byte {position - start} verified")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) <= {"not JSON", "resource", "commitment"}
    assert outcomes["commitment"] > len(resource) / 2, outcomes


def test_another_salt_fails_at_the_commitment(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    proof_part(bundle["entry"][2], "commitmentSalt")["valueBase64Binary"] = b64(os.urandom(32))
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (2, "commitment")


def test_a_salt_of_another_size_is_malformed(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    proof_part(bundle["entry"][0], "commitmentSalt")["valueBase64Binary"] = b64(bytes(31))
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (0, "proof extension")
    assert "31 bytes, not 32" in failure.message


def test_entries_swapped_between_two_resources_fail(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    first, second = bundle["entry"][0], bundle["entry"][2]
    for name in ("entry", "receipt"):  # the other resource's leaf and its valid receipt
        part, other = proof_part(first, name), proof_part(second, name)
        part["valueBase64Binary"], other["valueBase64Binary"] = (
            other["valueBase64Binary"],
            part["valueBase64Binary"],
        )
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (0, "commitment")


def test_whole_proofs_swapped_between_two_resources_fail(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    first, second = bundle["entry"][1], bundle["entry"][2]
    first["extension"], second["extension"] = second["extension"], first["extension"]
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (1, "commitment")


def test_an_entry_of_another_kind_fails(ledgered: Ledgered) -> None:
    """The entry commits to the resource, but records an update of a version 1."""
    failure = refused(bundle_of(entry_of(ledgered.versions["wrong-kind"])), ledgered.policy())
    assert failure.check == "ledger entry"
    assert "records RECORD_UPDATED; version 1 is written by RECORD_CREATED" in failure.message


def test_an_entry_about_another_resource_fails(ledgered: Ledgered) -> None:
    """The entry commits to the resource, but its blinded id is another resource's."""
    failure = refused(bundle_of(entry_of(ledgered.versions["wrong-id"])), ledgered.policy())
    assert failure.check == "ledger entry"
    assert "about another resource or version" in failure.message


def test_an_older_version_verifies_as_that_version(ledgered: Ledgered) -> None:
    """An export proves each resource is a version that was ledgered, not that it is the
    latest (docs/export-format.md: what an export does not prove)."""
    bundle = bundle_of(entry_of(ledgered.versions["observation-1"]))
    (entry,) = verify_export(bundle, ledgered.policy()).entries
    assert (entry.version, entry.kind) == (1, CREATED)


def test_a_version_relabelled_fails(ledgered: Ledgered) -> None:
    """Version 1's content presented as version 2 changes meta.versionId: a byte changed."""
    entry = entry_of(ledgered.versions["observation-1"])
    entry["resource"]["meta"]["versionId"] = "2"
    failure = refused(bundle_of(entry), ledgered.policy())
    assert failure.check == "commitment"


def test_the_receipt_of_another_leaf_fails(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    other = ledgered.versions["observation-1"].witnessed
    proof_part(bundle["entry"][1], "receipt")["valueBase64Binary"] = b64(other.SerializeToString())
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (1, "receipt entry")
    assert other.leaf_hash.hex() in failure.message


def test_a_receipt_not_cosigned_by_the_quorum_fails(ledgered: Ledgered) -> None:
    """Append's own receipts carry the log's signature only: a verifier demanding witnesses
    refuses them, and accepts them when it demands none."""
    bundle = export(ledgered, witnessed=False)
    failure = refused(bundle, ledgered.policy(quorum=1))
    assert (failure.index, failure.check) == (0, "receipt checkpoint")
    assert "0 valid witness cosignatures, the quorum is 1" in failure.message
    assert len(verify_export(bundle, ledgered.policy(quorum=0)).entries) == 3


def test_a_quorum_beyond_the_cosigners_fails(ledgered: Ledgered) -> None:
    third = str(Cosigner.generate("witness-c.export.test").verifier_key)
    failure = refused(export(ledgered), ledgered.policy(quorum=3, extra_witnesses=(third,)))
    assert failure.check == "receipt checkpoint"
    assert "2 valid witness cosignatures, the quorum is 3" in failure.message


def test_another_logs_key_fails(ledgered: Ledgered) -> None:
    other = TrustPolicy.parse([str(Ed25519Signer.generate(ORIGIN).verifier_key)])
    failure = refused(export(ledgered), other)
    assert failure.check == "receipt checkpoint"


def test_a_pseudonymised_export_is_refused(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    for entry in bundle["entry"]:
        del entry["extension"]
    bundle["meta"] = {
        "security": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "PSEUDED",
                "display": "pseudonymized",
            }
        ]
    }
    with pytest.raises(ExportNotVerifiable, match="pseudonymised"):
        verify_export(bundle, ledgered.policy())


def test_an_empty_export_is_refused(ledgered: Ledgered) -> None:
    with pytest.raises(ExportNotVerifiable, match="no entries"):
        verify_export(bundle_of(), ledgered.policy())


def test_a_resource_twice_fails(ledgered: Ledgered) -> None:
    bundle = bundle_of(
        entry_of(ledgered.versions["observation-1"]),
        entry_of(ledgered.versions["observation-2"]),
    )
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (1, "duplicate")
    assert "also entry[0]" in failure.message


def test_a_wrong_full_url_fails(ledgered: Ledgered) -> None:
    bundle = export(ledgered)
    bundle["entry"][2]["fullUrl"] = bundle["entry"][0]["fullUrl"]
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check, failure.reference) == (2, "resource", "")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("extension"), "has no extension"),
        (lambda e: e["extension"].append(copy.deepcopy(e["extension"][0])), "2 extensions"),
        (lambda e: e["extension"][0]["extension"].pop(), "lacks 'commitmentSalt'"),
        (lambda e: e["extension"][0]["extension"].append({"url": "x"}), "unknown part 'x'"),
        (lambda e: proof_part(e, "entry").update(valueBase64Binary="AAA"), "not base64"),
        (lambda e: proof_part(e, "entry").update(valueBase64Binary="AA AA"), "not base64"),
        (lambda e: proof_part(e, "entry").update(valueBase64Binary=b64(b"\xff")), "LedgerEntry"),
        (lambda e: proof_part(e, "receipt").update(valueBase64Binary=b64(b"\x0a\x05")), "Receipt"),
        (lambda e: proof_part(e, "receipt").update(valueString="x"), "other than valueBase64"),
    ],
)
def test_a_malformed_proof_fails_first(ledgered: Ledgered, change: Any, message: str) -> None:
    bundle = export(ledgered)
    change(bundle["entry"][1])
    failure = refused(bundle, ledgered.policy())
    assert (failure.index, failure.check) == (1, "proof extension")
    assert message in failure.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "not an object"),
        (b'{"resourceType": "Patient"}', "resourceType is 'Patient'"),
        (b'{"resourceType": "Bundle", "type": "searchset"}', "type is 'searchset'"),
        (b'{"resourceType": "Bundle", "type": "collection", "entry": {}}', "entry is not a list"),
        (
            b'{"resourceType": "Bundle", "type": "collection", "type": "collection"}',
            "'type' appears twice",
        ),
        (b'{"resourceType": "Bundle", "type": "collection", "x": NaN}', "NaN"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
)
def test_what_is_not_a_collection_bundle(data: bytes, message: str) -> None:
    with pytest.raises(ExportFormatError, match=message):
        parse_bundle(data)


def test_the_helper_writes_the_documented_extension(ledgered: Ledgered) -> None:
    version = ledgered.versions["condition"]
    written = ledger_proof_extension(version.witnessed, version.entry, version.salt)
    assert [written] == proof_extension(version.witnessed, version.entry, version.salt)
