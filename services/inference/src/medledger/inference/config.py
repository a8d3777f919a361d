"""Settings of the inference service (see the README's configuration table)."""

from __future__ import annotations

from pydantic import DirectoryPath, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medledger.common.config import Port, ServiceSettings
from medledger.common.vault_layout import SERVICE_CLIENT_KEYS


class InferenceSettings(ServiceSettings):
    grpc_port: Port = 50054


class InferenceConfig(BaseSettings):
    """The ``INFERENCE_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="INFERENCE_", extra="ignore", frozen=True, case_sensitive=False
    )

    # The model repository Triton serves (the same folder, or the same volume mounted here):
    # RegisterModel hashes <name>/<version>/model.onnx in it, since Triton reports no hashes.
    model_repository: DirectoryPath
    # Vault transit Ed25519 key signing the inference service's client assertions (its
    # service token for the ledger); identity registers its public key.
    client_key: str = Field(
        default=SERVICE_CLIENT_KEYS["inference"], pattern=r"^[A-Za-z0-9_-]{1,128}$"
    )
    # How long a registration waits for the ledger.
    ledger_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
