"""What a prediction writes: the committed document and its INFERENCE_MADE commitment
(medledger.inference.domain.prediction_ledger), the RiskAssessment and the AI Provenance
(medledger.inference.domain.risk_assessment). Predictions are real: the models make models
builds, scored with onnxruntime on a demo-like record and explained exactly. Both resources
pass the record service's own validator, and neither holds the patient's name."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnxruntime
import pytest
from numpy.typing import NDArray

from medledger.inference.domain.explain import Explanation, explain
from medledger.inference.domain.features import LOINC, UCUM
from medledger.inference.domain.model_definition import ModelDefinition, parse_model_card
from medledger.inference.domain.patient_inputs import PatientInputs, build_patient_inputs
from medledger.inference.domain.prediction_ledger import (
    SealedPrediction,
    instant,
    prediction_document,
    seal_prediction,
)
from medledger.inference.domain.risk_assessment import (
    AI_PROVENANCE_PROFILE,
    LEDGER_ENTRY_URL,
    PREDICTED_VALUE_URL,
    PREDICTION_IDENTIFIER_SYSTEM,
    LedgerLeaf,
    build_ai_provenance,
    build_risk_assessment,
)
from medledger.models.repository import build_models
from medledger.record.domain.fhir_validation import validate_resource
from medledger.record.domain.resource_issues import ResourceInvalid
from medledger.verify.blinding import blinded_resource_id, prediction_blinding_salt
from medledger.verify.commitment import canonical_json, commit
from medledger.verify.prediction import PREDICTION_SCHEMA, PredictionDocument

PATIENT_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
SUBJECT = f"Patient/{PATIENT_ID}"
NOW = datetime(2026, 1, 2, 10, 0, 0, 123456, tzinfo=UTC)
FAMILY, GIVEN = "Oyelaran-Whitcombe", "Marisol"
LEAF = LedgerLeaf(4242, bytes(range(32)), "medledger.local/ledger")


class Scored:
    """One model: its definition and a score function on its ONNX file (onnxruntime)."""

    def __init__(self, card: dict[str, Any], onnx: bytes) -> None:
        self.model = parse_model_card(card)
        self.session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])

    async def score(self, rows: NDArray[np.float32]) -> NDArray[Any]:
        (output,) = self.session.run([self.model.score.tensor], {self.model.input_tensor: rows})
        return np.asarray(output)[:, self.model.score.column]

    def explain(self, inputs: PatientInputs) -> Explanation:
        return asyncio.run(explain(inputs.row(), self.model.reference_row(), self.score))


@pytest.fixture(scope="module")
def scored() -> dict[str, Scored]:
    return {m.spec.name: Scored(m.card, m.onnx) for m in build_models()}


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "meta": {"versionId": "1"},
        "name": [{"family": FAMILY, "given": [GIVEN]}],
        "gender": "male",
        "birthDate": "1958-03-14",
    }


def observation(
    resource_id: str, system: str, code: str, value: float, unit: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"versionId": "2"},
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": SUBJECT},
        "effectiveDateTime": "2026-01-01T09:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def diabetes_record() -> list[dict[str, Any]]:
    panel = observation("bp", LOINC, "85354-9", 0, "mm[Hg]")
    del panel["valueQuantity"]
    panel["component"] = [
        {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }
        for code, value in (("8480-6", 141), ("8462-4", 88))
    ]
    return [
        observation("bmi", LOINC, "39156-5", 33.1, "kg/m2"),
        panel,
        observation("chol", LOINC, "2093-3", 5.6, "mmol/L"),
        observation("hdl", LOINC, "2085-9", 1.1, "mmol/L"),
        observation("ldl", LOINC, "13457-7", 131, "mg/dL"),
        observation("tg", LOINC, "2571-8", 2.4, "mmol/L"),
        observation("glu", LOINC, "2345-7", 7.9, "mmol/L"),
    ]


def cytology_record(model: ModelDefinition, scale: float) -> list[dict[str, Any]]:
    return [
        observation(
            f"fna-{f.index}",
            f.code.system,
            f.code.code,
            min(f.feature.max_value, float(f.feature.reference_value or 0) * scale),
            f.unit,
        )
        for f in model.features
    ]


@pytest.fixture(scope="module")
def regression(scored: dict[str, Scored]) -> tuple[ModelDefinition, PredictionDocument]:
    one = scored["diabetes-progression"]
    inputs = build_patient_inputs(
        one.model,
        patient_id=PATIENT_ID,
        patient=patient(),
        observations=diabetes_record(),
        now=NOW,
    )
    return one.model, prediction_document(one.model, inputs, one.explain(inputs))


@pytest.fixture(scope="module")
def classifier(scored: dict[str, Scored]) -> tuple[ModelDefinition, PredictionDocument]:
    one = scored["breast-cancer-malignancy"]
    inputs = build_patient_inputs(
        one.model,
        patient_id=PATIENT_ID,
        patient=None,
        observations=cytology_record(one.model, 1.6),
        now=NOW,
    )
    return one.model, prediction_document(one.model, inputs, one.explain(inputs))


# -- the committed document --------------------------------------------------------------------


def test_the_document_of_a_regression(
    regression: tuple[ModelDefinition, PredictionDocument],
) -> None:
    model, document = regression
    assert document.model.name == "diabetes-progression"
    assert document.model.sha256 == model.digest_hex
    assert (document.model.input, document.model.score_tensor) == ("features", "progression")
    assert document.made_at == "2026-01-02T10:00:00.123Z"
    assert document.subject == SUBJECT
    assert document.contribution_space == "score"
    assert document.label is None
    assert math.isclose(
        document.base_score + math.fsum(document.contributions), document.score, abs_tol=1e-9
    )
    features = {f.name: f for f in document.features}
    # Converted to the card's units before the transform; ln of mg/dL for triglycerides.
    assert features["s1"].unit == "mg/dL"
    assert features["s1"].value == pytest.approx(5.6 * 38.665)
    assert features["s5"].transform == "ln"
    assert document.input_row[8] == float(np.float32(math.log(features["s5"].value)))
    assert features["age"].derivation == "age-from-birth-date"
    assert features["age"].sources == (f"{SUBJECT}/_history/1",)
    assert features["sex"].category is not None
    assert features["sex"].category.code == "male"
    assert features["bp"].sources == ("Observation/bp/_history/2",)
    assert document.basis[-1] == f"{SUBJECT}/_history/1"
    assert all(v == float(np.float32(v)) for v in document.input_row + document.reference_row)


def test_the_document_of_a_classifier(
    classifier: tuple[ModelDefinition, PredictionDocument],
) -> None:
    model, document = classifier
    assert document.model.score_kind == "probability"
    assert document.contribution_space == "probability"
    assert 0.5 < document.score < 1
    assert document.label == "malignant"
    assert document.reference_row == tuple(model.reference_row().tolist())
    assert all(f.derivation is None for f in document.features)


def test_the_document_reads_back_as_written(
    regression: tuple[ModelDefinition, PredictionDocument],
) -> None:
    _, document = regression
    text = json.dumps(document.to_json())
    assert PredictionDocument.from_json(json.loads(text)) == document
    assert json.loads(text)["schema"] == PREDICTION_SCHEMA


def test_sealing_commits_and_blinds(regression: tuple[ModelDefinition, PredictionDocument]) -> None:
    _, document = regression
    salt = bytes(range(32))
    sealed = seal_prediction(document, salt)
    assert sealed.commitment == commit(salt, canonical_json(document.to_json()))
    assert sealed.resource_type == "RiskAssessment"
    assert sealed.resource_version == 0
    assert sealed.resource_id == blinded_resource_id(
        prediction_blinding_salt(salt), "RiskAssessment", document.prediction_id, 0
    )
    fresh = seal_prediction(document)
    assert len(fresh.salt) == 32
    assert fresh.commitment != sealed.commitment
    assert fresh.resource_id != sealed.resource_id
    # The blinded id shows neither the prediction nor the patient.
    assert document.prediction_id not in sealed.resource_id
    assert isinstance(sealed, SealedPrediction)


def test_an_explanation_of_other_inputs_is_refused(scored: dict[str, Scored]) -> None:
    one = scored["diabetes-progression"]
    inputs = build_patient_inputs(
        one.model, patient_id=PATIENT_ID, patient=patient(), observations=diabetes_record(), now=NOW
    )
    other = one.explain(inputs)
    shifted = Explanation(
        tuple(v + 1 for v in other.x),
        other.reference,
        other.score,
        other.base_score,
        other.contributions,
    )
    with pytest.raises(ValueError, match="not of these inputs"):
        prediction_document(one.model, inputs, shifted)
    with pytest.raises(ValueError, match="not the model's features"):
        prediction_document(scored["breast-cancer-malignancy"].model, inputs, other)


def test_instants_are_utc_milliseconds() -> None:
    assert instant(NOW) == "2026-01-02T10:00:00.123Z"
    with pytest.raises(ValueError, match="aware"):
        instant(datetime(2026, 1, 2))


# -- the RiskAssessment ---------------------------------------------------------------------------


def stored(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource through the record's validator, as CreateResource would take it."""
    valid = validate_resource(json.dumps(resource))
    assert valid.patient_id == PATIENT_ID
    return valid.resource


