"""Settings of the record service (see the README's configuration table)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medledger.common.config import Port, ServiceSettings
from medledger.common.vault_layout import SERVICE_CLIENT_KEYS


class RecordSettings(ServiceSettings):
    grpc_port: Port = 50052


class RecordConfig(BaseSettings):
    """The ``RECORD_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="RECORD_", extra="ignore", frozen=True, case_sensitive=False
    )

    # Vault transit Ed25519 key signing the record's client assertions (its service tokens
    # for identity's CheckAccess and the ledger); identity registers its public key.
    client_key: str = Field(
        default=SERVICE_CLIENT_KEYS["record"], pattern=r"^[A-Za-z0-9_-]{1,128}$"
    )
    # Unwrapped patient data keys kept in memory, and for how long each.
    key_cache_size: int = Field(default=1024, ge=1, le=1_000_000)
    key_cache_ttl_seconds: float = Field(default=60.0, gt=0, le=3600)
    # How long a write waits for the ledger, and for identity's access decision.
    ledger_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    access_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # A prepared version older than this is a crashed writer's: the next writer replaces it
    # and the sweep removes it. Longer than any write can take.
    pending_timeout_seconds: float = Field(default=120.0, ge=10, le=86_400)
    sweep_interval_seconds: float = Field(default=60.0, ge=1, le=86_400)
    # Rows of a CSV lab file written in one ledger step (an AppendBatch holds at most 1,000).
    csv_chunk_rows: int = Field(default=500, ge=1, le=1000)

    @model_validator(mode="after")
    def _pending_outlives_a_write(self) -> Self:
        if self.pending_timeout_seconds <= 2 * self.ledger_timeout_seconds:
            raise ValueError(
                "RECORD_PENDING_TIMEOUT_SECONDS must exceed twice RECORD_LEDGER_TIMEOUT_SECONDS"
                " (a write still waiting for the ledger must not lose its version)"
            )
        return self
