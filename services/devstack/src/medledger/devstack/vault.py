"""OpenBao (Vault API) for the local stack (persistent, raft) and for tests (dev, in memory).

Both modes end the same way: ``provision()`` creates the mounts, transit keys and policies of
``medledger.common.vault_layout`` idempotently, and one token per service holding only that
service's policy, plus the operators' token (key rotation). No service runs with the root token
or with another service's token.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import hvac
import hvac.exceptions

from medledger.common.vault_layout import (
    KV_MOUNT,
    OPERATOR_POLICY,
    SERVICE_VAULT,
    SUBJECT_KEY_PATH,
    TOKEN_PERIOD,
    TRANSIT_KEYS,
    TRANSIT_MOUNTS,
    operator_policy_hcl,
    policy_hcl,
    policy_name,
)
from medledger.devstack.probes import Health, http_health, http_status
from medledger.devstack.process import StackError, find_executable
from medledger.devstack.server import Server

CLIENT_TIMEOUT_S = 10
# The one policy every service shared before each had its own; provisioning deletes it, so a
# token that still holds it can do nothing.
RETIRED_POLICIES = ("medledger-services",)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only (0600), replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        json.dump(data, handle, indent=2)
        handle.write("\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cast(dict[str, Any], data) if isinstance(data, dict) else None


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning had to create (empty when everything was already there), and the
    tokens: each service's own, and the operators'."""

    created: tuple[str, ...]
    service_tokens: Mapping[str, str]
    operator_token: str


def _ensure_mounts(client: hvac.Client, created: list[str]) -> None:
    mounts = cast(dict[str, Any], client.sys.list_mounted_secrets_engines()["data"])
    for mount in TRANSIT_MOUNTS:
        transit = mounts.get(f"{mount}/")
        if transit is None:
            client.sys.enable_secrets_engine("transit", path=mount)
            created.append(f"mount {mount}/ (transit)")
        elif transit.get("type") != "transit":
            found = transit.get("type")
            raise StackError(f"vault: {mount}/ is mounted as {found}, not transit")
    kv = mounts.get(f"{KV_MOUNT}/")
    if kv is None:
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
        created.append(f"mount {KV_MOUNT}/ (kv v2)")
    elif kv.get("type") != "kv" or (kv.get("options") or {}).get("version") != "2":
        raise StackError(f"vault: {KV_MOUNT}/ is mounted but is not a KV version 2 engine")


def _ensure_transit_keys(client: hvac.Client, created: list[str]) -> None:
    for key in TRANSIT_KEYS.values():
        try:
            existing = client.secrets.transit.read_key(key.name, mount_point=key.mount)
        except hvac.exceptions.InvalidPath:
            client.secrets.transit.create_key(key.name, key_type=key.type, mount_point=key.mount)
            created.append(f"transit key {key.name} ({key.type}, {key.mount}/)")
            continue
        found = cast(dict[str, Any], existing)["data"]["type"]
        if found != key.type:
            raise StackError(f"vault: transit key {key.name} is {found}, expected {key.type}")


def _ensure_subject_key(client: hvac.Client, created: list[str]) -> None:
    """The ledger pseudonyms' HMAC key: made here, so no service ever needs to write it."""
    try:
        client.secrets.kv.v2.read_secret_version(
            SUBJECT_KEY_PATH, mount_point=KV_MOUNT, raise_on_deleted_version=True
        )
    except hvac.exceptions.InvalidPath:
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        client.secrets.kv.v2.create_or_update_secret(
            SUBJECT_KEY_PATH, secret={"key": key}, cas=0, mount_point=KV_MOUNT
        )
        created.append(f"kv {KV_MOUNT}/{SUBJECT_KEY_PATH}")


def _ensure_policy(client: hvac.Client, name: str, wanted: str, created: list[str]) -> None:
    try:
        current = cast(dict[str, Any], client.sys.read_policy(name))["data"]["rules"]
    except hvac.exceptions.InvalidPath:
        current = None
    if current != wanted:
        client.sys.create_or_update_policy(name, wanted, pretty_print=False)
        created.append(f"policy {name}")


def _retire_policies(client: hvac.Client, created: list[str]) -> None:
    existing = set(cast(dict[str, Any], client.sys.list_policies())["data"]["policies"])
    for name in RETIRED_POLICIES:
        if name in existing:
            client.sys.delete_policy(name)
            created.append(f"removed the retired policy {name}")


def _usable_token(client: hvac.Client, token: str | None, policy: str) -> bool:
    """Whether a saved token still works and holds exactly ``policy`` (besides Vault's
    ``default``); renews it (periodic) when it does."""
    if not token:
        return False
    try:
        info = cast(dict[str, Any], client.auth.token.lookup(token))["data"]
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False
    if set(info.get("policies") or []) - {"default"} != {policy}:
        return False
    client.auth.token.renew(token)
    return True