def no_names(resource: dict[str, Any]) -> None:
    text = json.dumps(resource)
    assert FAMILY not in text
    assert GIVEN not in text


def test_the_risk_assessment_of_a_classifier(
    classifier: tuple[ModelDefinition, PredictionDocument],
) -> None:
    model, document = classifier
    risk = stored(build_risk_assessment(model, document, LEAF))
    no_names(risk)
    assert risk["status"] == "final"
    assert risk["subject"] == {"reference": SUBJECT}
    assert risk["occurrenceDateTime"] == document.made_at
    assert risk["meta"]["security"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "AIAST",
            "display": "Artificial Intelligence asserted",
        }
    ]
    (prediction,) = risk["prediction"]
    assert prediction["probabilityDecimal"] == document.score
    assert 0 <= prediction["probabilityDecimal"] <= 1  # ras-2: at most 100
    assert prediction["outcome"] == {"text": "malignant"}
    assert "label malignant" in prediction["rationale"]
    assert risk["method"]["coding"] == [
        {
            "system": "https://medledger.dev/fhir/CodeSystem/model",
            "code": "breast-cancer-malignancy|1",
            "display": model.title,
        }
    ]
    assert risk["performer"] == {
        "type": "Device",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:sha256:{model.digest_hex}"},
        "display": f"{model.title} (breast-cancer-malignancy version 1)",
    }
    assert [b["reference"] for b in risk["basis"]] == [
        f"Observation/fna-{i}/_history/2" for i in range(10)
    ]
    assert risk["identifier"] == [
        {"system": PREDICTION_IDENTIFIER_SYSTEM, "value": f"urn:uuid:{document.prediction_id}"}
    ]
    (ledger,) = risk["extension"]
    assert ledger == {
        "url": LEDGER_ENTRY_URL,
        "extension": [
            {"url": "kind", "valueCode": "INFERENCE_MADE"},
            {"url": "leafIndex", "valueString": "4242"},
            {"url": "leafHash", "valueBase64Binary": base64.b64encode(bytes(range(32))).decode()},
            {"url": "origin", "valueString": "medledger.local/ledger"},
        ],
    }
    (note,) = risk["note"]
    assert "leaf 4242" in note["text"]
    assert model.digest_hex in note["text"]


