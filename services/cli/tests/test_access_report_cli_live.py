"""``medledger report access`` then ``medledger verify access-report``, end to end against the
real record service (over the testkit platform's identity and ledger, secantusdb and OpenBao):
a patient's record written and read by hospital A, read by hospital B's emergency department
by break-glass, another patient's entries in between. The JSON holds exactly the ledger's
leaves up to its checkpoint and lists exactly the patient's entries (checked against the
ledger read directly and the record's access log); the PDF's text (pypdf) shows them, the
checkpoint and how to verify; the same report renders to the same bytes. The verifier passes
it with the ledger's key and fails each tampering, naming the check; a continuing report
verifies with --previous."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from pypdf import PdfReader
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.access_report_pdf import render_pdf
from medledger.cli.main import app
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.record.config import RecordSettings
from medledger.record.runtime import from_settings
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.access_report import (
    count_untestable,
    parse_access_report,
    unverified_checkpoint,
)

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})
TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT


@dataclass
class Reported:
    address: str
    writer: str
    vkey: str
    folder: Path
    pdf: Path
    json: Path
    output: str
    patient_id: str
    observation_id: str
    ledger: list[ledger_pb2.IndexedEntry]  # the ledger's leaves, read after the report
    logged: list[int]  # the record's access log of the patient, as leaf indices


async def cli(*args: str, stdin: str = "") -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)


def flat(text: str) -> str:
    return " ".join(text.split())


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)


@pytest.fixture(scope="module")
async def reported(
    auth_platform: Platform,
    mongo_server: Any,
    vault_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Reported]:
    server = ServiceServer(
        from_settings(
            RecordSettings(grpc_port=0),
            MongoSettings(
                MONGODB_URI=mongo_server.uri,
                MEDLEDGER_MONGODB_DATABASE=f"accesscli{uuid.uuid4().hex[:8]}",
            ),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
            PeerSettings(
                identity_addr=auth_platform.identity_address,
                ledger_addr=auth_platform.ledger_address,
            ),
        )
    )
    await server.start()
    address = f"127.0.0.1:{server.port}"
    writer = await auth_platform.token("system/*.cruds", "hospital-a", [TREAT])
    er = await auth_platform.token(
        "system/Observation.rs", "hospital-b", [TREAT, purpose_pb2.PURPOSE_OF_USE_ETREAT]
    )
    reader = await auth_platform.token("ledger.read", "hospital-a")
    folder = tmp_path_factory.mktemp("access")

    async def create(document: dict[str, Any]) -> dict[str, Any]:
        done = await cli(
            "record", "create", "-", "--record", address, "--token", writer,
            stdin=json.dumps(document),
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def new_patient() -> dict[str, Any]:
        patient = sample("Patient")
        del patient["id"]
        return patient

    def observation_of(patient_id: str) -> dict[str, Any]:
        observation = {**sample("Observation"), "subject": {"reference": f"Patient/{patient_id}"}}
        for unneeded in ("id", "encounter"):
            del observation[unneeded]
        return observation

    try:
        patient = await create(new_patient())
        other = await create(new_patient())
        observation = await create(observation_of(patient["id"]))
        await create(observation_of(other["id"]))
        for token, extra in (
            (writer, ()),
            (er, ("--purpose", "ETREAT", "--break-glass-reason", "unconscious")),
        ):
            done = await cli(
                "record", "get", f"Observation/{observation['id']}", "--record", address,
                "--token", token, *extra,
            )  # fmt: skip
            assert done.exit_code == 0, done.output

        async with authed_channel(address, writer) as channel:
            log = await record_pb2_grpc.RecordServiceStub(channel).GetAccessLog(
                record_pb2.GetAccessLogRequest(
                    patient_id=patient["id"], purpose=TREAT, page_size=1000
                )
            )
        pdf, report_json = folder / "access.pdf", folder / "access.json"
        done = await cli(
            "report", "access", "--patient", patient["id"], "--out", str(pdf), "--json",
            str(report_json), "--purpose", "TREAT", "--record", address, "--token", writer,
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        async with authed_channel(auth_platform.ledger_address, reader) as channel:
            ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
            vkey = (await ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
            leaves: list[ledger_pb2.IndexedEntry] = []
            while True:
                page = await ledger.ListEntries(
                    ledger_pb2.ListEntriesRequest(start_index=len(leaves), page_size=1000)
                )
                leaves += page.entries
                if not page.next_page_token:
                    break
        yield Reported(
            address=address,
            writer=writer,
            vkey=vkey,
            folder=folder,
            pdf=pdf,
            json=report_json,
            output=flat(done.stderr),
            patient_id=patient["id"],
            observation_id=observation["id"],
            ledger=leaves,
            logged=[int(e.leaf_index) for e in log.entries],
        )
    finally:
        await server.stop(0)


def test_the_json_is_the_ledger_and_lists_the_patients_entries(reported: Reported) -> None:
    document = json.loads(reported.json.read_bytes())
    report = parse_access_report(reported.json.read_bytes())
    size = unverified_checkpoint(report.checkpoint).size
    # Every leaf, byte for byte as the ledger holds it, up to the checkpoint's size.
    assert [base64.b64decode(leaf) for leaf in document["leaves"]] == [
        e.entry_bytes for e in reported.ledger[:size]
    ]
    listed = [e.leaf_index for e in report.entries]
    # The record's entries (its access log, and that log's read), and hospital B's break-glass
    # (identity's), nothing else.
    glass = [
        int(e.leaf_index)
        for e in reported.ledger[:size]
        if e.entry.kind == ledger_pb2.EVENT_KIND_BREAK_GLASS
        and e.entry.organization == "hospital-b"
    ]
    log_read = [i for i in listed if i not in reported.logged and i not in glass]
    assert len(glass) == 1
    assert len(log_read) == 1  # the access log's own read, after its answer
    assert sorted([*reported.logged, *glass, *log_read]) == listed
    by_index = {e.leaf_index: e for e in report.entries}
    assert by_index[glass[0]].break_glass
    assert document["patient_id"] == reported.patient_id
    # The patient's scan key finds every entry (the record's and identity's); none is left
    # to the legacy key of the pseudonym.
    assert len(base64.b64decode(document["scan_key"])) == 32
    assert {e["found_by"] for e in document["entries"]} == {"nonce"}
    assert stat.S_IMODE(reported.json.stat().st_mode) == 0o600
    assert stat.S_IMODE(reported.pdf.stat().st_mode) == 0o600
    assert (
        f"access report of Patient/{reported.patient_id} written to {reported.pdf} and "
        f"{reported.json}: {len(listed)} entries (1 break-glass) among {size} ledger leaves"
    ) in reported.output


def test_the_pdf_shows_the_entries_and_the_checkpoint(reported: Reported) -> None:
    data = reported.pdf.read_bytes()
    text = pdf_text(data)
    report = parse_access_report(reported.json.read_bytes())
    checkpoint = unverified_checkpoint(report.checkpoint)
    assert "Access report" in text
    assert f"Patient/{reported.patient_id}" in text
    assert f"tree size {checkpoint.size}" in text
    assert checkpoint.root_hash.hex() in text
    assert f"origin {checkpoint.origin}" in text
    assert "medledger verify access-report access.json --vkey" in text
    assert f"Observation/{reported.observation_id}" in text
    assert "BREAK-GLASS" in text
    assert "hospital-b" in text
    assert f"{len(report.entries)} ledger entries about this patient (1 break-glass)" in text
    # The same report renders to the same bytes (the CLI wrote exactly this rendering).
    hint = (
        "medledger verify access-report access.json --vkey LEDGER_VKEY (and "
        "--witness-vkey/--quorum for the witnesses)"
    )
    again = render_pdf(report, untestable=count_untestable(report), verify_hint=hint)
    assert again == data
    assert render_pdf(report, untestable=0, verify_hint="x") != data


async def verify(reported: Reported, path: Path, *options: str) -> tuple[int, str]:
    done = await cli("verify", "access-report", str(path), "--vkey", reported.vkey, *options)
    return done.exit_code, flat(done.output)


def tampered(reported: Reported, change: Any) -> Path:
    document = json.loads(reported.json.read_bytes())
    change(document)
    path = reported.folder / f"tampered-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(document))
    return path


async def test_the_report_verifies_and_each_tampering_fails(reported: Reported) -> None:
    code, output = await verify(reported, reported.json)
    assert code == 0, output
    report = parse_access_report(reported.json.read_bytes())
    assert f"verifies: {len(report.entries)} entries about the patient (1 break-glass)" in output
    assert "none left out" in output
    assert "0 of the entries found by the pseudonym's legacy scan key" in output

    def drop(document: dict[str, Any]) -> None:
        document["entries"].pop(0)

    def duplicate(document: dict[str, Any]) -> None:
        document["entries"].append(document["entries"][0])

    def other_org(document: dict[str, Any]) -> None:
        document["entries"][1]["organization"] = "hospital-z"

    def hide_glass(document: dict[str, Any]) -> None:
        for entry in document["entries"]:
            entry["break_glass"] = False

    def add_stranger(document: dict[str, Any]) -> None:
        listed = {e["leaf_index"] for e in document["entries"]}
        entry = dict(document["entries"][-1])
        for index, leaf in enumerate(document["leaves"]):
            decoded = ledger_pb2.LedgerEntry.FromString(base64.b64decode(leaf))
            if decoded.subject and index not in listed:
                entry.update(leaf_index=index, opening=None, resource_id="", resource_version=0)
                document["entries"].append(entry)
                return
        raise AssertionError("no other patient's entry in the ledger")

    def change_leaf(document: dict[str, Any]) -> None:
        entry = ledger_pb2.LedgerEntry.FromString(base64.b64decode(document["leaves"][0]))
        entry.organization = "hospital-z"
        document["leaves"][0] = base64.b64encode(entry.SerializeToString()).decode()

    def drop_leaf(document: dict[str, Any]) -> None:
        document["leaves"].pop()

    def drop_scan_key(document: dict[str, Any]) -> None:
        document["scan_key"] = None

    for change, text in (
        (drop, "scan check failed) missing: 1 entry about the patient not listed"),
        (duplicate, "scan check failed) leaf"),
        (add_stranger, "scan check failed) extra: leaf"),
        (other_org, "fields check failed) leaf"),
        (hide_glass, "break_glass is False, the entry says True"),
        (change_leaf, "root check failed)"),
        (drop_leaf, "leaves check failed)"),
        (drop_scan_key, "scan check failed) extra: leaf"),
    ):
        code, output = await verify(reported, tampered(reported, change))
        assert code == 1, (change.__name__, output)
        assert "does NOT verify" in output
        assert text in output, (change.__name__, output)

    other_key = "other.test/ledger+00000000+AR1bLcJ+/2+xyJoXUQt6U0HkCbd11vDXWZwHdP0ko8XE"
    code, output = await verify(reported, reported.json.with_name("none.json"))
    assert code == 2
    done = await cli("verify", "access-report", str(reported.json), "--vkey", "not a key")
    assert done.exit_code == 2
    done = await cli("verify", "access-report", str(reported.json), "--ledger-key", other_key)
    assert done.exit_code in (1, 2), done.output


async def test_a_report_continuing_the_first_verifies_with_it(reported: Reported) -> None:
    first = parse_access_report(reported.json.read_bytes())
    size = unverified_checkpoint(first.checkpoint).size
    later = reported.folder / "later.json"
    done = await cli(
        "report", "access", "--patient", reported.patient_id, "--json", str(later),
        "--from-size", str(size), "--purpose", "TREAT", "--record", reported.address,
        "--token", reported.writer,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    code, output = await verify(reported, later, "--previous", str(reported.json))
    assert code == 0, output
    assert f"continues the report up to size {size}" in output
    # The first report's own read is the continuing one's first entry.
    assert parse_access_report(later.read_bytes()).entries[0].event == "RECORD_READ"
    code, output = await verify(reported, later)
    assert code == 0
    assert "give it with --previous" in output
    code, output = await verify(reported, later, "--previous", str(later))
    assert code == 1
    assert "previous check failed" in output


async def test_refusals(reported: Reported) -> None:
    done = await cli(
        "report", "access", "--patient", "no-such-patient", "--json",
        str(reported.folder / "none.json"), "--purpose", "TREAT", "--record",
        reported.address, "--token", reported.writer,
    )  # fmt: skip
    assert done.exit_code == 1
    assert "NOT_FOUND" in flat(done.output)
    assert not (reported.folder / "none.json").exists()
    done = await cli(
        "report", "access", "--patient", reported.patient_id, "--token", reported.writer
    )
    assert done.exit_code == 2
