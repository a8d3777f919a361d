"""Configuration from environment variables, validated once at start-up.

Every service describes its settings as a subclass of :class:`ServiceSettings`.
:func:`load_settings` reads the environment and, on any mistake, raises
:class:`ConfigError` whose message names every wrong or missing variable at once,
so an operator fixes them in one go instead of one restart per typo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar, overload

from pydantic import AliasChoices, Field, FilePath, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (tests)
# A peer's gRPC address: host (name, IPv4 or [IPv6]) and port.
HOST_PORT = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$"


class ConfigError(Exception):
    """The environment does not describe a runnable service."""


class ServiceSettings(BaseSettings):
    """Settings every medledger process shares (the ``MEDLEDGER_*`` variables)."""

    model_config = SettingsConfigDict(
        env_prefix="MEDLEDGER_", extra="ignore", frozen=True, case_sensitive=False
    )

    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50050
    # A plaintext port serving only grpc.health.v1, for kubelet probes when the main port
    # requires mTLS (kubelet's gRPC probes cannot present a client certificate). 0: none.
    health_port: Port = 0
    # Serves the Prometheus text exposition of the service's metrics (GET /metrics) on the
    # gRPC host; the Helm chart sets 9464 (its container port named ``metrics``). 0: none.
    metrics_port: Port = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=300)
    health_interval_seconds: float = Field(default=2.0, gt=0, le=60)
    dependency_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    keepalive_time_seconds: int = Field(default=30, ge=1)
    keepalive_timeout_seconds: int = Field(default=10, ge=1)
    # Access tokens every RPC must carry: their issuer and the audience this service is.
    token_issuer: str = "medledger://identity"  # noqa: S105 (a URI)
    token_audience: str = "medledger"  # noqa: S105 (a name)
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    tls_ca_file: FilePath | None = None

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "MEDLEDGER_TLS_KEY_FILE must be set together with MEDLEDGER_TLS_CERT_FILE"
            )
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "MEDLEDGER_TLS_CA_FILE (mTLS) needs MEDLEDGER_TLS_CERT_FILE and _KEY_FILE"
            )
        return self

    @property
    def listen_address(self) -> str:
        host = f"[{self.grpc_host}]" if ":" in self.grpc_host else self.grpc_host
        return f"{host}:{self.grpc_port}"


class MongoSettings(BaseSettings):
    """The MongoDB connection (``MONGODB_URI`` is the standard name drivers and charts use)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)

    mongodb_uri: str = Field(
        validation_alias=AliasChoices("MONGODB_URI"),
        pattern=r"^mongodb(\+srv)?://",
        repr=False,  # may hold a password
    )
    mongodb_database: str = Field(
        default="medledger",
        validation_alias=AliasChoices("MEDLEDGER_MONGODB_DATABASE"),
        pattern=r"^[A-Za-z0-9_-]{1,63}$",
    )


class VaultSettings(BaseSettings):
    """How to reach Vault (or OpenBao) and authenticate (the ``VAULT_*`` variables)."""

    model_config = SettingsConfigDict(
        env_prefix="VAULT_", extra="ignore", frozen=True, case_sensitive=False
    )

    addr: str = Field(pattern=r"^https?://")
    auth_method: Literal["token", "approle", "kubernetes"] = "token"
    token: str | None = Field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = Field(default=None, repr=False)
    k8s_role: str | None = None
    k8s_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    k8s_mount: str = "kubernetes"
    transit_mount: str = "transit"
    namespace: str | None = None
    cacert: FilePath | None = None

    @model_validator(mode="after")
    def _auth_is_complete(self) -> VaultSettings:
        if self.auth_method == "token" and not self.token:
            raise ValueError("VAULT_TOKEN is required when VAULT_AUTH_METHOD=token")
        if self.auth_method == "approle" and not (self.role_id and self.secret_id):
            raise ValueError("VAULT_ROLE_ID/VAULT_SECRET_ID: both are required for approle")
        if self.auth_method == "kubernetes" and not self.k8s_role:
            raise ValueError("VAULT_K8S_ROLE is required when VAULT_AUTH_METHOD=kubernetes")
        return self


class PeerSettings(BaseSettings):
    """Addresses of the other medledger services, for the services that call them."""

    model_config = SettingsConfigDict(
        env_prefix="MEDLEDGER_", extra="ignore", frozen=True, case_sensitive=False
    )

    identity_addr: str = Field(default="127.0.0.1:50051", pattern=HOST_PORT)
    record_addr: str = Field(default="127.0.0.1:50052", pattern=HOST_PORT)
    ledger_addr: str = Field(default="127.0.0.1:50053", pattern=HOST_PORT)


A = TypeVar("A", bound=BaseSettings)
B = TypeVar("B", bound=BaseSettings)
C = TypeVar("C", bound=BaseSettings)
D = TypeVar("D", bound=BaseSettings)
E = TypeVar("E", bound=BaseSettings)
F = TypeVar("F", bound=BaseSettings)


def _variable_name(model: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "(settings)"
    field_name = str(loc[0])
    field = model.model_fields.get(field_name)
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0]).upper()
    prefix = str(model.model_config.get("env_prefix", ""))
    return f"{prefix}{field_name}".upper()


def _problems(model: type[BaseSettings], exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        name = _variable_name(model, tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        elif name == "(settings)":  # a cross-field rule: its message starts with the name
            name, _, message = message.partition(" ")
            name = name.rstrip(":")
        problems.append(f"  - {name}: {message}")
    return problems


@overload
def load_settings(a: type[A], /) -> tuple[A]: ...
@overload
def load_settings(a: type[A], b: type[B], /) -> tuple[A, B]: ...
@overload
def load_settings(a: type[A], b: type[B], c: type[C], /) -> tuple[A, B, C]: ...
@overload
def load_settings(a: type[A], b: type[B], c: type[C], d: type[D], /) -> tuple[A, B, C, D]: ...
@overload
def load_settings(
    a: type[A], b: type[B], c: type[C], d: type[D], e: type[E], /
) -> tuple[A, B, C, D, E]: ...
@overload
def load_settings(
    a: type[A], b: type[B], c: type[C], d: type[D], e: type[E], f: type[F], /
) -> tuple[A, B, C, D, E, F]: ...
def load_settings(*models: type[BaseSettings]) -> tuple[BaseSettings, ...]:
    """Builds each settings model from the environment, or raises one :class:`ConfigError`
    naming every variable that is wrong or missing across all of them. Values are never
    echoed: they may be secrets."""
    loaded: list[BaseSettings] = []
    problems: list[str] = []
    for model in models:
        try:
            loaded.append(model())
        except ValidationError as exc:
            problems.extend(_problems(model, exc))
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(dict.fromkeys(problems)))
    return tuple(loaded)
