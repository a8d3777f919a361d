"""``medledger predict`` and ``medledger predict batch`` against real servers: the testkit
platform's identity and ledger, a record service, an inference service, secantusdb, OpenBao and
one tritonserver for the module serving freshly built models. A hospital app writes its own
patients' Observations, scores them through the CLI (the bar chart, the RiskAssessment and the
leaf), saves the opening and `medledger verify prediction` checks it offline against the
ledger's key and the ONNX file; a batch reports each patient's error and goes on; another
organisation without consent and a patient lacking a feature exit 1 with the reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.demo_records import FNA_CYTOLOGY, FNA_ROW_5
from medledger.cli.main import app
from medledger.cli.models import read_model
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.devstack.triton import TritonServer
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.runtime import from_settings as inference_from_settings
from medledger.testkit.fhir_samples import measured_observation
from medledger.testkit.models import serving_models
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.record_server import start_record_server
from medledger.testkit.tokens import authed_channel

pytestmark = pytest.mark.triton

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})
TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
DIABETES, BREAST = "diabetes-progression", "breast-cancer-malignancy"
LOINC = "http://loinc.org"
MEASURED = (
    ("39156-5", 31.2, "kg/m2"),
    ("8478-0", 101, "mm[Hg]"),
    ("2093-3", 221, "mg/dL"),
    ("13457-7", 139.6, "mg/dL"),
    ("2085-9", 41, "mg/dL"),
    ("2571-8", 2.1, "mmol/L"),
    ("2345-7", 7.4, "mmol/L"),
)


@dataclass
class Live:
    address: str
    repository: Path
    record: record_pb2_grpc.RecordServiceAsyncStub  # hospital A's app
    a_token: str
    b_token: str
    vkey: str

    async def predict(self, *args: str, token: str | None = None) -> Result:
        """``medledger predict ARGS`` in a thread (the command runs its own event loop; the
        services run on the test's)."""
        argv = ["predict", *args, "--inference", self.address, "--token", token or self.a_token]
        return await asyncio.to_thread(runner.invoke, app, argv)

    async def cli(self, *args: str) -> Result:
        return await asyncio.to_thread(runner.invoke, app, list(args))


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TritonServer]]:
    with serving_models(tmp_path_factory, "predict-cli") as served:
        yield served