def test_the_risk_assessment_of_a_regression(
    regression: tuple[ModelDefinition, PredictionDocument],
) -> None:
    model, document = regression
    risk = stored(build_risk_assessment(model, document, LedgerLeaf(7, bytes(32))))
    no_names(risk)
    (prediction,) = risk["prediction"]
    assert "probabilityDecimal" not in prediction
    assert prediction["extension"] == [{"url": PREDICTED_VALUE_URL, "valueDecimal": document.score}]
    assert prediction["outcome"]["text"] == model.score.meaning
    assert [b["reference"] for b in risk["basis"]] == list(document.basis)
    assert risk["basis"][-1] == {"reference": f"{SUBJECT}/_history/1"}
    assert [p["url"] for p in risk["extension"][0]["extension"]] == [
        "kind",
        "leafIndex",
        "leafHash",
    ]


def test_the_records_validator_holds_ras_2_against_a_percentage(
    classifier: tuple[ModelDefinition, PredictionDocument],
) -> None:
    model, document = classifier
    risk = build_risk_assessment(model, document, LEAF)
    risk["prediction"][0]["probabilityDecimal"] = 150
    with pytest.raises(ResourceInvalid) as refused:
        validate_resource(json.dumps(risk))
    assert any("ras-2" in v.description for v in refused.value.violations)


