"""``medledger record export`` then ``medledger verify export``, end to end: the real record
service (its own bootstrap over the testkit platform's identity and ledger, secantusdb and
OpenBao) exports a patient's record; the verifier checks it offline with the ledger's key
alone, and refuses it, naming the entry and the check, once one byte of a resource changes.
Every exit status of both commands is here, on the real export."""

from __future__ import annotations

import asyncio
import json
import re
import stat
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
from medledger.tlog import Cosigner
from medledger.verify.receipts import read_receipt

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})


@dataclass
class Exported:
    address: str
    writer: str  # hospital-a: the patient's record holder
    outsider: str  # hospital-b: no consent
    vkey: str
    folder: Path
    bundle: Path
    export_receipt: Path
    export_output: str
    patient_id: str
    observation_id: str
    condition_id: str


async def cli(*args: str, stdin: str = "") -> Result:
    """``medledger ARGS`` in a thread (the command runs its own event loop; the services run
    on the test's)."""
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
async def exported(
    auth_platform: Platform,
    mongo_server: Any,
    vault_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Exported]:
    server = await start_record_server(
        auth_platform, mongo_server, vault_server, f"exportcli{uuid.uuid4().hex[:8]}"
    )
    address = f"127.0.0.1:{server.port}"
    writer = await auth_platform.token(
        "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_TREAT]
    )
    folder = tmp_path_factory.mktemp("export")

    async def write(command: str, document: dict[str, Any], *extra: str) -> dict[str, Any]:
        done = await cli(
            "record", command, "-", *extra, "--record", address, "--token", writer,
            stdin=json.dumps(document),
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    try:
        patient = sample("Patient")
        del patient["id"]
        patient = await write("create", patient)
        subject = {"reference": f"Patient/{patient['id']}"}
        observation = {**sample("Observation"), "subject": subject}
        for unneeded in ("id", "encounter"):
            del observation[unneeded]
        observation = await write("create", observation)
        observation = await write(
            "update", {**observation, "status": "amended"}, "--expected-version", "1"
        )
        condition = {**sample("Condition"), "subject": subject}
        for unneeded in ("id", "evidence"):
            del condition[unneeded]
        condition = await write("create", condition)

        bundle, receipt = folder / "bundle.json", folder / "export-receipt.json"
        done = await cli(
            "record", "export", patient["id"], "--out", str(bundle), "--receipt-out",
            str(receipt), "--record", address, "--token", writer,
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        reader = await auth_platform.token("ledger.read", "hospital-a")
        vkey = await cli(
            "ledger", "vkey", "--ledger", auth_platform.ledger_address, "--token", reader
        )
        assert vkey.exit_code == 0, vkey.output
        yield Exported(
            address=address,
            writer=writer,
            outsider=await auth_platform.token(
                "system/*.cruds", "hospital-b", [purpose_pb2.PURPOSE_OF_USE_TREAT]
            ),
            vkey=vkey.stdout.strip(),
            folder=folder,
            bundle=bundle,
            export_receipt=receipt,
            export_output=flat(done.stderr),
            patient_id=patient["id"],
            observation_id=observation["id"],
            condition_id=condition["id"],
        )
    finally:
        await server.stop(0)


async def verify_export(exported: Exported, bundle: Path, *options: str) -> tuple[int, str]:
    done = await cli("verify", "export", str(bundle), "--vkey", exported.vkey, *options)
    return done.exit_code, flat(done.output)


def changed_copy(exported: Exported, old: bytes, new: bytes) -> Path:
    text = exported.bundle.read_bytes()
    assert text.count(old) == 1, old
    path = exported.folder / f"changed-{uuid.uuid4().hex[:6]}.json"
    path.write_bytes(text.replace(old, new))
    return path


async def test_the_export_is_written_as_the_server_answered(exported: Exported) -> None:
    assert (
        f"3 resource(s) of Patient/{exported.patient_id} written to {exported.bundle}"
        in exported.export_output
    )
    # The record holds PHI: the file is its owner's alone.
    assert stat.S_IMODE(exported.bundle.stat().st_mode) == 0o600
    bundle = json.loads(exported.bundle.read_bytes())
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    assert bundle["entry"][0]["resource"]["id"] == exported.patient_id
    leaf = re.search(r"the export is ledgered at leaf index (\d+)", exported.export_output)
    assert leaf is not None, exported.export_output
    assert read_receipt(exported.export_receipt).leaf_index == int(leaf[1])
    code, output = await cli_verify_receipt(exported)
    assert code == 0, output


async def cli_verify_receipt(exported: Exported) -> tuple[int, str]:
    done = await cli("verify", "receipt", str(exported.export_receipt), "--vkey", exported.vkey)
    return done.exit_code, flat(done.output)


async def test_the_export_verifies_offline(exported: Exported) -> None:
    code, output = await verify_export(
        exported, exported.bundle, "--origin", "platform.test/ledger"
    )
    assert code == 0, output
    assert (
        f"✓ export {exported.bundle} verifies: 3 resource(s), each exactly as the ledger "
        "committed to it"
    ) in output
    for row in (
        f"│ Patient │ {exported.patient_id} │ 1 │ RECORD_CREATED │",
        f"│ Observation │ {exported.observation_id} │ 2 │ RECORD_UPDATED │",
        f"│ Condition │ {exported.condition_id} │ 1 │ RECORD_CREATED │",
    ):
        assert row in output
    assert "resources 3" in output
    assert "checkpoint platform.test/ledger, tree size" in output
    assert "signed by platform.test/ledger+" in output
    assert "witnesses none required (no --witness-vkey given)" in output


async def test_one_changed_byte_fails_naming_the_entry_and_the_check(exported: Exported) -> None:
    changed = changed_copy(exported, b'"status":"amended"', b'"status":"amendeD"')
    code, output = await verify_export(exported, changed)
    assert code == 1, output
    entries = json.loads(exported.bundle.read_bytes())["entry"]
    index = [e["resource"]["id"] for e in entries].index(exported.observation_id)
    assert (
        f"does NOT verify: entry[{index}] Observation/{exported.observation_id} version 2 "
        "(commitment check failed)"
    ) in output
    assert "do not match the ledgered commitment" in output


async def test_a_quorum_the_checkpoint_lacks_fails(exported: Exported) -> None:
    witness = str(Cosigner.generate("witness.hospital-b.example").verifier_key)
    code, output = await verify_export(
        exported, exported.bundle, "--witness-vkey", witness, "--quorum", "1"
    )
    assert code == 1, output
    assert "(receipt checkpoint check failed)" in output
    assert "0 valid witness cosignatures, the quorum is 1" in output


async def test_another_logs_origin_fails(exported: Exported) -> None:
    code, output = await verify_export(exported, exported.bundle, "--origin", "other.example/log")
    assert code == 1, output
    assert "entry[0]" in output
    assert "(receipt checkpoint check failed)" in output


async def test_a_pseudonymised_export_is_refused(exported: Exported) -> None:
    pseudonymised = exported.folder / "pseudonymised.json"
    done = await cli(
        "record", "export", exported.patient_id, "--pseudonymise", "--out", str(pseudonymised),
        "--record", exported.address, "--token", exported.writer,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "pseudonymised, without ledger proofs" in flat(done.stderr)
    code, output = await verify_export(exported, pseudonymised)
    assert code == 1, output
    assert f"✗ export {pseudonymised} cannot be verified: it is pseudonymised" in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not a FHIR collection Bundle: not JSON"),
        (b'{"resourceType": "Bundle", "type": "searchset"}', "type is 'searchset'"),
        (b'{"resourceType": "Bundle", "type": "collection"}', "it has no entries"),
    ],
)
async def test_what_is_not_an_export_fails(
    exported: Exported, content: bytes, message: str
) -> None:
    path = exported.folder / f"other-{uuid.uuid4().hex[:6]}.json"
    path.write_bytes(content)
    code, output = await verify_export(exported, path)
    assert code == 1, output
    assert message in output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--vkey", "not-a-key"], "is not a C2SP verifier key"),
        (["--quorum", "1"], "not in 0..0"),
    ],
)
async def test_usage_errors_exit_2(exported: Exported, options: list[str], message: str) -> None:
    code, output = await verify_export(exported, exported.bundle, *options)
    assert code == 2, output
    assert message in output
    missing = await cli("verify", "export", str(exported.folder / "absent.json"), "--vkey", "x")
    assert missing.exit_code == 2
    no_key = await cli("verify", "export", str(exported.bundle))
    assert no_key.exit_code == 2
    assert "Missing option '--vkey'" in flat(no_key.output)


