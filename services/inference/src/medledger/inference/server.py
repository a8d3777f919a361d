"""gRPC servicer of the inference service: converts messages to domain calls and back.

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED are filled by
a later issue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.common.errors import Unimplemented
from medledger.common.policy import Scopes, ServiceAccess
from medledger.common.scopes import ADMIN, INFERENCE_PREDICT

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


class InferenceServiceServicer(inference_pb2_grpc.InferenceServiceServicer):
    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: Context
    ) -> inference_pb2.ListModelsResponse:
        raise Unimplemented(PENDING)

    async def GetModel(
        self, request: inference_pb2.GetModelRequest, context: Context
    ) -> inference_pb2.GetModelResponse:
        raise Unimplemented(PENDING)

    async def RegisterModel(
        self, request: inference_pb2.RegisterModelRequest, context: Context
    ) -> inference_pb2.RegisterModelResponse:
        raise Unimplemented(PENDING)

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: Context
    ) -> inference_pb2.PredictResponse:
        raise Unimplemented(PENDING)

    async def BatchPredict(
        self, request: inference_pb2.BatchPredictRequest, context: Context
    ) -> AsyncIterator[inference_pb2.BatchPredictResponse]:
        raise Unimplemented(PENDING)
        yield inference_pb2.BatchPredictResponse()  # unreachable: makes this a generator