@pytest.fixture(scope="module")
async def live(
    triton: tuple[Path, TritonServer], auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[Live]:
    repository, tritonserver = triton
    platform = auth_platform
    suffix = uuid.uuid4().hex[:8]
    record = await start_record_server(platform, mongo_server, vault_server, f"clipredrec{suffix}")
    inference = ServiceServer(
        inference_from_settings(
            InferenceSettings(grpc_port=0),
            InferenceConfig(model_repository=repository),
            TritonSettings(url=tritonserver.grpc_url, timeout_seconds=10),
            MongoSettings(
                MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"clipredinf{suffix}"
            ),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("inference")),
            PeerSettings(
                identity_addr=platform.identity_address,
                ledger_addr=platform.ledger_address,
                record_addr=f"127.0.0.1:{record.port}",
            ),
        )
    )
    await inference.start()
    address = f"127.0.0.1:{inference.port}"
    admin = await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
    a_token = await platform.token("system/*.cruds inference.predict", "hospital-a", [TREAT])
    b_token = await platform.token("system/*.rs inference.predict", "hospital-b", [TREAT])
    reader = await platform.token("ledger.read", "hospital-a")
    channels = [
        authed_channel(address, admin),
        authed_channel(f"127.0.0.1:{record.port}", a_token),
        authed_channel(platform.ledger_address, reader),
    ]
    admin_stub = inference_pb2_grpc.InferenceServiceStub(channels[0])
    for name in (DIABETES, BREAST):
        await admin_stub.RegisterModel(
            inference_pb2.RegisterModelRequest(model=read_model(name, 1, repository=repository))
        )
    ledger = ledger_pb2_grpc.LedgerServiceStub(channels[2])
    vkey = (await ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    try:
        yield Live(
            address=address,
            repository=repository,
            record=record_pb2_grpc.RecordServiceStub(channels[1]),
            a_token=a_token,
            b_token=b_token,
            vkey=vkey,
        )
    finally:
        for channel in channels:
            await channel.close(None)
        await inference.stop(0)
        await record.stop(0)


async def create(live: Live, resource: dict[str, Any]) -> str:
    reply = await live.record.CreateResource(
        record_pb2.CreateResourceRequest(resource_json=json.dumps(resource), purpose=TREAT)
    )
    return str(reply.resource.id)


async def diabetes_patient(live: Live, *, skip: tuple[str, ...] = ()) -> str:
    patient_id = await create(
        live, {"resourceType": "Patient", "gender": "female", "birthDate": "1961-08-08"}
    )
    for code, value, unit in MEASURED:
        if code not in skip:
            await create(live, measured_observation(patient_id, LOINC, code, value, unit))
    return patient_id


async def cytology_patient(live: Live) -> str:
    """A patient with the demo's FNA cytology measurements (load_breast_cancer row 5)."""
    patient_id = await create(
        live, {"resourceType": "Patient", "gender": "female", "birthDate": "1960-12-26"}
    )
    for code, _display, unit, value in FNA_ROW_5:
        await create(live, measured_observation(patient_id, FNA_CYTOLOGY, code, value, unit))
    return patient_id


def words(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


async def test_predict_prints_the_chart_and_the_opening_verifies(
    live: Live, tmp_path: Path
) -> None:
    patient_id = await diabetes_patient(live)
    opening, receipt = tmp_path / "prediction.json", tmp_path / "r.json"
    shown = await live.predict(
        "--model",
        DIABETES,
        "--patient",
        patient_id,
        "--purpose",
        "TREAT",
        "--opening-out",
        str(opening),
        "--receipt-out",
        str(receipt),
    )
    assert shown.exit_code == 0, shown.output
    out = words(shown.stdout)
    assert f"{DIABETES} v1 for Patient/{patient_id}" in out
    assert "contributions, largest first" in out
    assert "contributions add up to score − base score" in out  # noqa: RUF001
    assert "in the score's own units" in out
    assert "31.2 kg/m2" in out  # BMI with its unit
    assert "(coded)" in out  # sex
    assert "█" in shown.stdout
    assert "written to the record as RiskAssessment/" in out
    assert "ledgered as INFERENCE_MADE at leaf index" in out
    # The rows are sorted by the contribution's magnitude.
    rows = [
        line
        for line in shown.stdout.splitlines()
        if line.startswith("│") and ("█" in line or "·" in line)  # a bar, or none for 0
    ]
    magnitudes = [abs(float(r.replace("│", " ").split()[-2])) for r in rows]
    assert len(rows) == 10
    assert magnitudes == sorted(magnitudes, reverse=True)

    # --json: the answer itself; the base plus the contributions is the score.
    as_json = await live.predict("--model", DIABETES, "--patient", patient_id, "--json")
    reply = json.loads(as_json.stdout)
    total = reply["baseScore"] + sum(c.get("contribution", 0.0) for c in reply["contributions"])
    assert total == pytest.approx(reply["score"], rel=1e-9, abs=1e-9)
    assert reply["contributionSpace"] == "CONTRIBUTION_SPACE_SCORE"

    # The opening verifies offline, with the ONNX file; the receipt too.
    onnx = live.repository / DIABETES / "1" / "model.onnx"
    verified = await live.cli(
        "verify", "prediction", str(opening), "--vkey", live.vkey, "--model", str(onnx)
    )
    assert verified.exit_code == 0, verified.output
    assert f"verifies: {DIABETES} version 1" in words(verified.stdout)
    checked = await live.cli("verify", "receipt", str(receipt), "--vkey", live.vkey)
    assert checked.exit_code == 0, checked.output

    # The RiskAssessment is in the patient's record.
    risk_id = out.split("RiskAssessment/")[1].split(";")[0]
    risk = await live.record.GetResource(
        record_pb2.GetResourceRequest(resource_type="RiskAssessment", id=risk_id, purpose=TREAT)
    )
    assert json.loads(risk.resource.resource_json)["subject"]["reference"] == (
        f"Patient/{patient_id}"
    )


async def test_breast_cancer_on_the_demo_cytology(live: Live) -> None:
    patient_id = await cytology_patient(live)
    shown = await live.predict("--model", BREAST, "--patient", f"Patient/{patient_id}")
    assert shown.exit_code == 0, shown.output
    out = words(shown.stdout)
    assert "label malignant" in out  # row 5 is a malignant aspirate
    assert "in probability" in out
    assert "741.6 {image-area}" in out


async def test_refusals_exit_1_with_the_reason(live: Live) -> None:
    lacking = await diabetes_patient(live, skip=("2093-3",))
    missing = await live.predict("--model", DIABETES, "--patient", lacking)
    assert missing.exit_code == 1, missing.output
    assert "FAILED_PRECONDITION" in missing.stderr
    assert "s1" in missing.stderr  # the feature named
    complete = await diabetes_patient(live)
    denied = await live.predict("--model", DIABETES, "--patient", complete, token=live.b_token)
    assert denied.exit_code == 1, denied.output
    assert "PERMISSION_DENIED" in denied.stderr
    unknown = await live.predict("--model", "no-such-model", "--patient", complete)
    assert unknown.exit_code == 1
    assert "NOT_FOUND" in unknown.stderr
    usage = await live.predict("--model", DIABETES)
    assert usage.exit_code == 2
    assert "--patient" in usage.output


async def test_batch_reports_errors_and_a_summary(live: Live, tmp_path: Path) -> None:
    good = [await diabetes_patient(live) for _ in range(2)]
    lacking = await diabetes_patient(live, skip=("39156-5",))
    listing = tmp_path / "patients.txt"
    listing.write_text(f"# hospital A\nPatient/{good[1]}\n\n{lacking}\n")
    out = tmp_path / "results.jsonl"
    ran = await live.predict(
        "batch",
        "--model",
        DIABETES,
        "--patient",
        good[0],
        "--patients-file",
        str(listing),
        "--out",
        str(out),
    )
    assert ran.exit_code == 1, ran.output  # a patient failed
    assert f"Patient/{lacking}: FEATURES_UNUSABLE (bmi)" in words(ran.stderr)
    assert "3/3" in ran.stderr  # the progress bar, fed by the stream's progress
    summary = words(ran.stdout)
    assert "2 of 3 patient(s) scored, 1 failed" in summary
    assert f"results written to {out}" in summary
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["result"]["patientId"] for line in lines if "result" in line) == sorted(good)
    assert [line["error"]["patientId"] for line in lines if "error" in line] == [lacking]

    everyone = await live.predict("batch", "--model", DIABETES, "--patient", good[0])
    assert everyone.exit_code == 0, everyone.output
    assert "1 of 1 patient(s) scored, 0 failed" in words(everyone.stdout)
    nobody = await live.predict("batch", "--model", DIABETES)
    assert nobody.exit_code == 2
