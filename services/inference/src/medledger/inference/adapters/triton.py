"""Triton Inference Server access (``tritonclient.grpc.aio``)."""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from medledger.common.errors import Unavailable
from medledger.inference.domain.registration import ModelTensors, Tensor

# Triton's answers that mean it did not answer (as tritonclient words gRPC's codes).
_UNREACHABLE: Final = frozenset(
    {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", None}
)


class TritonSettings(BaseSettings):
    """``TRITON_URL``: host:port of Triton's gRPC endpoint; ``TRITON_TIMEOUT_SECONDS``: how
    long one call may take."""

    model_config = SettingsConfigDict(env_prefix="TRITON_", extra="ignore", frozen=True)

    url: str = Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class TritonProbe:
    """Health dependency: Triton reports itself ready."""

    name = "triton"

    def __init__(self, settings: TritonSettings) -> None:
        self._url = settings.url

    async def check(self) -> None:
        client = InferenceServerClient(self._url)
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
        self._url = settings.url
        self._timeout = settings.timeout_seconds
        self._client: InferenceServerClient | None = None

    def _open(self) -> InferenceServerClient:
        # Opened inside the serving event loop (grpc.aio channels belong to one loop).
        if self._client is None:
            self._client = InferenceServerClient(self._url)
        return self._client

    async def served_tensors(self, name: str, version: int) -> ModelTensors | None:
        client = self._open()
        try:
            if not await client.is_model_ready(name, str(version), client_timeout=self._timeout):
                return None
            metadata = await client.get_model_metadata(
                name, str(version), client_timeout=self._timeout
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
