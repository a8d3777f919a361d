"""OpenBao (Vault API) for the local stack (persistent, raft) and for tests (dev, in memory).

Both modes end the same way: ``provision()`` creates the mounts, transit keys, policy and the
services' own token idempotently, so the services never run with the root token.
"""

from __future__ import annotations

import abc
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hvac
import hvac.exceptions

from medledger.common.vault_layout import (
    KV_MOUNT,
    SERVICES_POLICY,
    SERVICES_TOKEN_PERIOD,
    TRANSIT_KEYS,
    TRANSIT_MOUNT,
    services_policy_hcl,
)
from medledger.devstack.probes import Health, http_health, http_status
from medledger.devstack.process import StackError, find_executable
from medledger.devstack.server import Server

CLIENT_TIMEOUT_S = 10


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
    """What provisioning had to create (empty when everything was already there)."""

    created: tuple[str, ...]
    services_token: str


def _ensure_mounts(client: hvac.Client, created: list[str]) -> None:
    mounts = cast(dict[str, Any], client.sys.list_mounted_secrets_engines()["data"])
    transit = mounts.get(f"{TRANSIT_MOUNT}/")
    if transit is None:
        client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
        created.append(f"mount {TRANSIT_MOUNT}/ (transit)")
    elif transit.get("type") != "transit":
        found = transit.get("type")
        raise StackError(f"vault: {TRANSIT_MOUNT}/ is mounted as {found}, not transit")
    kv = mounts.get(f"{KV_MOUNT}/")
    if kv is None:
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
        created.append(f"mount {KV_MOUNT}/ (kv v2)")
    elif kv.get("type") != "kv" or (kv.get("options") or {}).get("version") != "2":
        raise StackError(f"vault: {KV_MOUNT}/ is mounted but is not a KV version 2 engine")


def _ensure_transit_keys(client: hvac.Client, created: list[str]) -> None:
    for name, key_type in TRANSIT_KEYS.items():
        try:
            existing = client.secrets.transit.read_key(name, mount_point=TRANSIT_MOUNT)
        except hvac.exceptions.InvalidPath:
            client.secrets.transit.create_key(name, key_type=key_type, mount_point=TRANSIT_MOUNT)
            created.append(f"transit key {name} ({key_type})")
            continue
        found = cast(dict[str, Any], existing)["data"]["type"]
        if found != key_type:
            raise StackError(f"vault: transit key {name} is {found}, expected {key_type}")


def _ensure_policy(client: hvac.Client, created: list[str]) -> None:
    wanted = services_policy_hcl()
    try:
        current = cast(dict[str, Any], client.sys.read_policy(SERVICES_POLICY))["data"]["rules"]
    except hvac.exceptions.InvalidPath:
        current = None
    if current != wanted:
        client.sys.create_or_update_policy(SERVICES_POLICY, wanted, pretty_print=False)
        created.append(f"policy {SERVICES_POLICY}")


def _usable_services_token(client: hvac.Client, token: str | None) -> bool:
    """Whether a saved services token still works; renews it (periodic) when it does."""
    if not token:
        return False
    try:
        info = cast(dict[str, Any], client.auth.token.lookup(token))["data"]
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False
    if SERVICES_POLICY not in (info.get("policies") or []):
        return False
    client.auth.token.renew(token)
    return True


def provision(client: hvac.Client, services_token: str | None = None) -> ProvisionResult:
    """Create what medledger needs in Vault when missing; a second run changes nothing.

    ``client`` must hold a root (or equally privileged) token. ``services_token`` is the token
    from an earlier run: kept (and renewed) while valid, replaced otherwise.
    """
    created: list[str] = []
    _ensure_mounts(client, created)
    _ensure_transit_keys(client, created)
    _ensure_policy(client, created)
    if not _usable_services_token(client, services_token):
        reply = client.auth.token.create_orphan(
            policies=[SERVICES_POLICY],
            period=SERVICES_TOKEN_PERIOD,
            display_name="medledger-services",
            renewable=True,
        )
        services_token = str(cast(dict[str, Any], reply)["auth"]["client_token"])
        created.append("services token")
    assert services_token is not None
    return ProvisionResult(tuple(created), services_token)


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
        self.services_token: str | None = None

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
        """The root token (provisioning and tests only; services get ``services_token``)."""

    def env(self) -> dict[str, str]:
        # The server must follow its command line and config file only, not a shell's settings.
        return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}

    def health(self) -> Health:
        # 200 only when initialised, unsealed and active; sealed/standby answer other codes.
        return http_health(f"{self.addr}/v1/sys/health")

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.token, timeout=CLIENT_TIMEOUT_S)

    def provision(self) -> ProvisionResult:
        result = provision(self.client(), self.services_token)
        self.services_token = result.services_token
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

    Initialised once (one unseal key); the unseal key and root token are kept in
    ``state_dir/init.json`` (0600, local use only) and the server is unsealed at each start.
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
        saved = read_json(self.services_token_file) or {}
        self.services_token = saved.get("token")

    @property
    def config_file(self) -> Path:
        return self.state_dir / "config.hcl"

    @property
    def raft_dir(self) -> Path:
        return self.state_dir / "raft"

    @property
    def init_file(self) -> Path:
        return self.state_dir / "init.json"

    @property
    def services_token_file(self) -> Path:
        return self.state_dir / "services-token.json"

    @property
    def token(self) -> str:
        saved = read_json(self.init_file)
        if saved is None or not saved.get("root_token"):
            raise StackError(f"vault: no root token in {self.init_file}; is it initialised?")
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
            write_private_json(
                self.init_file,
                {"unseal_keys_b64": reply["keys_base64"], "root_token": reply["root_token"]},
            )
            self.services_token = None
            self.services_token_file.unlink(missing_ok=True)
        if not client.sys.is_sealed():
            return
        saved = read_json(self.init_file)
        if saved is None or not saved.get("unseal_keys_b64"):
            raise StackError(
                f"vault: the server in {self.raft_dir} is initialised but its unseal key "
                f"({self.init_file}) is missing; remove {self.state_dir} to start over "
                "(this loses every key in it)"
            )
        for key in saved["unseal_keys_b64"]:
            client.sys.submit_unseal_key(key)

    def provision(self) -> ProvisionResult:
        result = super().provision()
        write_private_json(self.services_token_file, {"token": result.services_token})
        return result
