"""Settings of the witness service (see the README's configuration table).

Besides the shared ``MEDLEDGER_*`` settings a witness needs its identity and the logs it
follows; the names carry no ``MEDLEDGER_`` prefix because a witness is normally run by another
organisation, next to other software:

- ``WITNESS_NAME``: the witness's key name on cosignature lines (``witness-a.example.org``);
- ``WITNESS_KEY``: the Vault transit key (Ed25519) that cosigns;
- ``WITNESS_LOG_VKEYS``: comma-separated C2SP verifier keys (type 0x01, Ed25519) of the logs
  it follows; a key's name is the log's checkpoint origin.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode

from medledger.common.config import Port, ServiceSettings
from medledger.tlog import check_key_name
from medledger.witness.domain.trusted_logs import TrustedLogs


class WitnessSettings(ServiceSettings):
    # An alias (the field's own name) lifts the MEDLEDGER_ prefix: WITNESS_NAME, not
    # MEDLEDGER_WITNESS_NAME. It also makes the config loader name the variable correctly.
    grpc_port: Port = 50055
    witness_name: str = Field(validation_alias=AliasChoices("witness_name"))
    witness_key: str = Field(
        validation_alias=AliasChoices("witness_key"),
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
    )
    witness_log_vkeys: Annotated[tuple[str, ...], NoDecode] = Field(
        validation_alias=AliasChoices("witness_log_vkeys")
    )

    @field_validator("witness_name")
    @classmethod
    def _is_a_key_name(cls, value: str) -> str:
        try:
            check_key_name(value)
        except ValueError as error:
            raise ValueError("must be a key name: not empty, no spaces, no '+'") from error
        return value

    @field_validator("witness_log_vkeys", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("witness_log_vkeys")
    @classmethod
    def _are_log_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one log verifier key")
        TrustedLogs.from_vkeys(value)
        return value

    def trusted_logs(self) -> TrustedLogs:
        return TrustedLogs.from_vkeys(self.witness_log_vkeys)