def _token(client: hvac.Client, saved: str | None, policy: str, created: list[str]) -> str:
    if _usable_token(client, saved, policy):
        assert saved is not None
        return saved
    reply = client.auth.token.create_orphan(
        policies=[policy], period=TOKEN_PERIOD, display_name=policy, renewable=True
    )
    created.append(f"token for {policy}")
    return str(cast(dict[str, Any], reply)["auth"]["client_token"])


def provision(
    client: hvac.Client,
    service_tokens: Mapping[str, str] | None = None,
    operator_token: str | None = None,
) -> ProvisionResult:
    """Create what medledger needs in Vault when missing; a second run changes nothing.

    ``client`` must hold a root (or equally privileged) token. ``service_tokens`` and
    ``operator_token`` are the tokens of an earlier run: each kept (and renewed) while valid
    and holding its one policy, replaced otherwise.
    """
    saved = service_tokens or {}
    created: list[str] = []
    _ensure_mounts(client, created)
    _ensure_transit_keys(client, created)
    _ensure_subject_key(client, created)
    for service in SERVICE_VAULT:
        _ensure_policy(client, policy_name(service), policy_hcl(service), created)
    _ensure_policy(client, OPERATOR_POLICY, operator_policy_hcl(), created)
    _retire_policies(client, created)
    tokens = {
        service: _token(client, saved.get(service), policy_name(service), created)
        for service in SERVICE_VAULT
    }
    operator = _token(client, operator_token, OPERATOR_POLICY, created)
    return ProvisionResult(tuple(created), MappingProxyType(tokens), operator)


class VaultServer(Server):
    """An OpenBao server on a loopback port (its cluster listener takes the next port)."""

    component = "vault"

    def __init__(
        self,
        *,
        port: int,
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
        self.port = port
        self.service_tokens: Mapping[str, str] = MappingProxyType({})
        self.operator_token: str | None = None

    @property
    def ports(self) -> list[int]:
        return [self.port, self.cluster_port]

    @property
    def cluster_port(self) -> int:
        return self.port + 1

    @property
    def addr(self) -> str:
        """The VAULT_ADDR clients use."""
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.addr

    @property
    @abc.abstractmethod
    def token(self) -> str:
        """The root token (provisioning and tests only; never given to a service)."""

    def token_for(self, service: str) -> str:
        """``service``'s own token (its policy only), once provisioned."""
        try:
            return self.service_tokens[service]
        except KeyError:
            raise StackError(f"vault: no token for {service}; is vault provisioned?") from None

    def env(self) -> dict[str, str]:
        # The server must follow its command line and config file only, not a shell's settings.
        return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}

    def health(self) -> Health:
        # 200 only when initialised, unsealed and active; sealed/standby answer other codes.
        return http_health(f"{self.addr}/v1/sys/health")

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.token, timeout=CLIENT_TIMEOUT_S)

    def provision(self) -> ProvisionResult:
        result = provision(self.client(), self.service_tokens, self.operator_token)
        self.service_tokens = result.service_tokens
        self.operator_token = result.operator_token
        return result


class DevVault(VaultServer):
    """``bao server -dev``: in memory, unsealed, a known root token. For tests only."""

    def __init__(
        self,
        *,
        port: int,
        log_file: Path,
        pid_file: Path | None = None,
        root_token: str | None = None,
        die_with_parent: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            port=port,
            log_file=log_file,
            pid_file=pid_file,
            die_with_parent=die_with_parent,
            start_timeout=start_timeout,
        )
        self._root_token = root_token or f"root-{secrets.token_hex(12)}"

    @property
    def token(self) -> str:
        return self._root_token

    def argv(self) -> list[str]:
        return [
            find_executable("bao"),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address={self.host}:{self.port}",
            f"-dev-root-token-id={self._root_token}",
        ]


