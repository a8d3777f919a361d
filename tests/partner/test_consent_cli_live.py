"""``medledger consent`` against a live identity and ledger, as two hospitals use it: hospital A
records its patient's consent for hospital B, B's access decision follows it, and the
revocation denies at once. Grants and revocations come with verifiable ledger receipts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medledger.api.ledger.v1 import ledger_pb2
from medledger.tlog.hashing import leaf_hash
from medledger.verify.receipts import read_receipt

# A patient of hospital A without a user account: identity knows their holder from the record
# service, which registers it when hospital A's app creates the Patient.
PATIENT = "patient-a-1"


async def _token(identity: Any, client_id: str, scope: str) -> str:
    result = await identity.cli(
        "token",
        "--client-id",
        client_id,
        "--key",
        identity.paths.client_key(client_id),
        "--scope",
        scope,
    )
    assert result.code == 0, result.output
    return str(result.stdout.strip())


def _leaf_index(output: str, event: str) -> int:
    found = re.search(rf"ledgered as {event} at leaf index (\d+)", output)
    assert found, output
    return int(found.group(1))


async def _entry(identity: Any, index: int) -> bytes:
    reply = await identity.ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=index))
    return bytes(reply.entry_bytes)


async def test_grant_check_list_revoke(identity: Any, tmp_path: Path) -> None:
    assert (await identity.cli("demo", "seed", "--identity", identity.address)).code == 0
    await identity.register_holder(PATIENT, "hospital-a")
    hospital_a = await _token(identity, "hospital-a-app", "system/Consent.cruds")
    hospital_b = await _token(identity, "hospital-b-app", "system/Observation.rs")

    # Before any consent, B may not read A's patient.
    denied = await identity.cli(
        "consent", "check", "--patient", PATIENT, "--resource-type", "Observation",
        "--token", hospital_b,
    )  # fmt: skip
    assert denied.code == 0, denied.output
    assert "DENY (NO_CONSENT)" in denied.output

    granted_receipt = tmp_path / "granted.json"
    granted = await identity.cli(
        "consent", "grant", "--patient", PATIENT, "--grantee-org", "hospital-b",
        "--resource-type", "Observation", "--purpose", "TREAT", "--until", "2099-12-31",
        "--receipt-out", granted_receipt, "--token", hospital_a,
    )  # fmt: skip
    assert granted.code == 0, granted.output
    assert "organisation hospital-b" in granted.output
    assert "Observation" in granted.output
    assert "TREAT" in granted.output
    assert "2099-12-31 23:59:59Z" in granted.output
    leaf = _leaf_index(granted.output, "CONSENT_GRANTED")
    receipt = read_receipt(granted_receipt)
    assert receipt.leaf_index == leaf
    entry_bytes = await _entry(identity, leaf)
    assert receipt.leaf_hash == leaf_hash(entry_bytes)
    entry = ledger_pb2.LedgerEntry.FromString(entry_bytes)
    assert entry.kind == ledger_pb2.EVENT_KIND_CONSENT_GRANTED
    assert entry.organization == "hospital-a"
    assert PATIENT.encode() not in entry_bytes  # the patient only blinded, per entry

    listed = await identity.cli(
        "consent", "list", "--patient", PATIENT, "--json", "--token", hospital_a
    )
    assert listed.code == 0, listed.output
    consents = json.loads(listed.stdout)["consents"]
    assert len(consents) == 1
    consent_id = consents[0]["consentId"]
    assert consent_id.encode() not in entry_bytes  # blinded too: it would link the revocation
    assert consents[0]["status"] == "CONSENT_STATUS_ACTIVE"

    table = await identity.cli("consent", "list", "--patient", PATIENT, "--token", hospital_a)
    assert table.code == 0, table.output
    assert consent_id in table.output
    assert "active" in table.output

    permitted = await identity.cli(
        "consent", "check", "--patient", PATIENT, "--resource-type", "Observation",
        "--purpose", "TREAT", "--token", hospital_b,
    )  # fmt: skip
    assert f"PERMIT (CONSENT_PERMITS, consent {consent_id})" in permitted.output
    other_purpose = await identity.cli(
        "consent", "check", "--patient", PATIENT, "--resource-type", "Observation",
        "--purpose", "HPAYMT", "--token", hospital_b,
    )  # fmt: skip
    assert "DENY (PURPOSE_NOT_ALLOWED" in other_purpose.output

    fhir = await identity.cli("consent", "get", consent_id, "--fhir", "--token", hospital_a)
    assert fhir.code == 0, fhir.output
    assert json.loads(fhir.stdout)["resourceType"] == "Consent"

    revoked_receipt = tmp_path / "revoked.json"
    revoked = await identity.cli(
        "consent", "revoke", consent_id, "--receipt-out", revoked_receipt, "--token", hospital_a
    )
    assert revoked.code == 0, revoked.output
    assert "revoked" in revoked.output
    revoke_leaf = _leaf_index(revoked.output, "CONSENT_REVOKED")
    assert read_receipt(revoked_receipt).leaf_index == revoke_leaf > leaf

    after = await identity.cli(
        "consent", "check", "--patient", PATIENT, "--resource-type", "Observation",
        "--token", hospital_b,
    )  # fmt: skip
    assert "DENY (NO_CONSENT)" in after.output
    gone = await identity.cli(
        "consent", "list", "--patient", PATIENT, "--status", "active", "--token", hospital_a
    )
    assert "0 consent(s)" in gone.output


async def test_refusals_carry_the_status_and_reason(identity: Any) -> None:
    assert (await identity.cli("demo", "seed", "--identity", identity.address)).code == 0
    await identity.register_holder(PATIENT, "hospital-a")
    hospital_b = await _token(identity, "hospital-b-app", "system/Consent.cruds")
    # Only the patient's own organisation records their consents.
    foreign = await identity.cli(
        "consent", "grant", "--patient", PATIENT, "--grantee-org", "hospital-b",
        "--resource-type", "Observation", "--purpose", "TREAT", "--token", hospital_b,
    )  # fmt: skip
    assert foreign.code == 1
    assert "GrantConsent" in foreign.output
    assert "PERMISSION_DENIED NOT_PATIENT_OR_ORGANIZATION" in foreign.output

    forged = await identity.cli("consent", "list", "--patient", PATIENT, "--token", "not-a-jwt")
    assert forged.code == 1
    assert "UNAUTHENTICATED TOKEN_MALFORMED" in forged.output

    bad = await identity.cli(
        "consent", "grant", "--patient", "no spaces allowed", "--grantee-org", "hospital-b",
        "--purpose", "TREAT", "--token", hospital_b,
    )  # fmt: skip
    assert bad.code == 1
    assert "GrantConsent at" in bad.output
    assert "INVALID_ARGUMENT: invalid request" in bad.output
    assert "patient_id: must match" in bad.output
    assert "resource_types: at least one resource type or category is required" in bad.output
