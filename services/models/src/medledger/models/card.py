"""Model cards: a JSON card for machines, its Markdown rendering for people, both reproducible.

The JSON card is what the inference service needs to use a model correctly: the ONNX file's
SHA-256, the tensors, what the score means, each feature's code, unit, plausible range and
explanation reference, and how contributions add up. HL7 "AI Transparency on FHIR" carries a
model card as a DocumentReference (profile AI-ModelCard, category "Markdown Format": a Hugging
Face style card) referenced from the AI Device that produced a result; the card's
``ai_transparency`` section holds both resources, filled from the card's own fields.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from importlib.metadata import version
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime

from medledger.models.catalogue import ModelSpec, Tensor
from medledger.models.features import Feature
from medledger.models.training import SEED, TrainedModel, log_odds_coefficients

CARD_SCHEMA: Final = "https://medledger.dev/schemas/model-card/v1"
AI_TRANSPARENCY: Final = "http://hl7.org/fhir/uv/aitransparency"
AI_DEVICE_TYPES: Final = f"{AI_TRANSPARENCY}/CodeSystem/AIdeviceTypeCS"
AI_INPUTS: Final = f"{AI_TRANSPARENCY}/CodeSystem/AIinputsCS"
MODEL_IDENTIFIERS: Final = "https://medledger.dev/fhir/NamingSystem/model"
MANUFACTURER: Final = "medledger"
_SOFTWARE: Final = ("scikit-learn", "skl2onnx", "onnx", "numpy", "scipy")

_INTENDED_USE: Final = {
    "diabetes-progression": (
        "Demonstrates explained, provable clinical decision support in medledger: from ten"
        " baseline measurements of an adult with diabetes it predicts how far the disease will"
        " have progressed one year later, on the source study's scale, for a clinician to weigh"
        " alongside their own judgement."
    ),
    "breast-cancer-malignancy": (
        "Demonstrates explained, provable clinical decision support in medledger: from ten"
        " nuclear measurements of a digitised fine-needle aspirate of a breast mass it"
        " estimates the probability that the mass is malignant, for a clinician to weigh"
        " alongside cytology, imaging and their own judgement."
    ),
}
_OUT_OF_SCOPE: Final = (
    "Diagnosis, triage or treatment decisions without a clinician: the model is not a"
    " certified medical device and was not validated prospectively.",
    "Patients unlike the training population (see training_data), children, or inputs"
    " outside each feature's plausible range (refused) or training range (extrapolation).",
)


def _limitations(trained: TrainedModel) -> list[str]:
    metrics, comparison = trained.metrics, trained.comparison
    if trained.spec.name == "diabetes-progression":
        return [
            f"Trained on {len(trained.y_train)} patients from one study (Efron et al. 2004); the"
            " population's demographics beyond age and sex are not documented.",
            f"It explains under half of the outcome's variance (held-out R2 {metrics['r2']:.2f};"
            f" a linear regression scores {comparison['r2_linear_regression']:.2f} on the same"
            f" split): individual predictions are uncertain (held-out MAE {metrics['mae']:.0f}).",
            "The outcome is a study-specific progression score, not a clinical quantity such as"
            " HbA1c.",
            "The data set does not document the sex coding: 1 = female, 2 = male is inferred"
            " from HDL cholesterol.",
            "The triglyceride feature is 'possibly log of serum triglycerides' in the source;"
            " ln(mg/dL) is inferred from the Friedewald relation, which it satisfies.",
            "A tree ensemble is flat outside the training range: values beyond it get the"
            " prediction of the nearest edge, and contributions are step functions.",
        ]
    return [
        f"Trained on {len(trained.y_train)} fine-needle aspirates from one institution"
        " (University of Wisconsin Hospitals, early 1990s); performance elsewhere is unknown.",
        "The features come from the source study's image digitisation and nucleus"
        " segmentation; measurements from another pipeline are not comparable. Lengths and"
        " areas are in image units, with no physical scale.",
        "Uses 10 of the data set's 30 features (the 'worst' ones) so that exact per-feature"
        " contributions can be computed for every prediction; on the same split all 30 score"
        f" a held-out ROC AUC of {comparison['roc_auc_all_30_features']:.3f} against"
        f" {metrics['roc_auc']:.3f} for these 10.",
        f"Calibration was checked only on the {len(trained.y_test)} held-out aspirates (Brier"
        f" score {metrics['brier_score']:.3f}).",
        "It is not a screening test and says nothing about tumour grade or stage.",
    ]


def _rounded(value: float, digits: int = 6) -> float:
    """Metrics and informative values to a few significant digits (the JSON stays small);
    counts stay integers."""
    if isinstance(value, int) or value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def _tensor(tensor: Tensor) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "dims": [-1, *tensor.dims]}


def _observation_value(feature: Feature, model_input: float) -> float:
    return math.exp(model_input) if feature.transform == "ln" else model_input


def _features(trained: TrainedModel) -> list[dict[str, Any]]:
    reference = trained.reference
    low = trained.x_train.min(axis=0)
    high = trained.x_train.max(axis=0)
    rows = []
    for index, feature in enumerate(trained.spec.features):
        row: dict[str, Any] = {
            "index": index,
            "name": feature.name,
            "description": feature.description,
            "code": feature.code.to_fhir(),
            "unit": feature.unit,
            "transform": feature.transform,
            "plausible_range": {"low": float(feature.low), "high": float(feature.high)},
            "training_range": {
                "low": _rounded(_observation_value(feature, float(low[index]))),
                "high": _rounded(_observation_value(feature, float(high[index]))),
            },
            "reference": {
                "model_input": float(reference[index]),
                "value": _rounded(_observation_value(feature, float(reference[index]))),
            },
        }
        if feature.categories:
            row["categories"] = [
                {"coding": coding.to_fhir(), "model_input": value}
                for coding, value in feature.categories
            ]
        if feature.molar_mass is not None:
            row["molar_mass_g_per_mol"] = feature.molar_mass
        rows.append(row)
    return rows


def _output(spec: ModelSpec) -> dict[str, Any]:
    score = spec.score
    output: dict[str, Any] = {
        "score": {
            "tensor": score.tensor,
            "column": score.column,
            "kind": score.kind,
            "meaning": score.meaning,
        }
    }
    if score.kind == "probability":
        output["score"]["range"] = [0.0, 1.0]
    if score.label_tensor is not None:
        output["label"] = {
            "tensor": score.label_tensor,
            "column": 0,
            "values": {str(i): label for i, label in enumerate(score.labels)},
            "rule": f"{len(score.labels) - 1} ({score.labels[-1]}) when the score is above 0.5",
        }
    return output


def _explanation(trained: TrainedModel, base_score: float) -> dict[str, Any]:
    spec = trained.spec
    n = len(spec.features)
    space = "probability" if spec.score.kind == "probability" else "the score's own units"
    explanation: dict[str, Any] = {
        "method": "exact baseline Shapley values",
        "reference": "each feature's median over the training split"
        " (features[].reference.model_input)",
        "base_score": base_score,
        "base_score_note": "f(reference) as onnxruntime computed it at build time; a server's"
        " ONNX Runtime may differ in the last float32 digit (tree sums in another order), so"
        " exact additivity needs f(reference) from the same batch as the patient's mixes",
        "space": space,
        "additivity": "the contributions sum to score - base_score",
        "evaluations": 2**n,
        "procedure": f"evaluate the served model once on all 2^{n} mixes of the patient's"
        " inputs and the reference (one batch); contribution_i = sum over subsets S without"
        " i of |S|! (n-|S|-1)! / n! * (f(S + i) - f(S)).",
    }
    if spec.task == "binary-classification":
        intercept, coefficients = log_odds_coefficients(trained)
        explanation["log_odds"] = {
            "exact": True,
            "why": "the model is linear in log-odds, so coefficient_i * (x_i - reference_i)"
            " are its exact Shapley values in that space",
            "additivity": "the log-odds contributions sum to logit(score) - logit(base_score)",
            "intercept": intercept,
            "coefficients": {
                feature.name: float(value)
                for feature, value in zip(spec.features, coefficients, strict=True)
            },
        }
    return explanation


def _model(spec: ModelSpec, trained: TrainedModel, onnx_bytes: bytes) -> dict[str, Any]:
    graph = onnx.load_model_from_string(onnx_bytes)
    return {
        "name": spec.name,
        "version": spec.version,
        "title": spec.title,
        "algorithm": spec.algorithm,
        "hyperparameters": trained.hyperparameters,
        "seed": SEED,
        "file": "model.onnx",
        "format": "ONNX",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "bytes": len(onnx_bytes),
        "ir_version": graph.ir_version,
        "opset_import": {entry.domain or "ai.onnx": entry.version for entry in graph.opset_import},
        "producer": f"{graph.producer_name} {graph.producer_version}",
        "software": {name: version(name) for name in _SOFTWARE},
        "inputs": [_tensor(t) for t in spec.inputs],
        "outputs": [_tensor(t) for t in spec.outputs],
        "triton": {
            "production": "backend onnxruntime, "
            + ("KIND_GPU" if spec.runs_on_gpu else "KIND_CPU (ORT tree operators are CPU only)"),
            "local": "backend python: model.py runs model.onnx with onnxruntime",
        },
    }


def model_card(trained: TrainedModel, onnx_bytes: bytes, base_score: float) -> dict[str, Any]:
    """The JSON model card (without its ``ai_transparency`` section, see ``with_fhir``)."""
    spec = trained.spec
    data = trained.data
    return {
        "schema": CARD_SCHEMA,
        "model": _model(spec, trained, onnx_bytes),
        "intended_use": _INTENDED_USE[spec.name],
        "out_of_scope_use": list(_OUT_OF_SCOPE),
        "training_data": {
            "name": data.name,
            "loader": data.loader,
            "citation": data.citation,
            "rows": data.rows,
            "target": data.target,
            "split": trained.split,
            "training_rows": len(trained.y_train),
            "held_out_rows": len(trained.y_test),
        },
        "metrics": {
            "held_out": {k: _rounded(v) for k, v in trained.metrics.items()},
            "cross_validation_on_training_split": {
                k: _rounded(v) for k, v in trained.cross_validation.items()
            },
            "alternatives_on_the_same_split": {
                k: _rounded(v) for k, v in trained.comparison.items()
            },
        },
        "limitations": _limitations(trained),
        "features": _features(trained),
        "output": _output(spec),
        "explanation": _explanation(trained, base_score),
    }


def _yaml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def markdown(card: dict[str, Any]) -> str:
    """A Hugging Face style card (YAML front matter, then Markdown), the format AI
    Transparency on FHIR names "Markdown Format"."""
    model = card["model"]
    task = (
        "tabular-regression"
        if card["output"]["score"]["kind"] == "regression"
        else ("tabular-classification")
    )
    held_out = card["metrics"]["held_out"]
    lines = [
        "---",
        "library_name: sklearn",
        "tags:",
        f"- {task}",
        "- onnx",
        "- medledger",
        "model-index:",
        f"- name: {model['name']}",
        "  results:",
        "  - task:",
        f"      type: {task}",
        "    dataset:",
        f"      name: {_yaml_string(card['training_data']['name'])}",
        "      type: scikit-learn",
        "      split: held-out",
        "    metrics:",
    ]
    for name, value in held_out.items():
        lines += [f"    - type: {name}", f"      value: {value}"]
    lines += ["---", "", f"# {model['title']} (`{model['name']}`, version {model['version']})", ""]
    lines += [
        f"ONNX file `{model['file']}`, SHA-256 `{model['sha256']}`, {model['bytes']} bytes;"
        f" {model['algorithm']}; trained with seed {model['seed']}.",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Out of scope",
        "",
        *[f"- {item}" for item in card["out_of_scope_use"]],
        "",
        "## Training data",
        "",
        f"{card['training_data']['name']}: {card['training_data']['rows']} rows"
        f" ({card['training_data']['training_rows']} for training,"
        f" {card['training_data']['held_out_rows']} held out; {card['training_data']['split']})."
        f" {card['training_data']['citation']}",
        "",
        "## Held-out metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in held_out.items()],
        "",
        "## Features",
        "",
        "| # | feature | code | unit | plausible range | reference |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for feature in card["features"]:
        code = feature["code"]
        lines.append(
            f"| {feature['index']} | {feature['name']} | {code['code']} {code['display']}"
            f" | {feature['unit'] or 'coded'} | {feature['plausible_range']['low']} to"
            f" {feature['plausible_range']['high']} | {feature['reference']['value']} |"
        )
    score = card["output"]["score"]
    explanation = card["explanation"]
    lines += [
        "",
        "## Output and explanations",
        "",
        f"Score: `{score['tensor']}[:, {score['column']}]`, {score['meaning'].lower()}.",
        f"Contributions: {explanation['method']} in {explanation['space']} against the"
        f" reference; {explanation['additivity']} (base score {explanation['base_score']}).",
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def _ai_kind(code: str, display: str) -> dict[str, Any]:
    return {
        "url": f"{AI_TRANSPARENCY}/StructureDefinition/aitransparency.AIKind",
        "valueCodeableConcept": {
            "coding": [{"system": AI_DEVICE_TYPES, "code": code, "display": display}]
        },
    }


def with_fhir(card: dict[str, Any], card_markdown: str) -> dict[str, Any]:
    """The card with its AI Transparency resources: the AI Device that makes predictions and
    the Model-Card DocumentReference carrying the Markdown card. Whoever stores them links the
    Device to the DocumentReference (extension aitransparency.modelCardDescription)."""
    model = card["model"]
    markdown_bytes = card_markdown.encode()
    identifiers = [
        {"system": MODEL_IDENTIFIERS, "value": f"{model['name']}|{model['version']}"},
        {"system": "urn:ietf:rfc:3986", "value": f"urn:sha256:{model['sha256']}"},
    ]
    device = {
        "resourceType": "Device",
        "meta": {"profile": [f"{AI_TRANSPARENCY}/StructureDefinition/AI-Device"]},
        "extension": [
            _ai_kind("Machine-Learning-Models", "Machine Learning Models"),
            _ai_kind("Deterministic-AI", "Deterministic AI"),
            _ai_kind("AI-for-Structured-Clinical-Data", "Structured Clinical Data"),
        ],
        "identifier": identifiers,
        "type": {
            "coding": [
                {
                    "system": AI_DEVICE_TYPES,
                    "code": "Artificial-Intelligence",
                    "display": "All kinds of Artificial Intelligence",
                }
            ]
        },
        "manufacturer": MANUFACTURER,
        "deviceName": [
            {"name": model["title"], "type": "user-friendly-name"},
            {"name": model["name"], "type": "model-name"},
        ],
        "modelNumber": model["name"],
        "version": [{"value": str(model["version"])}],
    }
    document = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [f"{AI_TRANSPARENCY}/StructureDefinition/AI-ModelCard"]},
        "identifier": identifiers,
        "status": "current",
        "type": {
            "coding": [{"system": AI_INPUTS, "code": "AIModelCard", "display": "AI Model-Card"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": AI_INPUTS,
                        "code": "AIModelCardMarkdownFormat",
                        "display": "Markdown Format",
                    }
                ]
            }
        ],
        "description": card_markdown,
        "content": [
            {
                "attachment": {
                    "contentType": "text/markdown",
                    "data": base64.b64encode(markdown_bytes).decode(),
                    "size": len(markdown_bytes),
                    # FHIR R4 Attachment.hash is the base64 SHA-1 of the data.
                    "hash": base64.b64encode(hashlib.sha1(markdown_bytes).digest()).decode(),  # noqa: S324
                    "title": f"Model card: {model['title']}",
                }
            }
        ],
    }
    return {
        **card,
        "ai_transparency": {
            "implementation_guide": f"{AI_TRANSPARENCY} (STU1 ballot)",
            "device": device,
            "model_card_document": document,
        },
    }


def card_json(card: dict[str, Any]) -> bytes:
    return (json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def base_score(trained: TrainedModel, onnx_bytes: bytes) -> float:
    """f(reference): the model's score at the explanation baseline, run by onnxruntime."""
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    spec = trained.spec
    outputs = session.run([spec.score.tensor], {spec.inputs[0].name: trained.reference[None, :]})
    return float(np.asarray(outputs[0])[0, spec.score.column])
