"""``medledger verify prediction`` on real predictions in a real ledger.

Each prediction is made as Predict makes it, with the inference service's own domain code:
the models make models builds, a patient's record read into the model's row
(patient_inputs), scored and explained exactly through onnxruntime (explain), put into the
committed document and sealed (prediction_ledger); its INFERENCE_MADE entry is appended to a
real ledger service, and the opening written as Predict hands it to its caller. Some are
ledgered wrong on purpose: contributions changed before sealing, an entry of another kind, a
score the model does not give.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.main import app
from medledger.common.config import MongoSettings, ServiceSettings, VaultSettings
from medledger.common.errors import Unavailable
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.scopes import LEDGER_APPEND
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.inference.domain.explain import explain
from medledger.inference.domain.features import LOINC, UCUM
from medledger.inference.domain.model_definition import ModelDefinition, parse_model_card
from medledger.inference.domain.patient_inputs import build_patient_inputs
from medledger.inference.domain.prediction_ledger import prediction_document, seal_prediction
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.models.repository import build_models
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.note import SIG_ED25519, VerifierKey
from medledger.verify.prediction import PredictionDocument

ORIGIN = "prediction-cli.test/ledger"
PATIENT_ID = "hospital-a-1"
runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


@dataclass
class Predictions:
    files: dict[str, bytes]  # name -> prediction.json
    models: dict[str, bytes]  # model name -> ONNX file
    vkey: str


def record(model: ModelDefinition) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The demo's kind of record: the model's features at 1.3 times their reference where the
    record has them, blood pressure as a panel, age and sex from the Patient."""
    patient = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "meta": {"versionId": "1"},
        "gender": "female",
        "birthDate": "1961-08-08",
    }
    observations: list[dict[str, Any]] = []
    derived = {"30525-0", "46098-0", "8478-0", "9830-1"}
    for feature in model.features:
        if feature.code.code in derived:
            continue
        value = min(feature.feature.max_value, 1.3 * float(feature.feature.reference_value or 1))
        observations.append(
            {
                "resourceType": "Observation",
                "id": f"obs-{feature.index}",
                "meta": {"versionId": "1"},
                "status": "final",
                "code": {"coding": [{"system": feature.code.system, "code": feature.code.code}]},
                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                "effectiveDateTime": "2026-01-01T09:00:00Z",
                "valueQuantity": {"value": value, "unit": feature.unit},
            }
        )
    observations.append(
        {
            "resourceType": "Observation",
            "id": "bp",
            "meta": {"versionId": "1"},
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "effectiveDateTime": "2026-01-01T09:00:00Z",
            "component": [
                {
                    "code": {"coding": [{"system": LOINC, "code": code}]},
                    "valueQuantity": {"value": v, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
                }
                for code, v in (("8480-6", 141), ("8462-4", 88))
            ],
        }
    )
    return patient, observations


async def predict(model: ModelDefinition, onnx: bytes) -> PredictionDocument:
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])

    async def score(rows: NDArray[np.float32]) -> NDArray[Any]:
        (output,) = session.run([model.score.tensor], {model.input_tensor: rows})
        return np.asarray(output)[:, model.score.column]

    patient, observations = record(model)
    inputs = build_patient_inputs(
        model,
        patient_id=PATIENT_ID,
        patient=patient,
        observations=observations,
        now=datetime(2026, 1, 2, 10, tzinfo=UTC),
    )
    explanation = await explain(inputs.row(), model.reference_row(), score)
    return prediction_document(model, inputs, explanation)


@pytest.fixture(scope="module")
async def predictions(mongo_server: Any, vault_server: Any) -> AsyncIterator[Predictions]:
    vault = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger"))
    public = await VaultTransit(vault).public_keys("ledger-checkpoint")
    vkey = str(VerifierKey.for_key(ORIGIN, SIG_ED25519, public[max(public)]))
    server = ServiceServer(
        ledger_runtime(
            LedgerSettings(grpc_port=0),
            LedgerConfig(origin=ORIGIN, lease_ttl_seconds=2),
            MongoSettings(
                MONGODB_URI=mongo_server.uri,
                MEDLEDGER_MONGODB_DATABASE=f"pc-{uuid.uuid4().hex[:8]}",
            ),
            vault,
            verifier=TEST_TOKENS.verifier(),
        )
    )
    await server.start()
    client = LedgerClient(
        f"127.0.0.1:{server.port}", ServiceSettings(), token=TEST_TOKENS.source([LEDGER_APPEND])
    )
    built = {m.spec.name: m for m in build_models()}
    models = {name: parse_model_card(m.card) for name, m in built.items()}
    diabetes = await predict(models["diabetes-progression"], built["diabetes-progression"].onnx)
    cytology = await predict(
        models["breast-cancer-malignancy"], built["breast-cancer-malignancy"].onnx
    )
    bad_sum = replace(
        cytology, contributions=(cytology.contributions[0] + 0.01, *cytology.contributions[1:])
    )
    other_score = replace(
        cytology, score=cytology.score - 0.25, base_score=cytology.base_score - 0.25
    )
    documents = {
        "diabetes": (diabetes, ledger_pb2.EVENT_KIND_INFERENCE_MADE),
        "cytology": (cytology, ledger_pb2.EVENT_KIND_INFERENCE_MADE),
        "bad-sum": (bad_sum, ledger_pb2.EVENT_KIND_INFERENCE_MADE),
        "other-score": (other_score, ledger_pb2.EVENT_KIND_INFERENCE_MADE),
        "wrong-kind": (diabetes, ledger_pb2.EVENT_KIND_RECORD_CREATED),
    }
    files: dict[str, bytes] = {}
    try:
        for name, (document, kind) in documents.items():
            sealed = seal_prediction(document)
            # As Predict appends it: the entry built first, its exact bytes kept for the opening.
            entry = client.entry(
                LedgerEvent(
                    kind=kind,
                    actor="hospital-a-app",
                    organization="hospital-a",
                    resource_type=sealed.resource_type,
                    resource_id=sealed.resource_id,
                    resource_version=sealed.resource_version,
                    content_commitment=sealed.commitment,
                    purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
                )
            )
            entry_bytes = entry.SerializeToString(deterministic=True)
            for _ in range(100):  # until the sequencer holds its lease
                try:
                    receipt = await client.append_entry(entry)
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the ledger never took an append")
            assert receipt.leaf_hash == leaf_hash(entry_bytes)
            files[name] = sealed.opening(entry_bytes, receipt)
        yield Predictions(files, {name: m.onnx for name, m in built.items()}, vkey)
    finally:
        await client.aclose()
        await server.stop(0)


