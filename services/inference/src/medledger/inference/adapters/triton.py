"""Triton Inference Server access (``tritonclient.grpc.aio``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tritonclient.grpc.aio import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from medledger.common.errors import FailedPrecondition, Unavailable
from medledger.common.metric_catalog import TRITON_REQUEST_DURATION
from medledger.common.metrics import elapsed_ms, histogram
from medledger.inference.domain.registration import ModelTensors, Tensor

# Triton's answers that mean it did not answer (as tritonclient words gRPC's codes).
_UNREACHABLE: Final = frozenset(
    {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", None}
)


# tritonclient opens its own gRPC channel, which the OpenTelemetry interceptors never see: its
# calls are traced here, as client spans named by Triton's RPC (KServe v2's gRPC service).
TRITON_SERVICE: Final = "inference.GRPCInferenceService"
_tracer = trace.get_tracer("medledger.inference.triton")
_infer_duration = histogram(TRITON_REQUEST_DURATION)


@contextmanager
def triton_call(method: str, url: str, model: str, version: int) -> Iterator[dict[str, str]]:
    """A CLIENT span around one Triton RPC, carrying the model's name and version only (never
    its inputs); yields the headers that carry the trace context to Triton."""
    host, _, port = url.rpartition(":")
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc",
        "rpc.service": TRITON_SERVICE,
        "rpc.method": method,
        "server.address": host,
        "medledger.model.name": model,
        "medledger.model.version": version,
    }
    if port.isdigit():
        attributes["server.port"] = int(port)
    with _tracer.start_as_current_span(
        f"{TRITON_SERVICE}/{method}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,  # tritonclient's messages may quote the request
    ) as span:
        headers: dict[str, str] = {}
        inject(headers)
        try:
            yield headers
        except InferenceServerException as error:
            span.set_status(StatusCode.ERROR, str(error.status() or "UNAVAILABLE"))
            raise


class TritonSettings(BaseSettings):
    """``TRITON_URL``: host:port of Triton's gRPC endpoint; ``TRITON_TIMEOUT_SECONDS``: how
    long one call may take. ``TRITON_TLS_CA_FILE``: call Triton over TLS, trusting this CA
    (feature rows are derived from patients' records: across a network they go encrypted);
    with ``TRITON_TLS_CERT_FILE`` and ``TRITON_TLS_KEY_FILE`` too, present that client
    certificate (for a Triton started with ``--grpc-use-ssl-mutual``)."""

    model_config = SettingsConfigDict(env_prefix="TRITON_", extra="ignore", frozen=True)

    url: str = Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    tls_ca_file: FilePath | None = None
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> TritonSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TRITON_TLS_CERT_FILE and TRITON_TLS_KEY_FILE go together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a Triton client certificate needs TRITON_TLS_CA_FILE")
        return self


def triton_client(settings: TritonSettings) -> InferenceServerClient:
    """A client of Triton's gRPC endpoint: over TLS when a CA is configured."""
    if settings.tls_ca_file is None:
        return InferenceServerClient(settings.url)
    return InferenceServerClient(
        settings.url,
        ssl=True,
        root_certificates=str(settings.tls_ca_file),
        private_key=None if settings.tls_key_file is None else str(settings.tls_key_file),
        certificate_chain=None if settings.tls_cert_file is None else str(settings.tls_cert_file),
    )


class TritonProbe:
    """Health dependency: Triton reports itself ready."""

    name = "triton"

    def __init__(self, settings: TritonSettings) -> None:
        self._settings = settings

    async def check(self) -> None:
        client = triton_client(self._settings)
        try:
            if not await client.is_server_ready():
                raise ConnectionError("triton is not ready")
        finally:
            await client.close()


def _tensors(items: Any) -> tuple[Tensor, ...]:
    return tuple(Tensor(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)


class TritonModels:
    """The models Triton serves (the registry's ``ServedModels``), through one client opened
    on first use and closed by :meth:`aclose`."""

    def __init__(self, settings: TritonSettings) -> None:
        self._settings = settings
        self._url = settings.url
        self._timeout = settings.timeout_seconds
        self._client: InferenceServerClient | None = None

    def _open(self) -> InferenceServerClient:
        # Opened inside the serving event loop (grpc.aio channels belong to one loop).
        if self._client is None:
            self._client = triton_client(self._settings)
        return self._client

    def client(self) -> InferenceServerClient:
        """The client, for :class:`TritonInference` (one channel for both)."""
        return self._open()

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def url(self) -> str:
        return self._url

    async def served_tensors(self, name: str, version: int) -> ModelTensors | None:
        client = self._open()
        try:
            with triton_call("ModelReady", self._url, name, version) as headers:
                ready = await client.is_model_ready(
                    name, str(version), headers=headers, client_timeout=self._timeout
                )
            if not ready:
                return None
            with triton_call("ModelMetadata", self._url, name, version) as headers:
                metadata = await client.get_model_metadata(
                    name, str(version), headers=headers, client_timeout=self._timeout
                )
        except InferenceServerException as error:
            if error.status() in _UNREACHABLE:
                raise Unavailable("triton") from error
            return None  # unknown model or version: Triton serves no such thing
        return ModelTensors(_tensors(metadata.inputs), _tensors(metadata.outputs))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# Rows per Triton request: the models' max_batch_size (services/models: MAX_BATCH_SIZE).
MAX_ROWS_PER_REQUEST: Final = 4096
# Requests one inference sends at once (Triton's dynamic batcher joins them).
REQUESTS_AT_ONCE: Final = 4


class TritonInference:
    """Runs rows through a served model (the ``ModelRunner`` port): one request per
    :data:`MAX_ROWS_PER_REQUEST` rows, a few at once; Triton not answering is UNAVAILABLE,
    a model it does not serve FAILED_PRECONDITION (MODEL_NOT_SERVED)."""

    def __init__(self, models: TritonModels) -> None:
        self._models = models
        self._limit = asyncio.Semaphore(REQUESTS_AT_ONCE)

    async def run(
        self,
        name: str,
        version: int,
        input_name: str,
        rows: NDArray[np.float32],
        output_name: str,
    ) -> NDArray[Any]:
        chunks = [
            rows[start : start + MAX_ROWS_PER_REQUEST]
            for start in range(0, len(rows), MAX_ROWS_PER_REQUEST)
        ]
        answers = await asyncio.gather(
            *(self._one(name, version, input_name, chunk, output_name) for chunk in chunks)
        )
        return np.concatenate(answers) if answers else np.zeros((0,), dtype=np.float32)

    async def _one(
        self,
        name: str,
        version: int,
        input_name: str,
        rows: NDArray[np.float32],
        output_name: str,
    ) -> NDArray[Any]:
        given = InferInput(input_name, list(rows.shape), "FP32")
        given.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        async with self._limit:
            started = time.perf_counter()
            outcome = "error"
            try:
                with triton_call("ModelInfer", self._models.url, name, version) as headers:
                    answer = await self._models.client().infer(
                        name,
                        [given],
                        model_version=str(version),
                        outputs=[InferRequestedOutput(output_name)],
                        headers=headers,
                        client_timeout=self._models.timeout,
                    )
                outcome = "ok"
            except InferenceServerException as error:
                if error.status() in _UNREACHABLE:
                    raise Unavailable("triton") from error
                raise FailedPrecondition(
                    "Triton does not serve this model version as registered",
                    reason="MODEL_NOT_SERVED",
                ) from error
            finally:
                _infer_duration.record(elapsed_ms(started), {"model": name, "outcome": outcome})
        result: NDArray[Any] | None = answer.as_numpy(output_name)
        if result is None or len(result) != len(rows):
            raise Unavailable("triton", reason="TRITON_BAD_ANSWER")
        return result
