"""``medledger report summary`` end to end: the real record service (its own bootstrap over the
testkit platform's identity and ledger, secantusdb and OpenBao) holds the demo's patient
hospital-a-1 as ``medledger demo seed`` writes it, plus a newer glucose result, an allergy and
a risk assessment written with ``medledger record create``; the command exports the record and
writes the PDF and the FHIR document, whose lines verify against the ledger's key alone."""

from __future__ import annotations

import asyncio
import io
import json
import re
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import Result
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2_grpc
from medledger.cli.calls import bearer
from medledger.cli.demo_records import DEMO_RECORDS, seed_records
from medledger.cli.main import app
from medledger.cli.summary_document import document_problems, proven_entries, resolve
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import Platform
from medledger.testkit.record_server import start_record_server
from medledger.verify.export import verify_export
from medledger.verify.trust import TrustPolicy

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})
GLUCOSE = "2345-7"


@dataclass
class Summarised:
    address: str
    writer: str  # hospital-a: the patient's record holder
    outsider: str  # hospital-b: no consent
    vkey: str
    folder: Path
    pdf: Path
    bundle: Path
    output: str
    patient_id: str
    glucose_id: str
    allergy_id: str
    risk_id: str


async def cli(*args: str, stdin: str = "") -> Result:
    """``medledger ARGS`` in a thread (the command runs its own event loop; the services run
    on the test's)."""
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)


def flat(text: str) -> str:
    return " ".join(text.split())


def pdf_text(path: Path) -> str:
    reader = PdfReader(io.BytesIO(path.read_bytes()))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)


