"""Triton Inference Server access (``tritonclient.grpc.aio``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tritonclient.grpc.aio import InferenceServerClient


class TritonSettings(BaseSettings):
    """``TRITON_URL``: host:port of Triton's gRPC endpoint."""

    model_config = SettingsConfigDict(env_prefix="TRITON_", extra="ignore", frozen=True)

    url: str = Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


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