async def test_an_export_refused_by_the_service_exits_1(exported: Exported) -> None:
    common = ["--out", str(exported.folder / "refused.json"), "--record", exported.address]
    denied = await cli(
        "record", "export", exported.patient_id, *common, "--token", exported.outsider
    )
    assert denied.exit_code == 1, denied.output
    assert f"ExportPatient at {exported.address}: PERMISSION_DENIED" in flat(denied.stderr)
    unknown = await cli("record", "export", str(uuid.uuid4()), *common, "--token", exported.writer)
    assert unknown.exit_code == 1, unknown.output
    assert "NOT_FOUND" in unknown.stderr
    assert not (exported.folder / "refused.json").exists()


async def test_record_export_usage_errors(exported: Exported) -> None:
    no_out = await cli("record", "export", exported.patient_id, "--token", exported.writer)
    assert no_out.exit_code == 2
    assert "Missing option '--out'" in flat(no_out.output)
    no_token = await cli("record", "export", exported.patient_id, "--out", "x.json")
    assert no_token.exit_code == 2
    assert "an access token is required" in flat(no_token.output)


async def test_an_unwritable_out_exits_1(exported: Exported) -> None:
    blocker = exported.folder / "a-file"
    blocker.write_text("")
    done = await cli(
        "record", "export", exported.patient_id, "--out", str(blocker / "bundle.json"),
        "--record", exported.address, "--token", exported.writer,
    )  # fmt: skip
    assert done.exit_code == 1, done.output
    assert "cannot write the export" in flat(done.stderr)
