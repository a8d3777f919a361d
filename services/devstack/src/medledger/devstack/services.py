"""The medledger services as processes: their ports, environment and gRPC health.

The stack runs two witnesses, as two organisations would: ``witness-a`` and ``witness-b`` are
both ``python -m medledger.witness``, each with its own Vault mount, key, policy and token, name
and database. The services trust each other through public keys read from Vault
(:class:`StackKeys`): the witnesses follow the ledger's checkpoint key, the ledger collects
both witnesses' cosignatures. Each service gets its own Vault token only, never the root token.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

import hvac
import hvac.exceptions
import requests

from medledger.common.vault_layout import (
    LEDGER_CHECKPOINT_KEY,
    SERVICE_CLIENT_KEYS,
    TRANSIT_MOUNT,
    WITNESS_A_KEY,
    WITNESS_B_KEY,
    witness_mount,
)
from medledger.devstack.probes import Health, grpc_health
from medledger.devstack.process import ComponentStartError, StackError
from medledger.devstack.server import Server
from medledger.tlog import SIG_COSIGNATURE_V1, SIG_ED25519, VerifierKey


@dataclass(frozen=True)
class WitnessIdentity:
    """One witness of the stack: its Vault transit key, its key name, its own database and
    its own transit mount."""

    key: str
    name: str
    database: str
    mount: str


WITNESSES: Final[Mapping[str, WitnessIdentity]] = MappingProxyType(
    {
        "witness-a": WitnessIdentity(
            WITNESS_A_KEY,
            "witness-a.medledger.local",
            "medledger_witness_a",
            witness_mount("witness-a"),
        ),
        "witness-b": WitnessIdentity(
            WITNESS_B_KEY,
            "witness-b.medledger.local",
            "medledger_witness_b",
            witness_mount("witness-b"),
        ),
    }
)
# Start order: each service starts after those it calls (the ledger calls the witnesses).
SERVICE_PORTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "witness-a": 50055,
        "witness-b": 50056,
        "ledger": 50053,
        "identity": 50051,
        "record": 50052,
        "inference": 50054,
    }
)
LEDGER_ORIGIN: Final = "medledger.local/ledger"
# Each service that keeps data has a database of its own (and, in the local stack, a Mongo user
# allowed nothing else): no service can read or rewrite another's data.
SERVICE_DATABASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "identity": "medledger_identity",
        "record": "medledger_record",
        "ledger": "medledger_ledger",
        "inference": "medledger_inference",
        **{name: witness.database for name, witness in WITNESSES.items()},
    }
)
VAULT_TIMEOUT_S: Final = 10
# The operators' admin client identity creates at its first start (its private key stays
# under .medledger/keys/), and the services identity registers as clients with their Vault keys.
BOOTSTRAP_ADMIN_CLIENT: Final = "ops-admin"
IDENTITY_SERVICE_CLIENTS: Final = ",".join(SERVICE_CLIENT_KEYS)


def service_module(name: str) -> str:
    """The package a stack service runs: ``python -m medledger.<module>``."""
    return "witness" if name in WITNESSES else name


@dataclass(frozen=True)
class StackKeys:
    """The public keys the services trust each other by, as C2SP verifier keys."""

    ledger_vkey: str
    """The ledger's checkpoint key (Ed25519, type 0x01), named by the log's origin."""
    witness_vkeys: Mapping[str, str]
    """Each witness's cosignature key (type 0x04), by stack service name."""

    @classmethod
    def from_public_keys(cls, public_keys: Mapping[str, bytes]) -> StackKeys:
        """The verifier keys for the raw Ed25519 public keys of the Vault transit keys
        (``public_keys`` maps transit key name to key)."""
        ledger = VerifierKey.for_key(LEDGER_ORIGIN, SIG_ED25519, public_keys[LEDGER_CHECKPOINT_KEY])
        witnesses = {
            service: str(VerifierKey.for_key(w.name, SIG_COSIGNATURE_V1, public_keys[w.key]))
            for service, w in WITNESSES.items()
        }
        return cls(ledger_vkey=str(ledger), witness_vkeys=MappingProxyType(witnesses))


def latest_public_key(client: hvac.Client, key: str, mount: str = TRANSIT_MOUNT) -> bytes:
    """The raw public key of the latest version of transit key ``key``."""
    data = cast(dict[str, Any], client.secrets.transit.read_key(key, mount_point=mount))
    latest = str(data["data"]["latest_version"])
    return base64.b64decode(data["data"]["keys"][latest]["public_key"])


