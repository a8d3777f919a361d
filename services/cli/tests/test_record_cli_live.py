"""``medledger record`` against the real record service: its own bootstrap over the testkit
platform's identity (CheckAccess, tokens) and ledger, secantusdb and OpenBao. Nothing is
faked: create → get → update → history → search, and the create's receipt saved with
``--receipt-out`` verifies with ``medledger verify receipt`` and the ledger's key.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.cli.main import app
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import Platform
from medledger.testkit.record_server import start_record_server
from medledger.verify.receipts import read_receipt

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})


@dataclass
class LiveRecord:
    address: str
    ledger_address: str
    writer: str  # a token of hospital-a that may create, read, update and search, for TREAT
    reader: str  # a token that may read the ledger

    async def cli(self, *args: str, stdin: str = "") -> Result:
        """``medledger ARGS`` in a thread (the command runs its own event loop; the
        services run on the test's)."""
        return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)

    async def record(self, *args: str, stdin: str = "") -> Result:
        return await self.cli(
            "record", *args, "--record", self.address, "--token", self.writer, stdin=stdin
        )


@pytest.fixture(scope="module")
async def live(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[LiveRecord]:
    server = await start_record_server(
        auth_platform, mongo_server, vault_server, f"recordcli{uuid.uuid4().hex[:8]}"
    )
    try:
        yield LiveRecord(
            address=f"127.0.0.1:{server.port}",
            ledger_address=auth_platform.ledger_address,
            writer=await auth_platform.token(
                "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_TREAT]
            ),
            reader=await auth_platform.token("ledger.read", "hospital-a"),
        )
    finally:
        await server.stop(0)


async def test_create_get_update_history_search_and_verify(
    live: LiveRecord, tmp_path: Path
) -> None:
    patient = sample("Patient")
    del patient["id"]
    family = f"Lovelace{uuid.uuid4().hex[:6]}"  # this test's patient alone
    patient["name"][0]["family"] = family
    source, receipt = tmp_path / "patient.json", tmp_path / "receipt.json"
    source.write_text(json.dumps(patient))

    created = await live.record(
        "create", str(source), "--purpose", "TREAT", "--receipt-out", str(receipt)
    )
    assert created.exit_code == 0, created.output
    first = json.loads(created.stdout)
    reference = f"Patient/{first['id']}"
    assert first["meta"]["versionId"] == "1"
    assert re.search(r"idempotency key [0-9a-f]{32}", created.stderr)
    leaf = re.search(rf"{reference} version 1 .* ledgered at leaf index (\d+)", created.stderr)
    assert leaf is not None, created.stderr
    assert read_receipt(receipt).leaf_index == int(leaf[1])

    got = await live.record("get", reference)
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout) == first

    changed = {**first, "active": False}
    updated = await live.record("update", "-", "--expected-version", "1", stdin=json.dumps(changed))
    assert updated.exit_code == 0, updated.output
    second = json.loads(updated.stdout)
    assert (second["id"], second["meta"]["versionId"], second["active"]) == (
        first["id"],
        "2",
        False,
    )
    stale = await live.record("update", "-", "--expected-version", "1", stdin=json.dumps(changed))
    assert stale.exit_code == 1, stale.output
    assert f"UpdateResource at {live.address}: ABORTED STALE_VERSION" in stale.stderr

    history = await live.record("history", reference, "--json")
    assert history.exit_code == 0, history.output
    assert [v["version"] for v in json.loads(history.stdout)["versions"]] == ["2", "1"]
    table = await live.record("history", reference)
    assert f"{reference}: 2 version(s)" in table.stdout
    vread = await live.record("get", reference, "--version", "1")
    assert json.loads(vread.stdout) == first

    found = await live.record("search", "Patient", "-p", f"family={family}", "--json")
    assert found.exit_code == 0, found.output
    assert [r["id"] for r in json.loads(found.stdout)["resources"]] == [first["id"]]
    bad = await live.record("search", "Patient", "-p", "colour=blue")
    assert bad.exit_code == 1, bad.output
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "params.colour" in bad.stderr

    vkey = await live.cli("ledger", "vkey", "--ledger", live.ledger_address, "--token", live.reader)
    assert vkey.exit_code == 0, vkey.output
    verified = await live.cli("verify", "receipt", str(receipt), "--vkey", vkey.stdout.strip())
    assert verified.exit_code == 0, verified.output


async def test_a_bundle_creates_a_patient_and_its_observation_together(
    live: LiveRecord, tmp_path: Path
) -> None:
    patient = sample("Patient")
    del patient["id"]
    observation = sample("Observation")
    del observation["id"]
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    observation["subject"] = {"reference": patient_url}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(bundle))
    done = await live.record("bundle", str(source), "--json")
    assert done.exit_code == 0, done.output
    made = json.loads(done.stdout)["resources"]
    assert [r["resourceType"] for r in made] == ["Patient", "Observation"]
    stored = json.loads(made[1]["resourceJson"])
    assert stored["subject"] == {"reference": f"Patient/{made[0]['id']}"}
    table = await live.record("bundle", str(source))
    assert table.exit_code == 0, table.output
    assert "written in one transaction" in table.stdout
    assert re.search(r"Patient/[0-9a-f-]{36} +│ 1 ", table.stdout), table.stdout
    assert re.search(r"Observation/[0-9a-f-]{36} +│ 1 ", table.stdout), table.stdout
    # A bad entry: nothing written, the field named.
    observation["status"] = "nonsense"
    source.write_text(json.dumps(bundle))
    refused = await live.record("bundle", str(source))
    assert refused.exit_code == 1, refused.output
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "entry[1].resource.status" in refused.stderr
