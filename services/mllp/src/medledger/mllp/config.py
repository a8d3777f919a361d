"""Settings of the MLLP listener (the README's configuration table has them all).

Besides the shared ``MEDLEDGER_*`` settings (the record and identity addresses, the mTLS files
for its own calls to them) the listener reads ``MEDLEDGER_MLLP_*``: where it listens, its
limits, its TLS for the senders, and the facilities file.

The facilities file (JSON) says which facilities may send and as which medledger client::

    {"facilities": [{
        "id": "hospital-a",
        "client_id": "hospital-a-hl7",
        "key_file": "keys/hospital-a-hl7.jwk",
        "sending_facilities": ["HOSPITAL_A"],
        "certificate_names": ["hl7.hospital-a.example"],
        "scope": "system/Patient.cu system/Encounter.cu ..."
    }]}

``key_file`` (the client's private JWK) is relative to the file's folder; ``scope`` may be
left out; ``certificate_names`` are needed only with mTLS.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationError, model_validator

from medledger.api.common.v1 import purpose_pb2
from medledger.common.config import ConfigError, Port, ServiceSettings
from medledger.common.keyfiles import ClientKey, KeyFileError, load_private_key, signing_algorithm
from medledger.common.service_tokens import DEFAULT_TOKEN_ENDPOINT
from medledger.mllp.domain.facilities import DEFAULT_SCOPE, Facility, FacilityDirectory

MIB = 1024 * 1024
# The port IANA registered for HL7 over MLLP.
MLLP_PORT = 2575
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,254}$"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MllpSettings(ServiceSettings):
    mllp_host: str = "127.0.0.1"
    mllp_port: Port = MLLP_PORT
    mllp_facilities_file: FilePath
    # The listener's own certificate and the CA its senders' client certificates chain to:
    # all three, or none (then only loopback, and MSH-4 says who sends).
    mllp_tls_cert_file: FilePath | None = None
    mllp_tls_key_file: FilePath | None = None
    mllp_tls_client_ca_file: FilePath | None = None
    mllp_max_message_bytes: int = Field(default=MIB, ge=1024, le=64 * MIB)
    # An interface engine keeps its connection open between messages; one silent this long
    # is closed (it reconnects when it next sends).
    mllp_idle_timeout_seconds: float = Field(default=300.0, gt=0, le=86400)
    mllp_max_connections: int = Field(default=64, ge=1, le=10000)
    # How long one message may take in the record service before the sender gets AR.
    mllp_ingest_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    mllp_purpose: Literal["TREAT", "HOPERAT", "HPAYMT", "HRESCH", "PUBHLTH"] = "TREAT"
    # The "aud" of the facilities' client assertions: identity's IDENTITY_TOKEN_ENDPOINT.
    token_endpoint: str = DEFAULT_TOKEN_ENDPOINT

    @model_validator(mode="after")
    def _tls_or_loopback(self) -> MllpSettings:
        tls = (self.mllp_tls_cert_file, self.mllp_tls_key_file, self.mllp_tls_client_ca_file)
        if any(tls) and not all(tls):
            raise ValueError(
                "MEDLEDGER_MLLP_TLS_CERT_FILE: set it with MEDLEDGER_MLLP_TLS_KEY_FILE and "
                "MEDLEDGER_MLLP_TLS_CLIENT_CA_FILE (senders are known by their certificates)"
            )
        if not any(tls) and not is_loopback(self.mllp_host):
            raise ValueError(
                "MEDLEDGER_MLLP_HOST: without mTLS (MEDLEDGER_MLLP_TLS_*) the listener trusts "
                "MSH-4, so it listens on loopback only"
            )
        return self

    @property
    def mutual_tls(self) -> bool:
        return self.mllp_tls_client_ca_file is not None

    @property
    def purpose(self) -> purpose_pb2.PurposeOfUse.ValueType:
        return purpose_pb2.PurposeOfUse.Value(f"PURPOSE_OF_USE_{self.mllp_purpose}")


class _FacilityEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_NAME)
    client_id: str = Field(pattern=_NAME)
    key_file: Path
    sending_facilities: list[str] = Field(min_length=1)
    certificate_names: list[str] = []
    scope: str = Field(default=DEFAULT_SCOPE, min_length=1)


class _FacilitiesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    facilities: list[_FacilityEntry] = Field(min_length=1)


def _problem(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{path}: {where}: {first['msg']}"


def load_facilities(
    path: Path, *, mutual_tls: bool
) -> tuple[FacilityDirectory, dict[str, ClientKey]]:
    """The facilities of ``path`` and each one's client key (by facility id);
    :class:`ConfigError` names the first problem (never a key's content)."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
        parsed = _FacilitiesFile.model_validate(document)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not JSON") from None
    except ValidationError as error:
        raise ConfigError(_problem(path, error)) from None
    facilities: list[Facility] = []
    keys: dict[str, ClientKey] = {}
    for entry in parsed.facilities:
        if entry.id in keys:
            raise ConfigError(f"{path}: facility {entry.id!r} is listed twice")
        if mutual_tls and not entry.certificate_names:
            raise ConfigError(
                f"{path}: facility {entry.id!r} has no certificate_names (mTLS knows senders "
                "by their certificates)"
            )
        key_file = entry.key_file if entry.key_file.is_absolute() else path.parent / entry.key_file
        try:
            keys[entry.id] = load_private_key(key_file)
            signing_algorithm(keys[entry.id])
        except KeyFileError as error:
            raise ConfigError(f"facility {entry.id!r}: {error}") from None
        facilities.append(
            Facility(
                facility_id=entry.id,
                client_id=entry.client_id,
                key_file=key_file,
                sending_facilities=frozenset(entry.sending_facilities),
                certificate_names=frozenset(entry.certificate_names),
                scope=entry.scope,
            )
        )
    try:
        return FacilityDirectory(facilities), keys
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
