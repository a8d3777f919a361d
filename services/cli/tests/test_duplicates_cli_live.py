"""``medledger record duplicates|link`` against the real record service (its own bootstrap
over the testkit platform's identity and ledger, secantusdb and OpenBao): the pair of two
records of one person is listed with what matched, linked, and the link is in both Patients;
the link's receipts verify with ``medledger verify receipt``."""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
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
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.record.config import RecordSettings
from medledger.record.runtime import from_settings
from medledger.testkit.platform import Platform
from medledger.verify.receipts import read_receipt

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})


@dataclass
class LiveRecord:
    address: str
    token: str  # hospital-a: create, read, update, search, for TREAT

    async def record(self, *args: str, stdin: str = "") -> Result:
        """``medledger record ARGS`` in a thread (the command runs its own event loop)."""
        return await asyncio.to_thread(
            runner.invoke,
            app,
            ["record", *args, "--record", self.address, "--token", self.token],
            input=stdin,
        )


@pytest.fixture(scope="module")
async def live(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[LiveRecord]:
    server = ServiceServer(
        from_settings(
            RecordSettings(grpc_port=0),
            MongoSettings(
                MONGODB_URI=mongo_server.uri,
                MEDLEDGER_MONGODB_DATABASE=f"dupcli{uuid.uuid4().hex[:8]}",
            ),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
            PeerSettings(
                identity_addr=auth_platform.identity_address,
                ledger_addr=auth_platform.ledger_address,
            ),
        )
    )
    await server.start()
    try:
        yield LiveRecord(
            address=f"127.0.0.1:{server.port}",
            token=await auth_platform.token(
                "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_TREAT]
            ),
        )
    finally:
        await server.stop(0)


async def create_patient(live: LiveRecord, family: str, given: str, birth: str) -> str:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": uuid.uuid4().hex}],
        "name": [{"family": family, "given": [given]}],
        "gender": "male",
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": "0113 496 0000"}],
    }
    created = await live.record("create", "-", stdin=json.dumps(patient))
    assert created.exit_code == 0, created.output
    return str(json.loads(created.stdout)["id"])


async def test_a_pair_is_listed_then_linked(live: LiveRecord, tmp_path: Path) -> None:
    family = "Q" + "".join(random.choices(string.ascii_lowercase, k=7))
    william = await create_patient(live, family, "William", "1944-02-03")
    bill = await create_patient(live, family, "Bill", "1944-03-02")

    listed = await live.record("duplicates", "--json")
    assert listed.exit_code == 0, listed.output
    (pair,) = [
        c
        for c in json.loads(listed.stdout)["candidates"]
        if {c["firstPatientId"], c["secondPatientId"]} == {william, bill}
    ]
    assert pair["score"] >= 0.9
    assert {"name.family", "name.given", "birthDate", "telecom"} <= set(pair["matchedFields"])

    table = await live.record("duplicates")
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if william in line)
    assert bill in row
    assert re.search(r"0\.9\d\d|1\.000", row)
    assert "name.given" in row
    # One patient's pairs alone (its blocks only), and a Patient/ reference taken too: not
    # another pair's.
    others = "Q" + "".join(random.choices(string.ascii_lowercase, k=7))
    await create_patient(live, others, "Margaret", "1951-06-07")
    await create_patient(live, others, "Maggie", "1951-06-07")
    own = await live.record("duplicates", "--patient", f"Patient/{william}", "--json")
    assert own.exit_code == 0, own.output
    assert [
        {c["firstPatientId"], c["secondPatientId"]} for c in json.loads(own.stdout)["candidates"]
    ] == [{william, bill}]
    refused = await live.record("duplicates", "--min-score", "1.5")
    assert refused.exit_code == 2  # the CLI refuses it before asking

    source_receipt, target_receipt = tmp_path / "source.json", tmp_path / "target.json"
    linked = await live.record(
        "link",
        f"Patient/{bill}",
        william,
        "--source-version",
        "1",
        "--target-version",
        "1",
        "--idempotency-key",
        "merge-bill",
        "--source-receipt-out",
        str(source_receipt),
        "--target-receipt-out",
        str(target_receipt),
    )
    assert linked.exit_code == 0, linked.output
    leaves = re.findall(r"version 2, ledgered at leaf index (\d+)", linked.stderr)
    assert [int(leaf) for leaf in leaves] == [
        read_receipt(source_receipt).leaf_index,
        read_receipt(target_receipt).leaf_index,
    ]
    retired = json.loads((await live.record("get", f"Patient/{bill}")).stdout)
    assert retired["link"] == [
        {"other": {"reference": f"Patient/{william}"}, "type": "replaced-by"}
    ]
    assert retired["active"] is False
    kept = json.loads((await live.record("get", f"Patient/{william}")).stdout)
    assert kept["link"] == [{"other": {"reference": f"Patient/{bill}"}, "type": "replaces"}]

    again = await live.record(
        "link", bill, william, "--source-version", "1", "--target-version", "1",
        "--idempotency-key", "merge-bill", "--json",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["source"]["version"] == "2"  # the first answer
    wrong = await live.record(
        "link", f"Observation/{bill}", william, "--source-version", "1", "--target-version", "1"
    )
    assert wrong.exit_code == 2