def test_another_models_prediction_is_refused(
    classifier: tuple[ModelDefinition, PredictionDocument],
    regression: tuple[ModelDefinition, PredictionDocument],
) -> None:
    with pytest.raises(ValueError, match="not made by this model"):
        build_risk_assessment(regression[0], classifier[1], LEAF)


# -- the AI Provenance ----------------------------------------------------------------------------


def test_the_ai_provenance(regression: tuple[ModelDefinition, PredictionDocument]) -> None:
    model, document = regression
    recorded = datetime(2026, 1, 2, 10, 0, 1, tzinfo=UTC)
    provenance = build_ai_provenance(
        model,
        document,
        risk_assessment="RiskAssessment/ra-1/_history/1",
        recorded=recorded,
        organization="hospital-a",
    )
    valid = validate_resource(json.dumps(provenance))
    assert valid.patient_id == PATIENT_ID
    assert [str(m) for m in valid.compartment_members] == ["RiskAssessment/ra-1/_history/1"]
    no_names(provenance)
    assert provenance["meta"]["profile"] == [AI_PROVENANCE_PROFILE]
    assert provenance["target"][0] == {"reference": "RiskAssessment/ra-1/_history/1"}
    assert provenance["recorded"] == "2026-01-02T10:00:01.000Z"
    assert provenance["occurredDateTime"] == document.made_at
    assert provenance["reason"] == [{"coding": [provenance["meta"]["security"][0]]}]
    (agent,) = provenance["agent"]
    assert agent["type"]["coding"][0]["code"] == "performer"
    assert agent["role"][0]["coding"][0]["code"] == "Artificial-Intelligence"
    assert agent["who"]["identifier"]["value"] == model.digest_uri
    assert agent["onBehalfOf"]["identifier"]["value"] == "hospital-a"
    sources = [e["what"]["reference"] for e in provenance["entity"] if e["role"] == "source"]
    assert sources == list(document.basis)
    (card,) = [e for e in provenance["entity"] if e["role"] == "derivation"]
    assert card["what"]["identifier"]["value"] == "diabetes-progression|1"
    # In a transaction Bundle: the RiskAssessment entry's fullUrl.
    entry = "urn:uuid:0b6f6b59-5d43-4a47-9d4c-3c1f2b9e8a10"
    without = build_ai_provenance(model, document, risk_assessment=entry, recorded=recorded)
    assert "onBehalfOf" not in without["agent"][0]
    assert without["target"][0] == {"reference": entry}
    for wrong in (
        "RiskAssessment/ra-1",
        "RiskAssessment/ra-1/_history/0",
        "Observation/x/_history/1",
    ):
        with pytest.raises(ValueError, match="version-specific"):
            build_ai_provenance(model, document, risk_assessment=wrong, recorded=recorded)
