"""The FHIR R4 resources a prediction writes to the record: a RiskAssessment and its AI
Provenance (HL7 AI Transparency on FHIR, http://hl7.org/fhir/uv/aitransparency).

Both are built from the committed prediction document (:mod:`.prediction_ledger`), so what
the record says is what the ledger committed to.

**RiskAssessment** (:func:`build_risk_assessment`), after the INFERENCE_MADE entry is
appended:

- ``meta.security``: v3-ObservationValue ``AIAST`` (Artificial Intelligence asserted);
- ``identifier``: the prediction's id (:data:`PREDICTION_IDENTIFIER_SYSTEM`,
  ``urn:uuid:<id>``), which the entry's blinded resource id hides;
- ``extension`` :data:`LEDGER_ENTRY_URL`: ``kind`` INFERENCE_MADE, ``leafIndex`` (decimal
  digits in a string: a uint64 is wider than FHIR R4's integers), ``leafHash`` (base64) and,
  when known, the log's ``origin``: the leaf that proves the prediction;
- ``status`` final, ``subject`` Patient/<id>, ``occurrenceDateTime`` the prediction's time;
- ``code``: the model's title; ``method``: the model, coded ``name|version`` in
  :data:`MODEL_CODE_SYSTEM`;
- ``performer``: the model as an AI Device, a logical reference by identifier
  (``urn:ietf:rfc:3986`` = ``urn:sha256:<ONNX SHA-256>``): the record keeps no Device
  resources, and the digest names exactly the file that scored;
- ``basis``: the versions read, ``Observation/<id>/_history/<v>`` (and the Patient's when age
  or sex was derived from it);
- ``prediction``: a classifier's ``probabilityDecimal`` (0 to 1, so ras-2's "at most 100"
  holds) of its positive outcome, with the label in ``rationale``; a regression's value in
  the :data:`PREDICTED_VALUE_URL` extension (``valueDecimal``), as R4's prediction has no
  quantity, its meaning in ``outcome.text``;
- ``note``: the model, the explanation's space and base score and the largest contributions
  by feature name; no name, identifier or value of the patient.

**AI Provenance** (:func:`build_ai_provenance`), written with the RiskAssessment in one
transaction Bundle (its target is ``RiskAssessment/<id>/_history/<version>``, version-specific
as FHIR recommends, which the record makes of the RiskAssessment's entry fullUrl; the
Patient is a target too, which is how the record files a Provenance in the patient's
compartment): ``reason`` AIAST, ``activity`` CREATE, one agent, the model's AI Device (type
``performer``, as the RiskAssessment names it, role ``Artificial-Intelligence`` as the
profile fixes it), on behalf of the requesting organisation when given; ``entity``: each
basis version with role ``source``, and the model card (role ``derivation``, a logical
reference to the card's DocumentReference by the model's identifier).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from medledger.inference.domain.model_definition import (
    MODEL_IDENTIFIER_SYSTEM,
    URI_SYSTEM,
    ModelDefinition,
    ScoreKind,
)
from medledger.inference.domain.prediction_ledger import instant
from medledger.verify.prediction import PredictionDocument

V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
AIAST: Final = {
    "system": V3_OBSERVATION_VALUE,
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
AI_TRANSPARENCY: Final = "http://hl7.org/fhir/uv/aitransparency"
AI_PROVENANCE_PROFILE: Final = f"{AI_TRANSPARENCY}/StructureDefinition/AI-Provenance"
AI_DEVICE_TYPES: Final = f"{AI_TRANSPARENCY}/CodeSystem/AIdeviceTypeCS"
PROVENANCE_PARTICIPANT_TYPE: Final = (
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
)
DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PREDICTION_IDENTIFIER_SYSTEM: Final = "https://medledger.dev/fhir/NamingSystem/prediction"
MODEL_CODE_SYSTEM: Final = "https://medledger.dev/fhir/CodeSystem/model"
ORGANIZATION_IDENTIFIER_SYSTEM: Final = "https://medledger.dev/fhir/NamingSystem/organization"
LEDGER_ENTRY_URL: Final = "https://medledger.dev/fhir/StructureDefinition/ledger-entry"
PREDICTED_VALUE_URL: Final = "https://medledger.dev/fhir/StructureDefinition/predicted-value"
INFERENCE_MADE: Final = "INFERENCE_MADE"
NOTED_CONTRIBUTIONS: Final = 3
"""How many of the largest contributions the note names."""
_RISK_ASSESSMENT_TARGET: Final = re.compile(
    r"RiskAssessment/[A-Za-z0-9\-.]{1,64}/_history/[1-9][0-9]*"
    r"|urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


@dataclass(frozen=True)
class LedgerLeaf:
    """The INFERENCE_MADE leaf of a prediction, from its receipt: index, leaf hash and the
    log's origin (the checkpoint's first line; None when unknown)."""

    leaf_index: int
    leaf_hash: bytes
    origin: str | None = None

    @classmethod
    def from_receipt(cls, leaf_index: int, leaf_hash: bytes, checkpoint: bytes) -> LedgerLeaf:
        first = checkpoint.split(b"\n", 1)[0].decode("utf-8", errors="strict") if checkpoint else ""
        return cls(leaf_index, leaf_hash, first or None)


def model_device(model: ModelDefinition) -> dict[str, Any]:
    """A logical reference to the model's AI Device: by the ONNX file's SHA-256."""
    return {
        "type": "Device",
        "identifier": {"system": URI_SYSTEM, "value": model.digest_uri},
        "display": f"{model.title} ({model.name} version {model.version})",
    }


def build_risk_assessment(
    model: ModelDefinition, document: PredictionDocument, leaf: LedgerLeaf
) -> dict[str, Any]:
    """The RiskAssessment of the prediction ``document`` made by ``model`` and ledgered at
    ``leaf`` (FHIR R4 JSON, without an id: the record assigns it)."""
    _check_model(model, document)
    ledger_parts: list[dict[str, Any]] = [
        {"url": "kind", "valueCode": INFERENCE_MADE},
        {"url": "leafIndex", "valueString": str(leaf.leaf_index)},
        {"url": "leafHash", "valueBase64Binary": base64.b64encode(leaf.leaf_hash).decode()},
    ]
    if leaf.origin:
        ledger_parts.append({"url": "origin", "valueString": leaf.origin})
    return {
        "resourceType": "RiskAssessment",
        "meta": {"security": [dict(AIAST)]},
        "extension": [{"url": LEDGER_ENTRY_URL, "extension": ledger_parts}],
        "identifier": [
            {
                "system": PREDICTION_IDENTIFIER_SYSTEM,
                "value": f"urn:uuid:{document.prediction_id}",
            }
        ],
        "status": "final",
        "method": {
            "coding": [
                {"system": MODEL_CODE_SYSTEM, "code": model.reference, "display": model.title}
            ],
            "text": f"{model.name} version {model.version}: {model.algorithm}",
        },
        "code": {"text": model.title},
        "subject": {"reference": document.subject},
        "occurrenceDateTime": document.made_at,
        "performer": model_device(model),
        "basis": [{"reference": reference} for reference in document.basis],
        "prediction": [_prediction(model, document)],
        "note": [{"text": _note(model, document, leaf)}],
    }


def build_ai_provenance(
    model: ModelDefinition,
    document: PredictionDocument,
    *,
    risk_assessment: str,
    recorded: datetime,
    organization: str | None = None,
) -> dict[str, Any]:
    """The AI Provenance of the RiskAssessment ``risk_assessment`` names (FHIR R4 JSON,
    without an id): ``RiskAssessment/<id>/_history/<version>`` when stored, or the ``urn:uuid:``
    fullUrl of its entry in the same transaction Bundle (the record makes that reference
    version-specific). ``recorded`` is when it is written, ``organization`` the requester's
    organisation id, if any."""
    _check_model(model, document)
    if not _RISK_ASSESSMENT_TARGET.fullmatch(risk_assessment):
        raise ValueError("a version-specific RiskAssessment reference or a urn:uuid: fullUrl")
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {"system": PROVENANCE_PARTICIPANT_TYPE, "code": "performer", "display": "Performer"}
            ]
        },
        "role": [
            {
                "coding": [
                    {
                        "system": AI_DEVICE_TYPES,
                        "code": "Artificial-Intelligence",
                        "display": "All kinds of Artificial Intelligence",
                    }
                ]
            }
        ],
        "who": model_device(model),
    }
    if organization:
        agent["onBehalfOf"] = {
            "type": "Organization",
            "identifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": organization},
        }
    entities: list[dict[str, Any]] = [
        {"role": "source", "what": {"reference": reference}} for reference in document.basis
    ]
    entities.append(
        {
            "role": "derivation",
            "what": {
                "type": "DocumentReference",
                "identifier": {"system": MODEL_IDENTIFIER_SYSTEM, "value": model.reference},
                "display": f"Model card: {model.title}",
            },
        }
    )
    return {
        "resourceType": "Provenance",
        "meta": {"profile": [AI_PROVENANCE_PROFILE], "security": [dict(AIAST)]},
        "target": [
            {"reference": risk_assessment},
            {"reference": document.subject},
        ],
        "occurredDateTime": document.made_at,
        "recorded": instant(recorded),
        "reason": [{"coding": [dict(AIAST)]}],
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [agent],
        "entity": entities,
    }


def _check_model(model: ModelDefinition, document: PredictionDocument) -> None:
    if (document.model.name, document.model.version, document.model.sha256) != (
        model.name,
        model.version,
        model.digest_hex,
    ):
        raise ValueError("the prediction was not made by this model")


def _prediction(model: ModelDefinition, document: PredictionDocument) -> dict[str, Any]:
    rule = model.label_rule
    rationale = f"score {document.score:.6g}, base score {document.base_score:.6g}"
    if document.label is not None and rule is not None:
        rationale += f"; label {document.label} ({rule.text})"
    if model.score.kind is ScoreKind.PROBABILITY:
        return {
            "outcome": {"text": rule.above if rule is not None else model.score.meaning},
            "probabilityDecimal": document.score,
            "rationale": rationale,
        }
    return {
        "extension": [{"url": PREDICTED_VALUE_URL, "valueDecimal": document.score}],
        "outcome": {"text": model.score.meaning},
        "rationale": rationale,
    }


def _note(model: ModelDefinition, document: PredictionDocument, leaf: LedgerLeaf) -> str:
    space = "probability" if document.contribution_space == "probability" else "score units"
    largest = _largest(document.features, document.contributions)
    return (
        f"Decision support by {model.name} version {model.version} (ONNX SHA-256 "
        f"{model.digest_hex}), not a diagnosis: weigh it with the clinical picture. "
        f"Contributions are exact baseline Shapley values against the model's reference, in "
        f"{space}: base score {document.base_score:.6g}; largest: {largest}. Prediction "
        f"{document.prediction_id}, ledgered as INFERENCE_MADE at leaf {leaf.leaf_index}."
    )


def _largest(features: Sequence[Any], contributions: Sequence[float]) -> str:
    ranked = sorted(
        zip((f.name for f in features), contributions, strict=True),
        key=lambda pair: -abs(pair[1]),
    )[:NOTED_CONTRIBUTIONS]
    return ", ".join(f"{name} {value:+.4g}" for name, value in ranked)
