"""Settings of the ledger service (see the README's configuration table)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medledger.common.config import HOST_PORT, Port, ServiceSettings


class LedgerSettings(ServiceSettings):
    grpc_port: Port = 50053
    # How the other replicas reach this one when it holds the writer lease (they forward
    # appends to it). Default: the listen address, right for one machine; a pod sets its IP.
    advertise_address: str = Field(default="", pattern=r"^$|" + HOST_PORT)
    # With TLS, the name in every replica's certificate (the ledger Service's) that a replica
    # checks when it forwards to the advertised address: no certificate names a pod IP, and a
    # lease rewritten to another address must not receive callers' tokens. "": its host.
    sequencer_tls_name: str = Field(default="", pattern=r"^$|^[A-Za-z0-9.-]{1,253}$")


class LedgerConfig(BaseSettings):
    """The ``LEDGER_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", extra="ignore", frozen=True, case_sensitive=False
    )

    # The checkpoint origin line, also the name of the log's signing key in signed notes.
    origin: str = Field(pattern=r"^[^\s+]{1,255}$")
    signing_key: str = Field(default="ledger-checkpoint", pattern=r"^[A-Za-z0-9_-]{1,128}$")
    batch_size: int = Field(default=256, ge=1, le=4096)
    # Extra wait to grow a batch; 0: a batch is whatever queued while the last one committed.
    batch_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    lease_ttl_seconds: float = Field(default=10.0, ge=1, le=300)
    # Comma-separated host:port of the witnesses to send each checkpoint to.
    witnesses: str = ""
    # Comma-separated C2SP verifier keys of those witnesses (cosignatures are checked).
    witness_vkeys: str = ""

    @field_validator("witnesses")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for address in _split(value):
            if not re.fullmatch(HOST_PORT, address):
                raise ValueError("must be a comma-separated list of host:port")
        return value

    @property
    def witness_addresses(self) -> list[str]:
        return _split(self.witnesses)

    @property
    def witness_verifier_keys(self) -> list[str]:
        return _split(self.witness_vkeys)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]
