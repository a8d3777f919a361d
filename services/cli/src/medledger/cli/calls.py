"""How the CLI calls medledger services: the channel, bearer metadata, and one error type
that carries what the server said (status code, ErrorInfo reason, bad fields)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings

T = TypeVar("T")

Metadata = tuple[tuple[str, str], ...]

# Codes that mean the server could not be reached (or answered too late), not a refusal.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CallFailed(Exception):
    """A call was refused or failed; ``str()`` is one line a person can act on."""

    def __init__(
        self,
        call: str,
        address: str,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        bad_fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__(call, address, code, message, reason, bad_fields)
        self.call = call
        self.address = address
        self.code = code
        self.message = message
        self.reason = reason
        self.bad_fields = bad_fields

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason and self.reason != self.code.name else ""
        text = f"{self.call} at {self.address}: {self.code.name}{reason}: {self.message}"
        if self.bad_fields:
            text += f" ({'; '.join(self.bad_fields)})"
        if self.code in UNREACHABLE:
            text += " — is the service up? (`medledger dev status`)"
        return text


def _details(error: grpc.aio.AioRpcError) -> tuple[str, tuple[str, ...]]:
    """The ErrorInfo reason and the BadRequest field violations of a rich error."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # a status whose details disagree with its code: keep the code
        status = None
    if status is None:
        return "", ()
    reason = ""
    bad: list[str] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        request = error_details_pb2.BadRequest()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(request.DESCRIPTOR):
            detail.Unpack(request)
            bad.extend(f"{v.field}: {v.description}" for v in request.field_violations)
    return reason, tuple(bad)


def call_failed(call: str, address: str, error: grpc.aio.AioRpcError) -> CallFailed:
    reason, bad = _details(error)
    return CallFailed(call, address, error.code(), error.details() or "no details", reason, bad)


async def checked(call: str, address: str, pending: Awaitable[T]) -> T:
    """The answer of ``pending``, or :class:`CallFailed` describing the gRPC error."""
    try:
        return await pending
    except grpc.aio.AioRpcError as error:
        raise call_failed(call, address, error) from None


def bearer(token: str | None) -> Metadata:
    """Call metadata that carries ``token`` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def open_channel(address: str) -> grpc.aio.Channel:
    """A channel to ``host:port`` (TLS from the ``MEDLEDGER_TLS_*`` variables)."""
    return create_channel(address, ServiceSettings())
