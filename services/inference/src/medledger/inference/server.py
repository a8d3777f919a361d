"""gRPC servicer of the inference service: converts messages to domain calls and back
(:class:`~medledger.inference.domain.registry.ModelRegistry` does the registry's work).

Predict and BatchPredict are :class:`~medledger.inference.domain.predictor.Predictor`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.interceptors import authenticated_principal, bearer_token
from medledger.common.policy import Scopes, ServiceAccess
from medledger.common.scopes import ADMIN, INFERENCE_PREDICT
from medledger.inference.domain.predictor import (
    MAX_BATCH_PATIENTS,
    BatchEvent,
    BatchFailure,
    BatchProgress,
    Caller,
    Prediction,
    Predictor,
)
from medledger.inference.domain.registration import (
    FeatureDefinition,
    ModelRegistration,
    ModelTask,
)
from medledger.inference.domain.registry import ModelRegistry, RegisteredModel, Registrant

Context = grpc.aio.ServicerContext[Any, Any]

_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
_METHODS = _SERVICE.methods_by_name
_PREDICTORS = Scopes(INFERENCE_PREDICT)
_CARD_READERS = Scopes(INFERENCE_PREDICT, ADMIN)
INFERENCE_ACCESS: Final = ServiceAccess(
    _SERVICE,
    {
        _METHODS["ListModels"]: _CARD_READERS,
        _METHODS["GetModel"]: _CARD_READERS,
        _METHODS["RegisterModel"]: Scopes(ADMIN),
        # The patient's record is then read under CheckAccess with the caller's SMART scopes
        # and purpose, as a direct read would be.
        _METHODS["Predict"]: _PREDICTORS,
        _METHODS["BatchPredict"]: _PREDICTORS,
    },
)


_TASKS: Final = {
    inference_pb2.MODEL_TASK_REGRESSION: ModelTask.REGRESSION,
    inference_pb2.MODEL_TASK_BINARY_CLASSIFICATION: ModelTask.BINARY_CLASSIFICATION,
}
_TASK_VALUES: Final = {task: value for value, task in _TASKS.items()}


def _registration(model: inference_pb2.Model) -> ModelRegistration:
    return ModelRegistration(
        name=model.name,
        version=model.version,
        digest=model.digest,
        task=_TASKS.get(model.task),
        features=tuple(
            FeatureDefinition(
                name=f.name,
                code=f.loinc_code,
                code_system=f.code_system,
                unit=f.unit,
                min_value=f.min_value,
                max_value=f.max_value,
            )
            for f in model.features
        ),
        card_json=model.model_card_json,
    )


def _model(model: RegisteredModel) -> inference_pb2.Model:
    registration = model.registration
    registered = Timestamp()
    registered.FromDatetime(model.register_time)
    return inference_pb2.Model(
        name=registration.name,
        version=registration.version,
        digest=registration.digest,
        task=(
            _TASK_VALUES[registration.task]
            if registration.task is not None
            else inference_pb2.MODEL_TASK_UNSPECIFIED
        ),
        features=[
            inference_pb2.Feature(
                name=f.name,
                loinc_code=f.code,
                code_system=f.code_system,
                unit=f.unit,
                min_value=f.min_value,
                max_value=f.max_value,
            )
            for f in registration.features
        ],
        model_card_json=registration.card_json,
        register_time=registered,
    )


class InferenceServiceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, predictor: Predictor) -> None:
        self._registry = registry
        self._predictor = predictor

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: Context
    ) -> inference_pb2.ListModelsResponse:
        found = await self._registry.list_models(request.page_size, request.page_token)
        return inference_pb2.ListModelsResponse(
            models=[_model(m) for m in found.items], next_page_token=found.next_page_token
        )

    async def GetModel(
        self, request: inference_pb2.GetModelRequest, context: Context
    ) -> inference_pb2.GetModelResponse:
        found = await self._registry.get(request.name, request.version)
        return inference_pb2.GetModelResponse(model=_model(found))

    async def RegisterModel(
        self, request: inference_pb2.RegisterModelRequest, context: Context
    ) -> inference_pb2.RegisterModelResponse:
        caller = authenticated_principal()
        registered = await self._registry.register(
            Registrant(caller.subject, caller.organization), _registration(request.model)
        )
        return inference_pb2.RegisterModelResponse(
            model=_model(registered), receipt=ledger_pb2.Receipt.FromString(registered.receipt)
        )

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: Context
    ) -> inference_pb2.PredictResponse:
        caller = _caller(context, request.purpose, request.break_glass_reason)
        predicted = await self._predictor.predict(
            caller, request.model_name, request.model_version, request.patient_id
        )
        explanation = predicted.explanation
        return inference_pb2.PredictResponse(
            score=explanation.score,
            label=predicted.label,
            base_score=explanation.base_score,
            contributions=_contributions(predicted),
            model=_model(predicted.model),
            receipt=predicted.receipt,
            risk_assessment_id=predicted.risk_assessment_id,
            contribution_space=_SPACES[predicted.definition.contribution_space],
            prediction_opening=predicted.opening,
        )

    async def BatchPredict(
        self, request: inference_pb2.BatchPredictRequest, context: Context
    ) -> AsyncIterator[inference_pb2.BatchPredictResponse]:
        caller = _caller(context, request.purpose, "")
        patients = list(dict.fromkeys(request.patient_ids))
        if not patients or len(patients) > MAX_BATCH_PATIENTS:
            raise InvalidArgument(
                [FieldViolation("patient_ids", f"1 to {MAX_BATCH_PATIENTS} patient ids")]
            )
        async for event in self._predictor.batch(
            caller, request.model_name, request.model_version, patients
        ):
            yield _batch_event(event)


_SPACES: Final = {
    "probability": inference_pb2.CONTRIBUTION_SPACE_PROBABILITY,
    "score": inference_pb2.CONTRIBUTION_SPACE_SCORE,
}


def _caller(context: Context, purpose: int, break_glass_reason: str) -> Caller:
    """The authenticated caller, with the token it called with (passed on to the record
    service) and the purpose it states (required)."""
    if purpose == purpose_pb2.PURPOSE_OF_USE_UNSPECIFIED or (
        purpose not in purpose_pb2.PurposeOfUse.values()
    ):
        raise InvalidArgument([FieldViolation("purpose", "a PurposeOfUse is required")])
    principal = authenticated_principal()
    token = bearer_token(context.invocation_metadata()) or ""
    return Caller(
        subject=principal.subject,
        organization=principal.organization,
        token=token,
        purpose=purpose_pb2.PurposeOfUse.ValueType(purpose),
        break_glass_reason=break_glass_reason,
    )


def _contributions(predicted: Prediction) -> list[inference_pb2.FeatureContribution]:
    explanation = predicted.explanation
    return [
        inference_pb2.FeatureContribution(feature=name, value=value, contribution=share)
        for name, value, share in zip(
            predicted.definition.feature_names,
            predicted.feature_values,
            explanation.contributions,
            strict=True,
        )
    ]


def _batch_event(event: BatchEvent) -> inference_pb2.BatchPredictResponse:
    if isinstance(event, BatchProgress):
        return inference_pb2.BatchPredictResponse(
            progress=inference_pb2.Progress(
                completed=event.completed, failed=event.failed, total=event.total
            )
        )
    if isinstance(event, BatchFailure):
        return inference_pb2.BatchPredictResponse(
            error=inference_pb2.PatientError(
                patient_id=event.patient_id,
                reason=event.reason,
                features=list(event.features),
                message=event.message,
            )
        )
    predicted = event.prediction
    explanation = predicted.explanation
    return inference_pb2.BatchPredictResponse(
        result=inference_pb2.PredictionResult(
            patient_id=event.patient_id,
            score=explanation.score,
            label=predicted.label,
            base_score=explanation.base_score,
            contributions=_contributions(predicted),
            receipt=predicted.receipt,
            risk_assessment_id=predicted.risk_assessment_id,
            contribution_space=_SPACES[predicted.definition.contribution_space],
            prediction_opening=predicted.opening,
        )
    )
