"""RED metrics for every RPC a service answers: ``medledger.rpc.server.duration`` by service,
method and status code (the catalogue's RPC_SERVER_DURATION).

Installed just inside the tracing interceptor and outside error mapping, so a call's status
is the one the caller sees: OK, the code a handler or the error interceptor aborted with,
CANCELLED when the caller went away, INTERNAL for anything else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from medledger.common.interceptors import (
    PUBLIC_METHOD_PREFIXES,
    StreamBehavior,
    UnaryBehavior,
    wrap_handler,
)
from medledger.common.metric_catalog import RPC_SERVER_DURATION
from medledger.common.metrics import elapsed_ms, histogram

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]
_duration = histogram(RPC_SERVER_DURATION)


def _split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _status(context: Context, error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED  # the caller went away (or stopped reading)
    return grpc.StatusCode.INTERNAL


class RpcMetricsInterceptor(_ServerInterceptor):
    """Times each call and records it with its final status code. Health checks and
    reflection are not the service's API and are left out."""

    @staticmethod
    def _record(method: str, context: Context, started: float, error: BaseException | None) -> None:
        service, name = _split(method)
        _duration.record(
            elapsed_ms(started),
            {
                "rpc.service": service,
                "rpc.method": name,
                "rpc.grpc.status_code": _status(context, error).value[0],
            },
        )

    def _unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def measured(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException as error:
                self._record(method, context, started, error)
                raise
            self._record(method, context, started, None)
            return response

        return measured

    def _stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def measured(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as error:
                self._record(method, context, started, error)
                raise
            self._record(method, context, started, None)

        return measured

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        return wrap_handler(handler, handler_call_details.method, self._unary, self._stream)