def read_stack_keys(vault_addr: str, token: str) -> StackKeys:
    """The stack's verifier keys, from the public keys of its transit keys in Vault
    (``token``: one that may read them all, the operators')."""
    client = hvac.Client(url=vault_addr, token=token, timeout=VAULT_TIMEOUT_S)
    mounts = {LEDGER_CHECKPOINT_KEY: TRANSIT_MOUNT, **{w.key: w.mount for w in WITNESSES.values()}}
    names = list(mounts)
    try:
        return StackKeys.from_public_keys(
            {name: latest_public_key(client, name, mount) for name, mount in mounts.items()}
        )
    except (hvac.exceptions.VaultError, requests.exceptions.RequestException, KeyError) as exc:
        raise StackError(
            f"vault: cannot read the public keys of {', '.join(names)} at {vault_addr} "
            f"({type(exc).__name__}); is vault up and provisioned?"
        ) from exc
    finally:
        client.adapter.close()


@dataclass(frozen=True)
class IdentityBootstrap:
    """The admin client identity creates at its first start: its id and public JWKS file."""

    client_id: str
    jwks_file: Path


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services find their dependencies and each other, each service's own Vault
    token (``vault_tokens``, by service name), and the keys they trust (``keys`` None: not
    known yet; the services then run without witnesses, and a witness cannot start)."""

    mongo_uri: str
    vault_addr: str
    vault_tokens: Mapping[str, str]
    triton_url: str
    service_ports: Mapping[str, int] = field(default_factory=lambda: dict(SERVICE_PORTS))
    host: str = "127.0.0.1"
    keys: StackKeys | None = None
    identity_bootstrap: IdentityBootstrap | None = None
    # Each service's own Mongo connection string (its user's), by service name; a service
    # not in it uses ``mongo_uri`` (a server without authentication, as in the tests).
    mongo_uris: Mapping[str, str] = field(default_factory=dict)
    # The model repository Triton serves, which the inference service reads to hash the
    # model files (INFERENCE_MODEL_REPOSITORY); None: not set.
    model_repository: Path | None = None
    # Where the services send their spans (OTLP/gRPC: the local trace UI); "": nowhere.
    otlp_endpoint: str = ""

    def service_addr(self, name: str) -> str:
        return f"{self.host}:{self.service_ports[name]}"

    @property
    def witnesses(self) -> list[str]:
        """The stack's witnesses that have a port here, in a stable order."""
        return [name for name in WITNESSES if name in self.service_ports]


def _ledger_env(endpoints: StackEndpoints) -> dict[str, str]:
    """How every service finds the log and its witnesses. ``LEDGER_WITNESSES`` and
    ``LEDGER_WITNESS_VKEYS`` list the same witnesses in the same order; both stay empty until
    the keys are known, so no witness is ever named without the key to check it by."""
    keys = endpoints.keys
    witnesses = endpoints.witnesses if keys is not None else []
    return {
        "LEDGER_ORIGIN": LEDGER_ORIGIN,
        "LEDGER_WITNESSES": ",".join(endpoints.service_addr(w) for w in witnesses),
        "LEDGER_WITNESS_VKEYS": ",".join(keys.witness_vkeys[w] for w in witnesses) if keys else "",
    }


def _witness_env(name: str, endpoints: StackEndpoints) -> dict[str, str]:
    witness = WITNESSES[name]
    env = {
        "WITNESS_NAME": witness.name,
        "WITNESS_KEY": witness.key,
        "VAULT_TRANSIT_MOUNT": witness.mount,
        # Its own database, as another organisation's witness would have.
        "MEDLEDGER_MONGODB_DATABASE": witness.database,
    }
    if endpoints.keys is not None:
        env["WITNESS_LOG_VKEYS"] = endpoints.keys.ledger_vkey
    return env


def _identity_env(endpoints: StackEndpoints) -> dict[str, str]:
    """Identity registers the calling services as clients; with a bootstrap, it also creates
    the operators' admin client (never replacing one that exists)."""
    env = {"IDENTITY_SERVICE_CLIENTS": IDENTITY_SERVICE_CLIENTS}
    bootstrap = endpoints.identity_bootstrap
    if bootstrap is not None:
        env["IDENTITY_BOOTSTRAP_CLIENT_ID"] = bootstrap.client_id
        env["IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE"] = str(bootstrap.jwks_file.resolve())
    return env


def process_env(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every medledger process of the stack starts from: ``base`` (default:
    ours) without any ``VAULT_*``/``BAO_*`` setting or service identity of the shell, the
    OpenTelemetry exporters off unless the user configured ``OTEL_*``, unbuffered output."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.upper().startswith(("VAULT_", "BAO_"))
    }
    if not any(key.startswith("OTEL_") for key in env):
        env["OTEL_TRACES_EXPORTER"] = "none"
        env["OTEL_METRICS_EXPORTER"] = "none"
        env["OTEL_LOGS_EXPORTER"] = "none"
    for inherited in (
        "WITNESS_NAME",
        "WITNESS_KEY",
        "WITNESS_LOG_VKEYS",
        "IDENTITY_BOOTSTRAP_CLIENT_ID",
        "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE",
    ):
        env.pop(inherited, None)  # who the services are comes from the stack, never the shell
    env.update({"PYTHONUNBUFFERED": "1", "OTEL_SERVICE_NAME": name})
    return env


