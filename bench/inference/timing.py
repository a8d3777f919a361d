"""Where a prediction's time goes: ``Predictor`` (``domain/predictor.py``) wired in the
benchmark's process as ``medledger.inference.runtime`` wires it (same adapters, default
``INFERENCE_*`` settings, the inference process's database, the same Triton, record service
and ledger), with each port timed:

- ``model check``: the registry lookup (Mongo) and the model file's SHA-256 (every call);
- ``record read``: ``RecordClient.read``, the patient's Patient and Observations through the
  record service (CheckAccess and a ledgered read there);
- ``Triton``: ``TritonInference.run``, the row and its 2^n mixes in one batch;
- ``ledger append``: the INFERENCE_MADE entry's durable append;
- ``record writes``: the RiskAssessment and its Provenance, through the record service.

The rest of a call (inputs, mixes and Shapley values, the prediction document, the
commitment) is ``other``. Each part is timed per call, so its p50 can be set against the
whole call's. The calls go straight to ``Predictor`` (no gRPC server, token check or message
conversion in front), on the benchmark's event loop, which also serves identity and the
ledger.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from pymongo import AsyncMongoClient

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.config import VaultSettings
from medledger.common.ledger_client import LedgerClient
from medledger.common.scopes import service_client_id
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.vault import VaultTransit
from medledger.inference.adapters.ledger_events import LedgerEvents
from medledger.inference.adapters.model_files import ModelFiles
from medledger.inference.adapters.model_store import ModelStore
from medledger.inference.adapters.patient_records import RecordClient
from medledger.inference.adapters.triton import TritonInference, TritonModels, TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.domain.features import Coding
from medledger.inference.domain.prediction_ledger import SealedPrediction
from medledger.inference.domain.predictor import (
    Caller,
    NewEntry,
    Predictor,
    RecordRead,
    WrittenResource,
)
from medledger.inference.domain.registry import LATEST, ModelRegistry, RegisteredModel
from medledger.inference.runtime import SERVICE_SCOPES

PARTS: Final = ("model check", "record read", "Triton", "ledger append", "record writes")
# The parts of the call being timed (one per concurrent call: a context variable).
_call: ContextVar[dict[str, float] | None] = ContextVar("call", default=None)


@dataclass
class PartTimes:
    """Each finished call's seconds by part, and the Triton calls' rows and seconds."""

    calls: list[dict[str, float]] = field(default_factory=list)
    triton_rows: int = 0
    triton_seconds: float = 0.0

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            parts = _call.get()
            if parts is not None:
                parts[part] = parts.get(part, 0.0) + spent

    async def call(self, operation: Awaitable[Any]) -> dict[str, float]:
        """Runs ``operation`` as one timed call (its parts, and ``total``)."""
        parts: dict[str, float] = defaultdict(float)
        token = _call.set(parts)
        started = time.perf_counter()
        try:
            await operation
        finally:
            _call.reset(token)
        parts["total"] = time.perf_counter() - started
        self.calls.append(dict(parts))
        return parts

    def reset(self) -> None:
        self.calls.clear()
        self.triton_rows = 0
        self.triton_seconds = 0.0


class TimedRegistry(ModelRegistry):
    def __init__(self, times: PartTimes, *args: Any) -> None:
        super().__init__(*args)
        self._times = times

    async def get(self, name: str, version: int = LATEST) -> RegisteredModel:
        with self._times.timing("model check"):
            return await super().get(name, version)


class TimedFiles(ModelFiles):
    def __init__(self, times: PartTimes, repository: Path) -> None:
        super().__init__(repository)
        self._times = times

    async def sha256(self, name: str, version: int) -> bytes | None:
        with self._times.timing("model check"):
            return await super().sha256(name, version)


@dataclass
class TimedRunner:
    inner: TritonInference
    times: PartTimes

    async def run(
        self,
        name: str,
        version: int,
        input_name: str,
        rows: NDArray[np.float32],
        output_name: str,
    ) -> NDArray[Any]:
        started = time.perf_counter()
        with self.times.timing("Triton"):
            answer = await self.inner.run(name, version, input_name, rows, output_name)
        self.times.triton_rows += len(rows)
        self.times.triton_seconds += time.perf_counter() - started
        return answer


@dataclass
class TimedRecords:
    inner: RecordClient
    times: PartTimes

    async def read(
        self, caller: Caller, patient_id: str, codes: Sequence[Coding], *, with_patient: bool
    ) -> RecordRead:
        with self.times.timing("record read"):
            return await self.inner.read(caller, patient_id, codes, with_patient=with_patient)

    async def create_all(
        self, caller: Caller, entries: Sequence[NewEntry], idempotency_key: str
    ) -> list[WrittenResource]:
        with self.times.timing("record writes"):
            return await self.inner.create_all(caller, entries, idempotency_key)


@dataclass
class TimedLedger:
    inner: LedgerEvents
    times: PartTimes

    async def append_prediction(
        self, sealed: SealedPrediction, caller: Caller
    ) -> tuple[bytes, ledger_pb2.Receipt]:
        with self.times.timing("ledger append"):
            return await self.inner.append_prediction(sealed, caller)


@dataclass
class InstrumentedPredictor:
    predictor: Predictor
    times: PartTimes
    close: Callable[[], Awaitable[None]]


def instrumented_predictor(
    mongo_uri: str,
    database: str,
    vault: VaultSettings,
    triton: TritonSettings,
    repository: Path,
    *,
    identity_addr: str,
    ledger_addr: str,
    record_addr: str,
) -> InstrumentedPredictor:
    """``inference_runtime``'s wiring of the Predictor (default settings), each port timed."""
    settings, config = InferenceSettings(), InferenceConfig(model_repository=repository)
    times = PartTimes()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, appname="bench-inference", tz_aware=True, serverSelectionTimeoutMS=5000
    )
    transit = VaultTransit(vault)
    tokens = ServiceTokenSource(
        transit,
        config.client_key,
        service_client_id("inference"),
        identity_addr,
        settings,
        scope=SERVICE_SCOPES,
        audience=settings.token_audience,
    )
    ledger = LedgerClient(ledger_addr, settings, token=tokens)
    served = TritonModels(triton)
    files = TimedFiles(times, repository)
    events = LedgerEvents(ledger, timeout=config.ledger_timeout_seconds)
    registry = TimedRegistry(times, ModelStore(mongo, database), served, files, events)
    records = RecordClient(record_addr, settings, timeout=config.ledger_timeout_seconds)
    predictor = Predictor(
        registry,
        files,
        TimedRunner(TritonInference(served), times),
        TimedRecords(records, times),
        TimedLedger(events, times),
    )

    async def close() -> None:
        await served.aclose()
        await records.aclose()
        await ledger.aclose()
        await tokens.aclose()
        await mongo.close()
        transit.close()

    return InstrumentedPredictor(predictor, times, close)
