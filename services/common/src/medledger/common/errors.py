"""Domain errors and their one mapping to gRPC status codes.

Domain code raises these exceptions and knows nothing of gRPC. The error interceptor
(:mod:`medledger.common.interceptors`) turns them into a ``google.rpc.Status`` with an
``ErrorInfo`` (UPPER_SNAKE_CASE reason, our domain) and, for bad input, a ``BadRequest``
naming each field. Messages are written for clients: they must never hold PHI or
internals, so they are fixed strings chosen by our code, never echoes of the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "medledger.dev"
# A status travels in trailers, which gRPC caps (16 KiB by default): a request with thousands
# of bad items is answered with the first ones, never with a status too large to deliver.
MAX_REPORTED_VIOLATIONS = 20


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (``entry.subject``) and what is wrong."""

    field: str
    description: str


class MedledgerError(Exception):
    """Base class: a client-safe message, a machine-readable reason, and its gRPC code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        # Set on errors decoded from a server's answer (:func:`from_rpc_error`).
        self.violations: list[FieldViolation] = []
        self.retry_delay_seconds: float | None = None


class InvalidArgument(MedledgerError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        *,
        message: str | None = None,
        reason: str | None = None,
    ) -> None:
        fields = ", ".join(v.field for v in violations[:MAX_REPORTED_VIOLATIONS])
        if len(violations) > MAX_REPORTED_VIOLATIONS:
            fields += f" and {len(violations) - MAX_REPORTED_VIOLATIONS} more"
        super().__init__(message or f"invalid request: {fields}", reason=reason)
        self.violations = list(violations)

    @property
    def field_names(self) -> list[str]:
        return [v.field for v in self.violations]


class Unauthenticated(MedledgerError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(MedledgerError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(MedledgerError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(MedledgerError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(MedledgerError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(MedledgerError):
    """A conflict the client may resolve by re-reading and retrying (e.g. a stale version)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhausted(MedledgerError):
    """A quota or a bound was reached; ``retry_after_seconds``, when given, is sent as a
    RetryInfo telling the client when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_delay_seconds = retry_after_seconds


class Unavailable(MedledgerError):
    """A dependency (Mongo, Vault, Triton, a peer service) did not answer: safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "DEPENDENCY_UNAVAILABLE"

    def __init__(self, dependency: str, *, reason: str | None = None) -> None:
        super().__init__(
            f"{dependency} is unavailable; retry later",
            reason=reason,
            metadata={"dependency": dependency},
        )


class Unimplemented(MedledgerError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class DataLoss(MedledgerError):
    """Stored data that must exist is missing or damaged (not the client's fault)."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = "DATA_LOSS"


class DeadlineExceeded(MedledgerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: MedledgerError, *, service: str) -> status_pb2.Status:
    """The ``google.rpc.Status`` a client receives for ``error`` raised in ``service``."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=ERROR_DOMAIN,
        metadata={"service": service, **error.metadata},
    )
    details = [_pack(info)]
    # Bad input names its fields; so does a precondition on named inputs (the features a
    # prediction lacks), whatever the code.
    if isinstance(error, InvalidArgument) or error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations[:MAX_REPORTED_VIOLATIONS]
            ]
        )
        details.append(_pack(bad_request))
    delay = error.retry_delay_seconds
    if delay is None and isinstance(error, Unavailable):
        delay = 0.5
    if delay is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(0, round(delay * 1000)))
        details.append(_pack(retry))
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


def internal_status(*, service: str) -> status_pb2.Status:
    """What a client sees for a bug: no stack trace, no message from the failing code."""
    return to_rpc_status(MedledgerError("internal error", reason="INTERNAL"), service=service)


_ERROR_CLASSES: dict[grpc.StatusCode, type[MedledgerError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        Unavailable,
        Unimplemented,
        DataLoss,
        DeadlineExceeded,
    )
}


class RemoteError(MedledgerError):
    """A status with no class of its own here (CANCELLED, OUT_OF_RANGE, INTERNAL, ...)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason or code.name, metadata=metadata)
        self.code = code


def from_rpc_error(error: grpc.RpcError) -> MedledgerError:
    """The error a server answered, rebuilt from its ``google.rpc.Status``.

    The inverse of :func:`to_rpc_status`: the class follows the status code (so callers
    can ``except NotFound``), ``reason`` and ``metadata`` come from the ErrorInfo,
    ``violations`` from the BadRequest and ``retry_delay_seconds`` from the RetryInfo.
    Servers that send no rich details (or details that disagree with the code) still
    give the code and the message.
    """
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    message = (details_of() if callable(details_of) else "") or ""
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry: float | None = None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):  # details that disagree with the code
        status = None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry_info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(retry_info.DESCRIPTOR) and detail.Unpack(retry_info):
            retry = retry_info.retry_delay.ToNanoseconds() / 1e9
    cls = _ERROR_CLASSES.get(code)
    decoded: MedledgerError
    if cls is None:
        decoded = RemoteError(code, message, reason=reason or None, metadata=metadata)
    else:
        decoded = cls.__new__(cls)
        MedledgerError.__init__(decoded, message, reason=reason or None, metadata=metadata)
    decoded.violations = violations
    decoded.retry_delay_seconds = retry
    return decoded
