"""How the CLI calls medledger services: the channel, bearer metadata, and one error type
that carries what the server said (status code, ErrorInfo reason, bad fields)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import from_rpc_error

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


def call_failed(call: str, address: str, error: grpc.RpcError) -> CallFailed:
    """The CLI's one error type for a failed call, from the server's rich status."""
    decoded = from_rpc_error(error)
    bad = tuple(f"{v.field}: {v.description}" for v in decoded.violations)
    message = decoded.message or "no details"
    return CallFailed(call, address, decoded.code, message, decoded.reason, bad)


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