@pytest.fixture(scope="module")
async def summarised(
    auth_platform: Platform,
    mongo_server: Any,
    vault_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Summarised]:
    server = await start_record_server(
        auth_platform, mongo_server, vault_server, f"summarycli{uuid.uuid4().hex[:8]}"
    )
    address = f"127.0.0.1:{server.port}"
    writer = await auth_platform.token(
        "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_TREAT]
    )
    folder = tmp_path_factory.mktemp("summary")

    async def create(document: dict[str, Any]) -> dict[str, Any]:
        done = await cli(
            "record", "create", "-", "--record", address, "--token", writer,
            stdin=json.dumps(document),
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    try:
        async with grpc.aio.insecure_channel(address) as channel:
            (seeded,) = await seed_records(
                address,
                record_pb2_grpc.RecordServiceStub(channel),
                bearer(writer),
                "summary-test-app",
                [DEMO_RECORDS[0]],
            )
        patient = f"Patient/{seeded.patient_id}"
        seeded_glucose = seeded.observations[GLUCOSE].removeprefix("Observation/")
        done = await cli(
            "record", "get", seeded.observations[GLUCOSE], "--record", address, "--token", writer
        )
        assert done.exit_code == 0, done.output
        newer = json.loads(done.stdout)
        for server_owned in ("id", "meta", "identifier"):
            newer.pop(server_owned, None)
        newer |= {
            "effectiveDateTime": "2026-03-04T08:00:00Z",
            "valueQuantity": {**newer["valueQuantity"], "value": 163},
        }
        newer.pop("text", None)
        glucose = await create(newer)
        allergy = {**sample("AllergyIntolerance"), "patient": {"reference": patient}}
        del allergy["id"]
        allergy = await create(allergy)
        risk = {
            **sample("RiskAssessment"),
            "subject": {"reference": patient},
            "code": {"text": "Diabetes progression"},
            "basis": [{"reference": f"Observation/{glucose['id']}"}],
        }
        del risk["id"]
        risk["prediction"] = risk["prediction"][:1]
        risk = await create(risk)

        pdf, bundle = folder / "summary.pdf", folder / "summary.json"
        done = await cli(
            "report", "summary", "--patient", seeded.patient_id, "--out", str(pdf),
            "--bundle", str(bundle), "--record", address, "--token", writer,
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        reader = await auth_platform.token("ledger.read", "hospital-a")
        vkey = await cli(
            "ledger", "vkey", "--ledger", auth_platform.ledger_address, "--token", reader
        )
        assert vkey.exit_code == 0, vkey.output
        assert seeded_glucose != glucose["id"]
        yield Summarised(
            address=address,
            writer=writer,
            outsider=await auth_platform.token(
                "system/*.cruds", "hospital-b", [purpose_pb2.PURPOSE_OF_USE_TREAT]
            ),
            vkey=vkey.stdout.strip(),
            folder=folder,
            pdf=pdf,
            bundle=bundle,
            output=flat(done.stderr),
            patient_id=seeded.patient_id,
            glucose_id=glucose["id"],
            allergy_id=allergy["id"],
            risk_id=risk["id"],
        )
    finally:
        await server.stop(0)


async def test_the_command_writes_both_files_for_their_owner_only(
    summarised: Summarised,
) -> None:
    assert (
        f"summary of Patient/{summarised.patient_id} written to {summarised.pdf} and "
        f"{summarised.bundle} (FHIR document): active problems 3, medications 3, "
        "allergies and intolerances 1, results 8, vital signs 5, risk assessments 1"
    ) in summarised.output
    assert re.search(r"built from the export ledgered at leaf index \d+", summarised.output)
    for path in (summarised.pdf, summarised.bundle):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert summarised.pdf.read_bytes().startswith(b"%PDF-")


async def test_the_pdf_shows_the_record(summarised: Summarised) -> None:
    text = pdf_text(summarised.pdf)
    assert "Patient summary" in text
    assert f"Patient/{summarised.patient_id}" in text
    for value in (
        "Active problems LOINC 11450-4",
        "Type 2 diabetes mellitus without complications",
        "Medications LOINC 10160-0",
        "metformin hydrochloride 500 MG Oral Tablet",
        "Allergies and intolerances LOINC 48765-2",
        "Results (latest of each test) LOINC 30954-2",
        "Glucose [Mass/volume] in Serum or Plasma 163 mg/dL 2026-03-04 08:00 UTC",
        "Vital signs (latest of each) LOINC 8716-3",
        "Risk assessments (decision support, not a diagnosis)",
        "Diabetes progression",
        "disease progression: probability 42.5",
    ):
        assert value in text, value
    # The seeded glucose (141 mg/dL) is older than the one written after it.
    assert "141 mg/dL" not in text


async def test_the_document_is_valid_and_each_line_verifies_against_the_ledger(
    summarised: Summarised,
) -> None:
    document = json.loads(summarised.bundle.read_bytes())
    Bundle.model_validate(document)
    assert document_problems(document) == []
    entries = document["entry"]
    composition = entries[0]["resource"]
    shown = {
        f"{r['resourceType']}/{r['id']}"
        for section in composition["section"]
        for e in section.get("entry", [])
        if (resolved := resolve(e["reference"], entries)) is not None
        for r in [resolved["resource"]]
    }
    assert f"Observation/{summarised.glucose_id}" in shown
    assert f"AllergyIntolerance/{summarised.allergy_id}" in shown
    assert f"RiskAssessment/{summarised.risk_id}" in shown
    policy = TrustPolicy.parse([summarised.vkey], origin="platform.test/ledger")
    verified = verify_export(proven_entries(document), policy)
    proven = {f"{e.resource_type}/{e.resource_id}" for e in verified.entries}
    assert shown | {f"Patient/{summarised.patient_id}"} <= proven
    # And as a reader checks it, with the CLI and the log's key.
    done = await cli(
        "verify", "summary", str(summarised.bundle), "--vkey", summarised.vkey,
        "--origin", "platform.test/ledger",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "resource(s) behind its lines" in flat(done.stdout)


async def test_an_unknown_patient_exits_1_saying_so(summarised: Summarised) -> None:
    unknown = str(uuid.uuid4())
    out = summarised.folder / "unknown.pdf"
    done = await cli(
        "report", "summary", "--patient", unknown, "--out", str(out),
        "--record", summarised.address, "--token", summarised.writer,
    )  # fmt: skip
    assert done.exit_code == 1, done.output
    assert (
        f"✗ no summary of Patient/{unknown}: ExportPatient at {summarised.address}: NOT_FOUND"
    ) in flat(done.stderr)
    assert not out.exists()


async def test_another_hospital_without_consent_is_refused(summarised: Summarised) -> None:
    out = summarised.folder / "refused.pdf"
    done = await cli(
        "report", "summary", "--patient", summarised.patient_id, "--out", str(out),
        "--record", summarised.address, "--token", summarised.outsider,
    )  # fmt: skip
    assert done.exit_code == 1, done.output
    assert f"ExportPatient at {summarised.address}: PERMISSION_DENIED" in flat(done.stderr)
    assert not out.exists()


async def test_usage_errors_exit_2(summarised: Summarised) -> None:
    no_patient = await cli("report", "summary", "--out", "x.pdf", "--token", summarised.writer)
    assert no_patient.exit_code == 2
    assert "Missing option '--patient'" in flat(no_patient.output)
    no_token = await cli("report", "summary", "--patient", summarised.patient_id, "--out", "x.pdf")
    assert no_token.exit_code == 2
    assert "an access token is required" in flat(no_token.output)
    bad_id = await cli(
        "report", "summary", "--patient", "not an id!", "--out", str(summarised.folder / "b.pdf"),
        "--record", summarised.address, "--token", summarised.writer,
    )  # fmt: skip
    assert bad_id.exit_code == 1, bad_id.output
    assert "INVALID_ARGUMENT" in flat(bad_id.stderr)
    assert "patient_id" in flat(bad_id.stderr)