@dataclass
class Outcome:
    exit_code: int
    output: str  # whitespace collapsed: rich wraps lines and folds table cells


def verify(tmp_path: Path, predictions: Predictions, data: bytes, *options: str) -> Outcome:
    path = tmp_path / "prediction.json"
    path.write_bytes(data)
    result = runner.invoke(
        app, ["verify", "prediction", str(path), "--vkey", predictions.vkey, *options]
    )
    return Outcome(result.exit_code, " ".join(result.output.split()))


def model_file(tmp_path: Path, predictions: Predictions, name: str) -> str:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(predictions.models[name])
    return str(path)


@pytest.mark.parametrize(
    ("name", "model"),
    [("diabetes", "diabetes-progression"), ("cytology", "breast-cancer-malignancy")],
)
def test_a_prediction_verifies_and_its_model_reproduces_it(
    tmp_path: Path, predictions: Predictions, name: str, model: str
) -> None:
    result = verify(
        tmp_path,
        predictions,
        predictions.files[name],
        "--model",
        model_file(tmp_path, predictions, model),
        "--origin",
        ORIGIN,
    )
    assert result.exit_code == 0, result.output
    assert (
        f"✓ prediction {tmp_path / 'prediction.json'} verifies: {model} version 1" in result.output
    )
    assert "SHA-256 matches; onnxruntime scores the committed inputs" in result.output
    assert "INFERENCE_MADE RiskAssessment/" in result.output
    assert "by hospital-a-app (hospital-a)" in result.output
    if name == "diabetes":
        assert "mean-arterial-pressure" in result.output
        assert "age-from-birth-date" in result.output
    else:
        assert "label" in result.output
        assert "malignant" in result.output or "benign" in result.output


def test_without_a_model_the_file_is_not_checked(tmp_path: Path, predictions: Predictions) -> None:
    result = verify(tmp_path, predictions, predictions.files["diabetes"])
    assert result.exit_code == 0, result.output
    assert "not checked (no --model given)" in result.output


def test_one_changed_input_value_is_named(tmp_path: Path, predictions: Predictions) -> None:
    opening = json.loads(predictions.files["diabetes"])
    opening["prediction"]["features"][2]["value"] += 1  # the BMI
    result = verify(tmp_path, predictions, json.dumps(opening).encode())
    assert result.exit_code == 1
    assert "does NOT verify" in result.output
    assert "commitment check failed" in result.output


def test_a_wrong_model_file(tmp_path: Path, predictions: Predictions) -> None:
    other = model_file(tmp_path, predictions, "breast-cancer-malignancy")
    result = verify(tmp_path, predictions, predictions.files["diabetes"], "--model", other)
    assert result.exit_code == 1
    assert "model digest check failed" in result.output


def test_contributions_not_adding_up(tmp_path: Path, predictions: Predictions) -> None:
    result = verify(tmp_path, predictions, predictions.files["bad-sum"])
    assert result.exit_code == 1
    assert "contributions check failed" in result.output


def test_a_score_the_model_does_not_give(tmp_path: Path, predictions: Predictions) -> None:
    data = predictions.files["other-score"]
    assert verify(tmp_path, predictions, data).exit_code == 0  # consistent, and ledgered
    model = model_file(tmp_path, predictions, "breast-cancer-malignancy")
    result = verify(tmp_path, predictions, data, "--model", model)
    assert result.exit_code == 1
    assert "model output check failed" in result.output


def test_an_entry_of_another_kind(tmp_path: Path, predictions: Predictions) -> None:
    result = verify(tmp_path, predictions, predictions.files["wrong-kind"])
    assert result.exit_code == 1
    assert "ledger entry check failed" in result.output
    assert "RECORD_CREATED" in result.output


def test_what_is_not_an_opening(tmp_path: Path, predictions: Predictions) -> None:
    result = verify(tmp_path, predictions, b'{"resourceType": "Bundle"}')
    assert result.exit_code == 1
    assert "not a prediction opening" in result.output


def test_usage_errors_exit_2(tmp_path: Path, predictions: Predictions) -> None:
    data = predictions.files["diabetes"]
    assert verify(tmp_path, predictions, data, "--quorum", "1").exit_code == 2
    path = tmp_path / "p.json"
    path.write_bytes(data)
    bad_key = runner.invoke(app, ["verify", "prediction", str(path), "--vkey", "nonsense"])
    assert bad_key.exit_code == 2
    assert runner.invoke(app, ["verify", "prediction", str(tmp_path / "none.json")]).exit_code == 2
