"""gRPC servicer of the inference service: converts messages to domain calls and back
(:class:`~medledger.inference.domain.registry.ModelRegistry` does the registry's work).

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED are filled by
a later issue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import Unimplemented
from medledger.common.interceptors import authenticated_principal
from medledger.common.policy import Scopes, ServiceAccess
from medledger.common.scopes import ADMIN, INFERENCE_PREDICT
from medledger.inference.domain.registration import (
    FeatureDefinition,
    ModelRegistration,
    ModelTask,
)
from medledger.inference.domain.registry import ModelRegistry, RegisteredModel, Registrant

Context = grpc.aio.ServicerContext[Any, Any]
PENDING = "not implemented yet"

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
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

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
        raise Unimplemented(PENDING)

    async def BatchPredict(
        self, request: inference_pb2.BatchPredictRequest, context: Context
    ) -> AsyncIterator[inference_pb2.BatchPredictResponse]:
        raise Unimplemented(PENDING)
        yield inference_pb2.BatchPredictResponse()  # unreachable: makes this a generator
