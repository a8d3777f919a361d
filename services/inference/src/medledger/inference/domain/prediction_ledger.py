"""What a prediction leaves in the ledger: the committed document and the INFERENCE_MADE entry.

:func:`prediction_document` puts a prediction (model, the patient's inputs, the explanation
scored in one batch, the label) into the format the offline verifier reads
(:class:`medledger.verify.prediction.PredictionDocument`, docs/prediction-format.md), and
:func:`seal_prediction` commits to it with a fresh 32-byte salt and blinds the prediction's id
for the entry's resource (:func:`medledger.verify.blinding.prediction_blinding_salt`). The
entry itself carries no PHI: ``kind`` INFERENCE_MADE, ``resource`` RiskAssessment with the
blinded id and version 0, ``content_commitment``, no ``subject``; the actor, organisation,
purpose, time and trace are the service's to add. The salt and the document go to the caller
only, in the opening (:meth:`SealedPrediction.opening`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from medledger.api.ledger.v1 import ledger_pb2
from medledger.inference.domain.explain import Explanation
from medledger.inference.domain.model_definition import ModelDefinition, as_float32
from medledger.inference.domain.patient_inputs import PatientInputs
from medledger.verify.blinding import blinded_resource_id, prediction_blinding_salt
from medledger.verify.commitment import SALT_SIZE, commit
from medledger.verify.prediction import (
    RESOURCE_TYPE,
    RESOURCE_VERSION,
    SPACES,
    Code,
    FeatureInput,
    ModelRef,
    PredictionDocument,
    opening_json,
)

INFERENCE_MADE: Final = ledger_pb2.EVENT_KIND_INFERENCE_MADE


def instant(moment: datetime) -> str:
    """``moment`` as a FHIR instant in UTC with milliseconds (``2026-01-02T10:00:00.000Z``)."""
    if moment.tzinfo is None:
        raise ValueError("an instant is an aware datetime")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def prediction_document(
    model: ModelDefinition,
    inputs: PatientInputs,
    explanation: Explanation,
    *,
    prediction_id: str | None = None,
) -> PredictionDocument:
    """The document of one prediction; ``prediction_id`` a fresh UUID unless given (the
    RiskAssessment's identifier). ValueError when the explanation is not of these inputs
    against the model's reference, or the features do not match the model's."""
    names = tuple(v.feature.name for v in inputs.values)
    if names != model.feature_names:
        raise ValueError("the inputs are not the model's features")
    row = tuple(float(v) for v in inputs.row())
    if explanation.x != row or explanation.reference != tuple(
        float(v) for v in model.reference_row()
    ):
        raise ValueError("the explanation is not of these inputs against the model's reference")
    identifier = prediction_id if prediction_id is not None else str(uuid.uuid4())
    features = tuple(
        FeatureInput(
            name=value.feature.name,
            code=Code(value.feature.code.system, value.feature.code.code),
            value=value.value,
            unit=value.feature.unit,
            category=(
                None
                if value.category is None
                else Code(value.category.coding.system, value.category.coding.code)
            ),
            transform=value.feature.transform.value,
            sources=tuple(source.reference for source in value.sources),
            derivation=None if value.derivation is None else value.derivation.id,
        )
        for value in inputs.values
    )
    return PredictionDocument(
        prediction_id=identifier,
        made_at=instant(inputs.as_of),
        subject=inputs.subject,
        model=ModelRef(
            name=model.name,
            version=model.version,
            sha256=model.digest_hex,
            input=model.input_tensor,
            score_tensor=model.score.tensor,
            score_column=model.score.column,
            score_kind=model.score.kind.value,
        ),
        features=features,
        input_row=tuple(as_float32(v) for v in explanation.x),
        reference_row=tuple(as_float32(v) for v in explanation.reference),
        basis=tuple(source.reference for source in inputs.basis),
        score=explanation.score,
        base_score=explanation.base_score,
        contributions=explanation.contributions,
        contribution_space=SPACES[model.score.kind.value],
        label=model.label(explanation.score),
    )


@dataclass(frozen=True)
class SealedPrediction:
    """A document committed to: what the INFERENCE_MADE entry carries (``resource_type``,
    ``resource_id``, ``resource_version``, ``commitment``) and the ``salt`` that opens it."""

    document: PredictionDocument
    salt: bytes
    commitment: bytes
    resource_id: str
    resource_type: str = RESOURCE_TYPE
    resource_version: int = RESOURCE_VERSION
    kind: ledger_pb2.EventKind.ValueType = INFERENCE_MADE

    def opening(self, entry: bytes, receipt: ledger_pb2.Receipt) -> bytes:
        """The ``prediction.json`` the caller gets: the document, the salt, the exact entry
        bytes as appended and the entry's receipt."""
        return opening_json(self.document, self.salt, entry, receipt)


def seal_prediction(document: PredictionDocument, salt: bytes | None = None) -> SealedPrediction:
    """Commits to ``document`` with ``salt`` (a fresh one unless given: 32 bytes)."""
    secret = os.urandom(SALT_SIZE) if salt is None else salt
    return SealedPrediction(
        document=document,
        salt=secret,
        commitment=commit(secret, document.canonical()),
        resource_id=blinded_resource_id(
            prediction_blinding_salt(secret),
            RESOURCE_TYPE,
            document.prediction_id,
            RESOURCE_VERSION,
        ),
    )
