"""Sends each new checkpoint to the witnesses and publishes their cosignatures.

Witnessing runs in the background: an append never waits for it. Only the newest
checkpoint is sent (a witness needs no intermediate ones: the consistency proof covers
them). Each witness's cosignature is verified against its configured key before it is
added to the published note; a witness that is down, or refuses, is skipped and retried
with the next checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import from_rpc_error
from medledger.common.ledger_client import TokenSource
from medledger.common.metric_catalog import LEDGER_WITNESS_LAG
from medledger.common.metrics import Attributes, observable_gauge
from medledger.ledger.adapters.vault_signer import VaultNoteSigner
from medledger.ledger.domain.ports import LedgerStorage, StoredCheckpoint
from medledger.ledger.domain.proofs import ProofReader
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.errors import TlogError

log = logging.getLogger("medledger.ledger.witnesses")
WITNESS_TIMEOUT_SECONDS = 5.0
_tracer = trace.get_tracer("medledger.ledger.witnesses")


@dataclass
class _Witness:
    address: str
    stub: witness_pb2_grpc.WitnessServiceAsyncStub
    channel: grpc.aio.Channel
    known_size: int = 0
    # When the newest checkpoint it cosigned was made (monotonic); None: none yet.
    cosigned_made: float | None = None


@dataclass(frozen=True)
class _Made:
    """A checkpoint to publish, when it was made, and the trace of the batch that made it."""

    checkpoint: StoredCheckpoint
    made: float
    trace_context: otel_context.Context


def _witness_size(error: grpc.aio.AioRpcError) -> int | None:
    """The witness's own size, from the ErrorInfo of an OLD_SIZE_MISMATCH refusal."""
    refusal = from_rpc_error(error)
    if refusal.reason == "OLD_SIZE_MISMATCH" and "witness_size" in refusal.metadata:
        return int(refusal.metadata["witness_size"])
    return None


class WitnessPublisher:
    def __init__(
        self,
        storage: LedgerStorage,
        addresses: list[str],
        signer: VaultNoteSigner,
        witness_vkeys: list[str],
        settings: ServiceSettings,
        *,
        token: TokenSource | None = None,
    ) -> None:
        self._token = token
        self._storage = storage
        self._proofs = ProofReader(storage)
        self._signer = signer
        self._log_vkeys: list[str] = []
        self._witness_vkeys = witness_vkeys
        self._witnesses = []
        for address in addresses:
            channel = create_channel(address, settings)
            stub: witness_pb2_grpc.WitnessServiceAsyncStub = witness_pb2_grpc.WitnessServiceStub(
                channel
            )
            self._witnesses.append(_Witness(address, stub, channel))
        self._latest: _Made | None = None
        self._first_made: float | None = None
        self._published_size = -1
        self._task: asyncio.Task[None] | None = None
        _publishers.add(self)

    def publish(self, checkpoint: StoredCheckpoint) -> None:
        """Sends ``checkpoint`` to the witnesses soon; their calls are traced under the
        current span (the batch that made it)."""
        if not self._witnesses:
            return
        if self._latest is None or checkpoint.size > self._latest.checkpoint.size:
            self._latest = _Made(checkpoint, time.monotonic(), otel_context.get_current())
            if self._first_made is None:
                self._first_made = self._latest.made
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="ledger-witnesses")

    def witness_lags(self) -> list[tuple[float, Attributes]]:
        """Each witness's lag (the catalogue's LEDGER_WITNESS_LAG), once a checkpoint was
        made: how much older the newest checkpoint it cosigned is than the newest one."""
        if self._latest is None or self._first_made is None:
            return []
        newest = self._latest.made
        return [
            (
                max(newest - (w.cosigned_made or self._first_made), 0.0),
                {"witness": w.address},
            )
            for w in self._witnesses
        ]

    async def _drain(self) -> None:
        try:
            await self._drain_or_raise()
        except Exception:
            log.warning("publishing to the witnesses failed", exc_info=True)

    async def _drain_or_raise(self) -> None:
        while self._latest is not None and self._latest.checkpoint.size > self._published_size:
            made = self._latest
            with _tracer.start_as_current_span(
                "ledger.witnesses.publish",
                context=made.trace_context,
                attributes={"medledger.ledger.tree_size": made.checkpoint.size},
            ):
                await self._publish(made)

    async def _publish(self, made: _Made) -> None:
        checkpoint = made.checkpoint
        self._log_vkeys = await self._signer.verifier_keys()
        lines = await asyncio.gather(*(self._cosign(w, checkpoint) for w in self._witnesses))
        for witness, line in zip(self._witnesses, lines, strict=True):
            if line:
                witness.cosigned_made = max(witness.cosigned_made or 0.0, made.made)
        accepted = [line for line in lines if line]
        if accepted:
            await self._storage.store_cosigned(
                checkpoint.size, checkpoint.note + b"".join(accepted)
            )
        self._published_size = checkpoint.size

    def _valid(self, checkpoint: StoredCheckpoint, line: bytes) -> bool:
        try:
            verify_checkpoint(checkpoint.note + line, self._log_vkeys, self._witness_vkeys, 1)
        except (TlogError, ValueError):
            return False
        return True

    async def _cosign(self, witness: _Witness, checkpoint: StoredCheckpoint) -> bytes | None:
        for _attempt in range(2):
            old = witness.known_size
            if old > checkpoint.size:
                return None
            proof = await self._proofs.consistency(old, checkpoint) if old else []
            request = witness_pb2.AddCheckpointRequest(
                old_size=old, consistency_proof=proof, checkpoint=checkpoint.note
            )
            metadata = []
            if self._token is not None:
                metadata.append(("authorization", f"Bearer {await self._token()}"))
            try:
                response = await witness.stub.AddCheckpoint(
                    request, metadata=metadata, timeout=WITNESS_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                size = _witness_size(error)
                if size is not None and size != old:
                    witness.known_size = size
                    continue
                log.warning(
                    "witness refused or unreachable",
                    extra={"witness": witness.address, "code": error.code().name},
                )
                return None
            witness.known_size = checkpoint.size
            if self._valid(checkpoint, response.cosignature):
                return bytes(response.cosignature)
            log.warning("witness cosignature did not verify", extra={"witness": witness.address})
            return None
        return None

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for witness in self._witnesses:
            await witness.channel.close(None)


# Every live publisher of the process (one, except in tests): one callback reads them all.
_publishers: weakref.WeakSet[WitnessPublisher] = weakref.WeakSet()


def _witness_lags() -> Iterable[tuple[float, Attributes]]:
    return [lag for publisher in list(_publishers) for lag in publisher.witness_lags()]


observable_gauge(LEDGER_WITNESS_LAG, _witness_lags)