class PersistentVault(VaultServer):
    """``bao server -config`` with raft storage in ``state_dir``: keys survive restarts.

    Initialised once (one unseal key). ``state_dir`` (0700, local use only) keeps, each in its
    own 0600 file: the unseal key, the root token (read only to provision), the services'
    tokens and the operators' token. The server is unsealed at each start.
    """

    def __init__(
        self,
        *,
        port: int,
        state_dir: Path,
        log_file: Path,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            port=port,
            log_file=log_file,
            pid_file=pid_file,
            die_with_parent=die_with_parent,
            start_timeout=start_timeout,
        )
        self.state_dir = state_dir
        saved = read_json(self.service_tokens_file) or {}
        tokens = saved.get("tokens")
        if isinstance(tokens, dict):
            self.service_tokens = MappingProxyType({str(k): str(v) for k, v in tokens.items()})
        self.operator_token = (read_json(self.operator_token_file) or {}).get("token")

    @property
    def config_file(self) -> Path:
        return self.state_dir / "config.hcl"

    @property
    def raft_dir(self) -> Path:
        return self.state_dir / "raft"

    @property
    def unseal_key_file(self) -> Path:
        return self.state_dir / "unseal-key.json"

    @property
    def root_token_file(self) -> Path:
        return self.state_dir / "root-token.json"

    @property
    def service_tokens_file(self) -> Path:
        return self.state_dir / "service-tokens.json"

    @property
    def operator_token_file(self) -> Path:
        return self.state_dir / "operator-token.json"

    @property
    def _legacy_init_file(self) -> Path:
        """Where earlier stacks kept the unseal key and the root token together."""
        return self.state_dir / "init.json"

    @property
    def _legacy_services_token_file(self) -> Path:
        """Where earlier stacks kept the one token all services shared."""
        return self.state_dir / "services-token.json"

    @property
    def token(self) -> str:
        saved = read_json(self.root_token_file)
        if saved is None or not saved.get("root_token"):
            raise StackError(f"vault: no root token in {self.root_token_file}; is it initialised?")
        return str(saved["root_token"])

    def config_hcl(self) -> str:
        # performance_multiplier = 1: a one-node cluster elects itself in about a second
        # instead of the default's five (init and unseal wait on that election).
        # OpenBao has no mlock, hence no disable_mlock.
        return (
            'storage "raft" {\n'
            f"  path = {json.dumps(str(self.raft_dir))}\n"
            '  node_id = "medledger-local"\n'
            "  performance_multiplier = 1\n"
            "}\n\n"
            'listener "tcp" {\n'
            f'  address = "{self.host}:{self.port}"\n'
            f'  cluster_address = "{self.host}:{self.cluster_port}"\n'
            "  tls_disable = true\n"
            "}\n\n"
            f'api_addr = "{self.addr}"\n'
            f'cluster_addr = "http://{self.host}:{self.cluster_port}"\n'
            "ui = false\n"
        )

    def argv(self) -> list[str]:
        return [find_executable("bao"), "server", f"-config={self.config_file}"]

    def prepare(self) -> None:
        self.raft_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self.config_file.write_text(self.config_hcl(), encoding="utf-8")
        self._split_legacy_init_file()

    def _split_legacy_init_file(self) -> None:
        legacy = read_json(self._legacy_init_file)
        if legacy is None:
            return
        if legacy.get("unseal_keys_b64"):
            write_private_json(self.unseal_key_file, {"unseal_keys_b64": legacy["unseal_keys_b64"]})
        if legacy.get("root_token"):
            write_private_json(self.root_token_file, {"root_token": legacy["root_token"]})
        self._legacy_init_file.unlink()

    def after_start(self) -> None:
        health_url = f"{self.addr}/v1/sys/health"
        self.process.wait_ready(
            lambda: http_status(health_url) is not None,
            timeout=self.start_timeout,
            what="did not answer HTTP",
        )
        self.unseal()
        self.process.wait_ready(
            lambda: self.health() is Health.SERVING,
            timeout=self.start_timeout,
            what="did not become active after unsealing",
        )

    def unseal(self) -> None:
        """Initialise (first start only) and unseal with the saved key."""
        client = hvac.Client(url=self.addr, timeout=CLIENT_TIMEOUT_S)
        if not client.sys.is_initialized():
            reply = cast(dict[str, Any], client.sys.initialize(secret_shares=1, secret_threshold=1))
            write_private_json(self.unseal_key_file, {"unseal_keys_b64": reply["keys_base64"]})
            write_private_json(self.root_token_file, {"root_token": reply["root_token"]})
            self.service_tokens = MappingProxyType({})
            self.operator_token = None
            for stale in (self.service_tokens_file, self.operator_token_file):
                stale.unlink(missing_ok=True)
        if not client.sys.is_sealed():
            return
        saved = read_json(self.unseal_key_file)
        if saved is None or not saved.get("unseal_keys_b64"):
            raise StackError(
                f"vault: the server in {self.raft_dir} is initialised but its unseal key "
                f"({self.unseal_key_file}) is missing; remove {self.state_dir} to start over "
                "(this loses every key in it)"
            )
        for key in saved["unseal_keys_b64"]:
            client.sys.submit_unseal_key(key)

    def provision(self) -> ProvisionResult:
        result = super().provision()
        write_private_json(self.service_tokens_file, {"tokens": dict(result.service_tokens)})
        write_private_json(self.operator_token_file, {"token": result.operator_token})
        self._revoke_legacy_services_token()
        return result

    def _revoke_legacy_services_token(self) -> None:
        legacy = (read_json(self._legacy_services_token_file) or {}).get("token")
        if legacy:
            # Already revoked or expired: nothing to do.
            with contextlib.suppress(hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
                self.client().auth.token.revoke(str(legacy))
        self._legacy_services_token_file.unlink(missing_ok=True)