def service_env(
    name: str, endpoints: StackEndpoints, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment that runs service ``name`` against ``endpoints``.

    ``base`` (default: our environment) is kept, except that the settings below win and no
    ``VAULT_*``/``BAO_*`` setting of ``base`` is kept (a shell's root token never reaches a
    service): the service authenticates with its own token only. The user's own ``OTEL_*``
    variables are kept as they are; without any, the services' spans go to
    ``endpoints.otlp_endpoint`` when set (the local trace UI, which takes no metrics), and
    nothing is exported otherwise.
    """
    env = process_env(name, base)
    configured = any(key.startswith("OTEL_") for key in (os.environ if base is None else base))
    if endpoints.otlp_endpoint and not configured:
        env["OTEL_TRACES_EXPORTER"] = "otlp"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoints.otlp_endpoint
    env.update(
        {
            "MEDLEDGER_GRPC_HOST": endpoints.host,
            "MEDLEDGER_GRPC_PORT": str(endpoints.service_ports[name]),
            "VAULT_ADDR": endpoints.vault_addr,
            "MEDLEDGER_IDENTITY_ADDR": endpoints.service_addr("identity"),
            "MEDLEDGER_RECORD_ADDR": endpoints.service_addr("record"),
            "MEDLEDGER_LEDGER_ADDR": endpoints.service_addr("ledger"),
            **_ledger_env(endpoints),
        }
    )
    token = endpoints.vault_tokens.get(name)
    if token:
        env["VAULT_TOKEN"] = token
    database = SERVICE_DATABASES.get(name)
    if database is None:
        # It keeps no data: no Mongo credential, not even one from the shell.
        env.pop("MONGODB_URI", None)
        env.pop("MEDLEDGER_MONGODB_DATABASE", None)
    else:
        env["MONGODB_URI"] = endpoints.mongo_uris.get(name, endpoints.mongo_uri)
        env["MEDLEDGER_MONGODB_DATABASE"] = database
    if name == "inference":
        env["TRITON_URL"] = endpoints.triton_url
        env.pop("INFERENCE_MODEL_REPOSITORY", None)
        if endpoints.model_repository is not None:
            env["INFERENCE_MODEL_REPOSITORY"] = str(endpoints.model_repository.resolve())
    if name in WITNESSES:
        env.update(_witness_env(name, endpoints))
    if name == "identity":
        env.update(_identity_env(endpoints))
    return env


def service_available(name: str) -> bool:
    """Whether stack service ``name`` (``python -m medledger.<module>``) can run here."""
    try:
        return importlib.util.find_spec(f"medledger.{service_module(name)}.__main__") is not None
    except ModuleNotFoundError:
        return False


class ServiceServer(Server):
    """One medledger service: ``<this python> -m medledger.<name>``, ready when SERVING."""

    def __init__(
        self,
        name: str,
        *,
        endpoints: StackEndpoints,
        log_file: Path,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        self.component = name
        self.endpoints = endpoints

    @property
    def port(self) -> int:
        return self.endpoints.service_ports[self.component]

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def address(self) -> str:
        return self.endpoints.service_addr(self.component)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", f"medledger.{service_module(self.component)}"]

    def env(self) -> dict[str, str]:
        return service_env(self.component, self.endpoints)

    def prepare(self) -> None:
        if not service_available(self.component):
            module = service_module(self.component)
            raise ComponentStartError(
                self.component,
                None,
                f"`python -m medledger.{module}` is not available in {sys.prefix}",
            )
        if not self.endpoints.vault_tokens.get(self.component):
            raise ComponentStartError(
                self.component, None, "no Vault token of its own (is vault provisioned?)"
            )
        if self.component in WITNESSES and self.endpoints.keys is None:
            # A witness cannot start without the log's key, and its own token cannot read
            # another organisation's keys; other services run without witnesses until given
            # the keys (``DevStack`` always gives them).
            raise ComponentStartError(
                self.component, None, "the log's verifier key is not known (StackEndpoints.keys)"
            )

    def after_start(self) -> None:
        self.process.wait_ready(
            lambda: self.health() is Health.SERVING,
            timeout=self.start_timeout,
            what="health check did not report SERVING",
            interval=0.25,
        )

    def health(self) -> Health:
        return grpc_health(self.address)
