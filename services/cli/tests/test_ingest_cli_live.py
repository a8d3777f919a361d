"""``medledger ingest csv|hl7`` against the real record service (over the testkit platform's
identity and ledger, secantusdb and OpenBao): rows and messages written with receipts, the
refused ones in a table by where they are wrong (never their values), exit 1 when anything was
refused, and the same run again writing nothing new."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.cli.ingest import hl7_messages
from medledger.cli.main import app
from medledger.testkit.platform import Platform
from medledger.testkit.record_server import start_record_server

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})
MRN_SYSTEM = "https://hospital-a.example/mrn"
WHEN = "2024-03-01T08:30:00Z"
STAMP = "20240301083000+0000"


@dataclass
class LiveRecord:
    address: str
    token: str  # hospital-a: create, read, update, search, for TREAT

    async def run(self, *args: str, stdin: str = "") -> Result:
        """``medledger ARGS`` against the record, in a thread (the command runs its own
        event loop)."""
        return await asyncio.to_thread(
            runner.invoke,
            app,
            [*args, "--record", self.address, "--token", self.token],
            input=stdin,
        )


@pytest.fixture(scope="module")
async def live(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[LiveRecord]:
    server = await start_record_server(
        auth_platform, mongo_server, vault_server, f"ingestcli{uuid.uuid4().hex[:8]}"
    )
    try:
        yield LiveRecord(
            address=f"127.0.0.1:{server.port}",
            token=await auth_platform.token(
                "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_TREAT]
            ),
        )
    finally:
        await server.stop(0)


async def create_patient(live: LiveRecord, mrn: str) -> str:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
        "name": [{"family": "Okafor", "given": ["Adaeze"]}],
        "birthDate": "1979-04-12",
    }
    created = await live.run("record", "create", "-", stdin=json.dumps(patient))
    assert created.exit_code == 0, created.output
    return str(json.loads(created.stdout)["id"])


def written_ids(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line["written"]["id"] for line in lines if "written" in line]


async def test_csv_rows_written_refused_ones_tabled_and_a_rerun_writes_nothing(
    live: LiveRecord, tmp_path: Path
) -> None:
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    patient_id = await create_patient(live, mrn)
    lab = tmp_path / "labs.csv"
    lab.write_text(
        "MRN,Test,Result,Units,Collected\n"
        f"{mrn},2345-7,5.4,mmol/L,{WHEN}\n"
        f"{mrn},718-7,13.2,mmHg,{WHEN}\n"  # not UCUM
        f"{mrn},2345-8,5.4,mmol/L,{WHEN}\n"  # check digit
        f"{mrn},4548-4,6.1,%,{WHEN}\n",
        encoding="utf-8",
    )
    mapping = "patient=MRN,code=Test,value=Result,unit=Units,effective=Collected"
    out = tmp_path / "out.jsonl"
    args = ["ingest", "csv", str(lab), "--mapping", mapping, "--identifier-system", MRN_SYSTEM]
    first = await live.run(*args, "--out", str(out))
    assert first.exit_code == 1, first.output  # rows were refused
    assert "row 2 / Units" in first.stdout
    assert "row 3 / Test" in first.stdout
    assert "code-invalid" in first.stdout
    assert "2 of 4 row(s) written as Observations, 2 refused" in first.stdout
    assert "mmHg" not in first.stdout  # what is wrong, never the value
    assert "2345-8" not in first.stdout
    written = written_ids(out)
    assert len(written) == 2
    issues = [json.loads(line)["issue"] for line in out.read_text().splitlines() if "issue" in line]
    assert [i["location"] for i in issues] == ["row 2 / Units", "row 3 / Test"]

    read = await live.run("record", "get", f"Observation/{written[0]}")
    assert read.exit_code == 0, read.output
    observation = json.loads(read.stdout)
    assert observation["subject"]["reference"] == f"Patient/{patient_id}"
    assert observation["valueQuantity"]["code"] == "mmol/L"

    again = tmp_path / "again.jsonl"
    rerun = await live.run(*args, "--out", str(again))
    assert rerun.exit_code == 1, rerun.output
    assert written_ids(again) == written  # the first run's resources, nothing new

    good = tmp_path / "good.csv"
    good.write_text(
        f"patient_id,loinc,value,unit,effective\r\n{patient_id},2160-0,0.9,mg/dL,{WHEN}\r\n"
    )
    clean = await live.run("ingest", "csv", str(good))
    assert clean.exit_code == 0, clean.output
    assert "1 of 1 row(s) written as Observations, 0 refused" in clean.stdout


async def test_csv_usage_and_refusals(live: LiveRecord, tmp_path: Path) -> None:
    lab = tmp_path / "labs.csv"
    lab.write_text("patient_id,loinc,value,unit,effective\n")
    bad_mapping = await live.run("ingest", "csv", str(lab), "--mapping", "colour=x")
    assert bad_mapping.exit_code == 2  # refused before any call
    missing = await live.run("ingest", "csv", str(lab), "--mapping", "unit=Units")
    assert missing.exit_code == 1
    assert "INVALID_ARGUMENT" in missing.output
    assert "mapping.unit_column" in missing.output


def adt(control: str, mrn: str) -> str:
    return "\r\n".join(
        [
            f"MSH|^~\\&|ADT1|HOSP-A|MEDLEDGER|ML|{STAMP}||ADT^A01^ADT_A01|{control}|P|2.5.1",
            f"EVN|A01|{STAMP}",
            f"PID|1||{mrn}^^^HOSP-A^MR||Okafor^Adaeze||19790412|F",
            f"PV1|1|I|WARD1^101^A||||||||||||||||V{control}",
        ]
    )


def oru(control: str, mrn: str, glucose: str) -> str:
    return "\n".join(
        [
            f"MSH|^~\\&|LAB|HOSP-A|MEDLEDGER|ML|{STAMP}||ORU^R01^ORU_R01|{control}|P|2.3",
            f"PID|1||{mrn}^^^HOSP-A^MR||Okafor^Adaeze",
            f"OBR|1||ACC-{control}|24323-8^Metabolic panel^LN|||{STAMP}|||||||||||||||||F",
            f"OBX|1|NM|2345-7^Glucose^LN||{glucose}|mg/dL|70-99|H|||F|||{STAMP}",
        ]
    )


def test_a_file_of_messages_splits_at_blank_lines_and_at_each_msh() -> None:
    text = "\x0b" + adt("c1", "m") + "\r\n\r\n" + oru("c2", "m", "1") + "\n" + oru("c3", "m", "2")
    messages = list(hl7_messages(text + "\x1c\r\n\n"))
    assert [m.split("|")[9] for m in messages] == ["c1", "c2", "c3"]
    assert all("\n" not in m and m.startswith("MSH|") for m in messages)
    assert messages[0].count("\r") == 3


async def test_hl7_messages_written_in_order_and_a_refused_one_located(
    live: LiveRecord, tmp_path: Path
) -> None:
    mrn = f"MRN{uuid.uuid4().hex[:8]}"
    controls = [uuid.uuid4().hex[:12] for _ in range(3)]
    feed = tmp_path / "feed.hl7"
    feed.write_text(
        adt(controls[0], mrn)
        + "\r\n\r\n"
        + oru(controls[1], mrn, "105")
        + "\n\n"
        + oru(controls[2], mrn, "1O5"),  # not a number
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    result = await live.run("ingest", "hl7", str(feed), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "message 3 OBX[1]-5" in result.stdout
    assert "1O5" not in result.output
    assert "2 of 3 message(s) written (4 resources), 1 refused" in result.stdout
    written = written_ids(out)

    # A resend of the same messages (the same MSH-10s) writes nothing new.
    again = tmp_path / "again.jsonl"
    resent = await live.run("ingest", "hl7", str(feed), "--out", str(again))
    assert resent.exit_code == 1
    assert written_ids(again) == written


async def test_a_batch_file_goes_whole_and_a_cut_one_writes_nothing(
    live: LiveRecord, tmp_path: Path
) -> None:
    mrn = f"MRN{uuid.uuid4().hex[:8]}"
    controls = [uuid.uuid4().hex[:12] for _ in range(2)]
    messages = [adt(controls[0], mrn), oru(controls[1], mrn, "98")]
    feed = tmp_path / "day.hl7"
    feed.write_text(
        "\n".join(["FHS|^~\\&|LAB|HOSP-A", "BHS|^~\\&|LAB|HOSP-A", *messages, "BTS|2", "FTS|1"]),
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    result = await live.run("ingest", "hl7", str(feed), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2 of 2 message(s) written (4 resources), 0 refused" in result.stdout
    assert len(written_ids(out)) == 4

    # The same day's file cut after its first message: its trailer's count differs.
    cut = tmp_path / "cut.hl7"
    cut.write_text("\n".join(["BHS|^~\\&|LAB|HOSP-A", adt(uuid.uuid4().hex[:12], mrn), "BTS|2"]))
    refused = await live.run("ingest", "hl7", str(cut), "--out", str(tmp_path / "cut.jsonl"))
    assert refused.exit_code == 1
    assert "batch BTS-1" in refused.stdout
    assert "0 of 1 message(s) written (0 resources), 1 refused" in refused.stdout
