"""How services record events in the ledger: one call, no PHI by construction.

Callers pass identifiers and commitments; the client adds the time and the current
trace id, and returns the receipt. A ledger that does not answer surfaces as the
retryable ``Unavailable("ledger")``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import Aborted, MedledgerError, Unavailable, from_rpc_error
from medledger.common.telemetry import current_trace_id

TokenSource = Callable[[], Awaitable[str]]
# The ledger's ErrorInfo reason when an idempotency key comes back with another entry.
IDEMPOTENCY_KEY_REUSED: Final = "IDEMPOTENCY_KEY_REUSED"


@dataclass(frozen=True)
class LedgerEvent:
    kind: ledger_pb2.EventKind.ValueType
    actor: str
    organization: str
    subject: bytes = b""
    resource_type: str = ""
    resource_id: str = ""
    resource_version: int = 0
    content_commitment: bytes = b""
    purpose: purpose_pb2.PurposeOfUse.ValueType = purpose_pb2.PURPOSE_OF_USE_UNSPECIFIED


class LedgerClient:
    def __init__(
        self, address: str, settings: ServiceSettings, token: TokenSource | None = None
    ) -> None:
        self._channel = create_channel(address, settings)
        self._stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(
            self._channel
        )
        self._token = token

    def entry(self, event: LedgerEvent) -> ledger_pb2.LedgerEntry:
        now = Timestamp()
        now.GetCurrentTime()
        entry = ledger_pb2.LedgerEntry(
            kind=event.kind,
            subject=event.subject,
            content_commitment=event.content_commitment,
            actor=event.actor,
            organization=event.organization,
            purpose=event.purpose,
            time=now,
            trace_id=current_trace_id(),
        )
        if event.resource_type:
            entry.resource.CopyFrom(
                ledger_pb2.ResourceRef(
                    type=event.resource_type, id=event.resource_id, version=event.resource_version
                )
            )
        return entry

    async def append(
        self, event: LedgerEvent, *, idempotency_key: str = "", timeout: float = 10.0
    ) -> ledger_pb2.Receipt:
        return await self.append_entry(
            self.entry(event), idempotency_key=idempotency_key, timeout=timeout
        )

    async def _metadata(self) -> list[tuple[str, str]]:
        if self._token is None:
            return []
        return [("authorization", f"Bearer {await self._token()}")]

    async def append_entry(
        self, entry: ledger_pb2.LedgerEntry, *, idempotency_key: str = "", timeout: float = 10.0
    ) -> ledger_pb2.Receipt:
        """Appends an entry built by :meth:`entry` (whose leaf hash the caller may have
        recorded first)."""
        request = ledger_pb2.AppendRequest(entry=entry, idempotency_key=idempotency_key)
        try:
            response = await self._stub.Append(
                request, metadata=await self._metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _append_error(error) from error
        return response.receipt

    async def append_entries(
        self,
        entries: Sequence[tuple[ledger_pb2.LedgerEntry, str]],
        *,
        timeout: float = 30.0,
    ) -> list[ledger_pb2.Receipt]:
        """Appends ``(entry, idempotency_key)`` pairs in one durable step (AppendBatch: all
        or none, at most 1,000), returning their receipts in order."""
        request = ledger_pb2.AppendBatchRequest(
            entries=[ledger_pb2.AppendRequest(entry=e, idempotency_key=k) for e, k in entries]
        )
        try:
            response = await self._stub.AppendBatch(
                request, metadata=await self._metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _append_error(error) from error
        if len(response.receipts) != len(entries):
            raise MedledgerError("the ledger answered a partial batch", reason="LEDGER_REFUSED")
        return list(response.receipts)

    async def aclose(self) -> None:
        await self._channel.close(None)


def _append_error(error: grpc.aio.AioRpcError) -> MedledgerError:
    """What a refused or failed append means to the service that asked."""
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable("ledger")
    if from_rpc_error(error).reason == IDEMPOTENCY_KEY_REUSED:
        # A concurrent change (another replica) recorded this event first: the caller may
        # re-read and retry.
        return Aborted("a concurrent change was recorded first; retry", reason="CONCURRENT_CHANGE")
    if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # This service's own token was refused (a signing key the ledger has not fetched
        # yet, an expired token, a missing scope): nothing the caller did, and nothing was
        # recorded; retryable like any dependency that does not answer.
        return Unavailable("ledger", reason="LEDGER_REFUSED")
    return MedledgerError("the ledger refused the event", reason="LEDGER_REFUSED")
