"""Server interceptors: error mapping (one place) and the authentication slot.

gRPC's asyncio interceptors see a method handler, not the call, so each interceptor
wraps the handler's behaviour function; :func:`wrap_handler` does that once for the
four call shapes.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from grpc_status import rpc_status

from medledger.common.errors import (
    MedledgerError,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
    internal_status,
    to_rpc_status,
)
from medledger.common.policy import PUBLIC, MethodPolicy, Public, Rule
from medledger.common.request_decoding import (
    Deserializer,
    MalformedRequest,
    tolerant_deserializer,
)

log = logging.getLogger("medledger.rpc")

if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
UnaryWrapper = Callable[[str, UnaryBehavior], UnaryBehavior]
StreamWrapper = Callable[[str, StreamBehavior], StreamBehavior]
DeserializerWrapper = Callable[[Deserializer, bool], Deserializer]

# Methods every client may call without a token (probes, discovery).
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    unary: UnaryWrapper,
    stream: StreamWrapper,
    deserializer: DeserializerWrapper | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns ``handler`` with its behaviour wrapped; response streams use ``stream``.
    ``deserializer``, when given, wraps the request decoder (told whether requests stream)."""
    if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
        return handler
    request_deserializer = handler.request_deserializer
    if deserializer is not None and request_deserializer is not None:
        request_deserializer = deserializer(request_deserializer, handler.request_streaming)
    kwargs: dict[str, Any] = {
        "request_deserializer": request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(method, cast(UnaryBehavior, handler.unary_unary)), **kwargs
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(method, cast(UnaryBehavior, handler.stream_unary)), **kwargs
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(method, cast(StreamBehavior, handler.unary_stream)), **kwargs
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream(method, cast(StreamBehavior, handler.stream_stream)), **kwargs
        )
    return handler


class ErrorInterceptor(_ServerInterceptor):
    """Turns domain errors into rich statuses and bugs into a bare INTERNAL.

    A bug is logged with its exception type and stack frames but not its message,
    which could quote request data (PHI).
    """

    def __init__(self, service: str) -> None:
        self._service = service

    async def _abort(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception
    ) -> None:
        if isinstance(exc, NotImplementedError):
            # The generated servicer base raises this for RPCs a later release fills.
            exc = Unimplemented("method not implemented yet")
        if isinstance(exc, MedledgerError):
            status = to_rpc_status(exc, service=self._service)
            log.info(
                "rpc failed",
                extra={"rpc.method": method, "rpc.code": exc.code.name, "reason": exc.reason},
            )
        else:
            status = internal_status(service=self._service)
            log.error(
                "rpc crashed",
                extra={
                    "rpc.method": method,
                    "exception": type(exc).__name__,
                    "stack": "".join(traceback.format_tb(exc.__traceback__)),
                },
            )
        grpc_status = rpc_status.to_status(status)
        await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)

    def _unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)
                raise  # abort_with_status raises; this line is never reached

        return guarded

    def _stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)
                raise

        return guarded

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        return wrap_handler(handler, method, self._unary, self._stream)


class RequestDecodingInterceptor(_ServerInterceptor):
    """Requests whose bytes do not decode answer INVALID_ARGUMENT (reason MALFORMED_REQUEST,
    naming the field), never grpc's UNKNOWN that quotes a Python exception.

    Installed innermost, so authentication is decided first: a caller without a valid token
    learns nothing about its bytes. The error itself is mapped by :class:`ErrorInterceptor`.
    """

    @staticmethod
    def _deserializer(deserializer: Deserializer, streaming: bool) -> Deserializer:
        return tolerant_deserializer(deserializer, streaming=streaming)

    @staticmethod
    def _unary(method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def decoded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, MalformedRequest):
                raise request.error
            return await behavior(request, context)

        return decoded

    @staticmethod
    def _stream(method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def decoded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, MalformedRequest):
                raise request.error
            async for response in behavior(request, context):
                yield response

        return decoded

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        return wrap_handler(handler, method, self._unary, self._stream, self._deserializer)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as established from a verified access token."""

    subject: str
    organization: str = ""
    client_id: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    purposes: frozenset[str] = field(default_factory=frozenset)
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# Set by the auth interceptor; handlers read it through authenticated_principal() only.
current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


def authenticated_principal() -> Principal:
    """The caller the auth interceptor verified; Unauthenticated when there is none (a
    public method, or a handler reached some other way), never a silent anonymous caller."""
    principal = current_principal.get()
    if principal is None:
        raise Unauthenticated("a bearer token is required", reason="TOKEN_MISSING")
    return principal


class TokenVerifier(Protocol):
    """Verifies a bearer token for a method; raises ``Unauthenticated`` when it is not valid."""

    async def verify(self, token: str, method: str) -> Principal: ...


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of a call's metadata (a service passing its caller's token on)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


class AuthInterceptor(_ServerInterceptor):
    """Fails closed: a method is served only under the policy declared for it.

    Health and reflection are public, and so is a method declared :class:`Public`; any
    other declared method needs a valid bearer token (else UNAUTHENTICATED) whose scopes its
    rule admits (else PERMISSION_DENIED); a method with no declared policy is denied
    whatever the token.
    """

    def __init__(self, verifier: TokenVerifier, policies: Mapping[str, MethodPolicy]) -> None:
        self._verifier = verifier
        self._policies = dict(policies)

    def policy(self, method: str) -> MethodPolicy | None:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return PUBLIC
        return self._policies.get(method)

    async def _authenticate(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, rule: Rule | None
    ) -> None:
        if rule is None:
            raise PermissionDenied("no caller may call this method", reason="METHOD_UNDECLARED")
        token = bearer_token(cast(Iterable[tuple[str, str | bytes]], context.invocation_metadata()))
        if token is None:
            raise Unauthenticated("a bearer token is required", reason="TOKEN_MISSING")
        principal = await self._verifier.verify(token, method)
        if not rule.admits(principal.scopes):
            raise PermissionDenied(
                "the token's scopes do not cover this method",
                reason="SCOPE_MISSING",
                metadata={"required": rule.describe()},
            )
        current_principal.set(principal)

    def _unary(self, rule: Rule | None) -> UnaryWrapper:
        def wrap(method: str, behavior: UnaryBehavior) -> UnaryBehavior:
            async def authenticated(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                await self._authenticate(context, method, rule)
                return await behavior(request, context)

            return authenticated

        return wrap

    def _stream(self, rule: Rule | None) -> StreamWrapper:
        def wrap(method: str, behavior: StreamBehavior) -> StreamBehavior:
            async def authenticated(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await self._authenticate(context, method, rule)
                async for response in behavior(request, context):
                    yield response

            return authenticated

        return wrap

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        policy = self.policy(method)
        if isinstance(policy, Public):
            return handler
        return wrap_handler(handler, method, self._unary(policy), self._stream(policy))
