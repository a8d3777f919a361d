"""Predict: one patient scored by a registered model, explained, ledgered and written back.

1. The model version must be registered, and Triton must serve exactly it: the file Triton
   loads hashes to the registered digest (FAILED_PRECONDITION MODEL_DIGEST_MISMATCH or
   MODEL_NOT_SERVED otherwise).
2. The patient's record is read through the record service with the caller's own token and
   purpose (:class:`PatientRecords`): CheckAccess decides, and the reads are ledgered as the
   caller's, so a prediction is denied without consent as a direct read would be.
3. The model's inputs are built (:mod:`.patient_inputs`; FAILED_PRECONDITION naming every
   unusable feature), then the patient's row and its 2^n mixes with the reference row go
   through Triton in one batch (:mod:`.explain`): the score, the base score and exact
   contributions from the same call.
4. The INFERENCE_MADE entry (model digest, salted commitment to inputs and output, no
   subject) is appended first (:mod:`.prediction_ledger`); nothing is written when the ledger
   does not answer.
5. The RiskAssessment (citing the entry's leaf) and its AI Provenance are written to the
   record with the caller's token, under idempotency keys derived from the prediction id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MedledgerError,
)
from medledger.inference.domain.explain import Explanation, explain_batch
from medledger.inference.domain.features import Coding
from medledger.inference.domain.model_definition import (
    ModelCardInvalid,
    ModelDefinition,
    parse_model_card,
)
from medledger.inference.domain.patient_inputs import (
    PatientInputs,
    build_patient_inputs,
    needs_patient,
    search_codes,
)
from medledger.inference.domain.prediction_ledger import (
    SealedPrediction,
    prediction_document,
    seal_prediction,
)
from medledger.inference.domain.registry import ModelFiles, ModelRegistry, RegisteredModel
from medledger.inference.domain.risk_assessment import (
    LedgerLeaf,
    build_ai_provenance,
    build_risk_assessment,
)

MODEL_DIGEST_MISMATCH: Final = "MODEL_DIGEST_MISMATCH"
# Patients one BatchPredict may name.
MAX_BATCH_PATIENTS: Final = 10_000
# Patients whose rows (2^n mixes each) go through Triton together, and are read and written
# back at once.
PATIENTS_AT_ONCE: Final = 16
MODEL_NOT_SERVED: Final = "MODEL_NOT_SERVED"
_FHIR_ID: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(frozen=True)
class Caller:
    """Who predicts: their verified identity, their bearer token (passed on to the record
    service), their purpose and (ETREAT) break-glass reason."""

    subject: str
    organization: str
    token: str
    purpose: purpose_pb2.PurposeOfUse.ValueType
    break_glass_reason: str = ""


@dataclass(frozen=True)
class RecordRead:
    patient: dict[str, Any] | None
    observations: list[dict[str, Any]]


@dataclass(frozen=True)
class WrittenResource:
    resource_id: str
    version: int


@dataclass(frozen=True)
class NewEntry:
    """A resource to create in a transaction Bundle; ``full_url`` (``urn:uuid:...``), when
    given, is how the other entries name it."""

    resource: dict[str, Any]
    full_url: str | None = None


class PatientRecords(Protocol):
    async def read(
        self, caller: Caller, patient_id: str, codes: Sequence[Coding], *, with_patient: bool
    ) -> RecordRead:
        """The patient's Observations carrying any of ``codes``, and their Patient when
        asked."""
        ...

    async def create_all(
        self, caller: Caller, entries: Sequence[NewEntry], idempotency_key: str
    ) -> list[WrittenResource]:
        """Creates every entry, all or none, in one step (the record's ExecuteBundle)."""
        ...


class ModelRunner(Protocol):
    async def run(
        self,
        name: str,
        version: int,
        input_name: str,
        rows: NDArray[np.float32],
        output_name: str,
    ) -> NDArray[Any]: ...


class PredictionLedger(Protocol):
    async def append_prediction(
        self, sealed: SealedPrediction, caller: Caller
    ) -> tuple[bytes, ledger_pb2.Receipt]:
        """Appends the INFERENCE_MADE entry; its exact bytes and its receipt."""
        ...


@dataclass(frozen=True)
class Prediction:
    model: RegisteredModel
    definition: ModelDefinition
    explanation: Explanation
    # Each feature's value in its unit, before any transform (the model's input order).
    feature_values: tuple[float, ...]
    label: str
    receipt: ledger_pb2.Receipt
    opening: bytes
    risk_assessment_id: str


@dataclass(frozen=True)
class BatchProgress:
    completed: int
    failed: int
    total: int


@dataclass(frozen=True)
class BatchFailure:
    patient_id: str
    reason: str
    features: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class BatchResult:
    patient_id: str
    prediction: Prediction


BatchEvent = BatchProgress | BatchFailure | BatchResult


def _failure(patient_id: str, error: MedledgerError) -> BatchFailure:
    """One patient's error, as a batch reports it: the reason, the features at fault, and
    the error's message (which never holds patient data)."""
    return BatchFailure(
        patient_id, error.reason, tuple(v.field for v in error.violations), error.message
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_patient_id(patient_id: str) -> None:
    if not 1 <= len(patient_id) <= 64 or not set(patient_id) <= _FHIR_ID:
        raise InvalidArgument(
            [FieldViolation("patient_id", "a FHIR id: 1 to 64 of A-Z a-z 0-9 - .")]
        )


class Predictor:
    def __init__(
        self,
        registry: ModelRegistry,
        files: ModelFiles,
        runner: ModelRunner,
        records: PatientRecords,
        ledger: PredictionLedger,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._registry = registry
        self._files = files
        self._runner = runner
        self._records = records
        self._ledger = ledger
        self._clock = clock
        self._definitions: dict[tuple[str, int, bytes], ModelDefinition] = {}

    async def model(self, name: str, version: int) -> tuple[RegisteredModel, ModelDefinition]:
        """The registered version, served as registered, and what its card says."""
        registered = await self._registry.get(name, version)
        registration = registered.registration
        served = await self._files.sha256(registration.name, registration.version)
        if served is None:
            raise FailedPrecondition(
                "the model version's file is not in the model repository",
                reason=MODEL_NOT_SERVED,
            )
        if not hmac.compare_digest(served, registration.digest):
            raise FailedPrecondition(
                "the model file Triton serves is not the registered one (its SHA-256 differs)",
                reason=MODEL_DIGEST_MISMATCH,
            )
        key = (registration.name, registration.version, registration.digest)
        if key not in self._definitions:
            try:
                self._definitions[key] = parse_model_card(registration.card_json)
            except ModelCardInvalid:
                raise FailedPrecondition(
                    "the registered model card cannot be used for predictions",
                    reason="MODEL_CARD_UNUSABLE",
                ) from None
        return registered, self._definitions[key]

    async def inputs(
        self, caller: Caller, definition: ModelDefinition, patient_id: str
    ) -> PatientInputs:
        check_patient_id(patient_id)
        read = await self._records.read(
            caller,
            patient_id,
            search_codes(definition),
            with_patient=needs_patient(definition),
        )
        return build_patient_inputs(
            definition,
            patient_id=patient_id,
            patient=read.patient,
            observations=read.observations,
            now=self._clock(),
        )

    async def explain(
        self, definition: ModelDefinition, rows: Sequence[NDArray[np.float32]]
    ) -> list[Explanation]:
        """Every patient's score and exact contributions, through Triton in one batch."""

        async def score(batch: NDArray[np.float32]) -> NDArray[Any]:
            output = await self._runner.run(
                definition.name,
                definition.version,
                definition.input_tensor,
                batch,
                definition.score.tensor,
            )
            return np.asarray(output)[:, definition.score.column]

        return await explain_batch(np.stack(list(rows)), definition.reference_row(), score)

    async def record(
        self,
        caller: Caller,
        registered: RegisteredModel,
        definition: ModelDefinition,
        inputs: PatientInputs,
        explanation: Explanation,
    ) -> Prediction:
        """Ledgers the prediction, then writes its RiskAssessment and Provenance together
        (one transaction Bundle: one record step)."""
        document = prediction_document(definition, inputs, explanation)
        sealed = seal_prediction(document)
        entry, receipt = await self._ledger.append_prediction(sealed, caller)
        if not hmac.compare_digest(hashlib.sha256(b"\x00" + entry).digest(), receipt.leaf_hash):
            raise FailedPrecondition(
                "the ledger's receipt is not for the prediction's entry",
                reason="LEDGER_RECEIPT_MISMATCH",
            )
        leaf = LedgerLeaf.from_receipt(receipt.leaf_index, receipt.leaf_hash, receipt.checkpoint)
        risk_entry = f"urn:uuid:{uuid.UUID(document.prediction_id)}"
        provenance = build_ai_provenance(
            definition,
            document,
            risk_assessment=risk_entry,
            recorded=self._clock(),
            organization=caller.organization or None,
        )
        risk, _ = await self._records.create_all(
            caller,
            [
                NewEntry(build_risk_assessment(definition, document, leaf), risk_entry),
                NewEntry(provenance),
            ],
            f"prediction-{document.prediction_id}",
        )
        return Prediction(
            model=registered,
            definition=definition,
            explanation=explanation,
            feature_values=tuple(v.value for v in inputs.values),
            label=document.label or "",
            receipt=receipt,
            opening=sealed.opening(entry, receipt),
            risk_assessment_id=risk.resource_id,
        )

    async def predict(
        self, caller: Caller, model_name: str, model_version: int, patient_id: str
    ) -> Prediction:
        registered, definition = await self.model(model_name, model_version)
        inputs = await self.inputs(caller, definition, patient_id)
        (explanation,) = await self.explain(definition, [inputs.row()])
        return await self.record(caller, registered, definition, inputs, explanation)

    async def batch(
        self, caller: Caller, model_name: str, model_version: int, patient_ids: Sequence[str]
    ) -> AsyncIterator[BatchEvent]:
        """Scores a cohort, :data:`PATIENTS_AT_ONCE` at a time (their Triton rows in one
        batch): progress first and after each group, then each patient's result or error.
        A patient's error does not stop the batch; the model not served, or Triton down,
        does (before anything is written for the group)."""
        registered, definition = await self.model(model_name, model_version)
        total, completed, failed = len(patient_ids), 0, 0
        yield BatchProgress(completed, failed, total)
        for start in range(0, total, PATIENTS_AT_ONCE):
            group = patient_ids[start : start + PATIENTS_AT_ONCE]
            read = await asyncio.gather(
                *(self._inputs_or_error(caller, definition, p) for p in group)
            )
            ready: list[tuple[str, PatientInputs]] = []
            for patient_id, outcome in zip(group, read, strict=True):
                if isinstance(outcome, MedledgerError):
                    failed += 1
                    yield _failure(patient_id, outcome)
                else:
                    ready.append((patient_id, outcome))
            if ready:
                explanations = await self.explain(definition, [i.row() for _, i in ready])
                written = await asyncio.gather(
                    *(
                        self._record_or_error(caller, registered, definition, inputs, ex)
                        for (_, inputs), ex in zip(ready, explanations, strict=True)
                    )
                )
                for (patient_id, _), result in zip(ready, written, strict=True):
                    if isinstance(result, MedledgerError):
                        failed += 1
                        yield _failure(patient_id, result)
                    else:
                        completed += 1
                        yield BatchResult(patient_id, result)
            yield BatchProgress(completed, failed, total)

    async def _inputs_or_error(
        self, caller: Caller, definition: ModelDefinition, patient_id: str
    ) -> PatientInputs | MedledgerError:
        try:
            return await self.inputs(caller, definition, patient_id)
        except MedledgerError as error:
            return error

    async def _record_or_error(
        self,
        caller: Caller,
        registered: RegisteredModel,
        definition: ModelDefinition,
        inputs: PatientInputs,
        explanation: Explanation,
    ) -> Prediction | MedledgerError:
        try:
            return await self.record(caller, registered, definition, inputs, explanation)
        except MedledgerError as error:
            return error
