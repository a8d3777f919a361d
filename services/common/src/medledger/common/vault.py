"""Async adapter over Vault (or OpenBao) transit: encrypt, decrypt, data keys, sign, verify,
rotate, public keys. hvac is synchronous, so every call runs in a worker thread of a pool
kept for Vault calls alone: work queued on asyncio's default pool (or any other) never delays
them, and they never delay it.

Keys never leave Vault: signing and unwrapping happen inside it; we only ever hold
public keys and (for envelope encryption) short-lived plaintext data keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from medledger.common.config import VaultSettings
from medledger.common.errors import FailedPrecondition, NotFound, Unavailable
from medledger.common.metric_catalog import VAULT_REQUEST_DURATION, VAULT_REQUEST_ERRORS
from medledger.common.metrics import counter, elapsed_ms, histogram

T = TypeVar("T")
DEPENDENCY = "vault"
# A VaultTransit runs up to this many calls at once, each on a client of its own (an hvac
# client and its HTTP session serve one thread at a time). One client behind a lock made
# every Vault call of a process wait for the one before it: concurrent reads of patients
# whose data keys were not cached queued for Vault one by one.
MAX_CONCURRENT_CALLS = 4
# The threads that serve the process's few VaultTransit objects.
_VAULT_CALLS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vault")
_duration = histogram(VAULT_REQUEST_DURATION)
_errors = counter(VAULT_REQUEST_ERRORS)


def _outcome(error: BaseException | None) -> str:
    """The catalogue's outcome of a call that ended with ``error``."""
    if error is None:
        return "ok"
    if isinstance(error, NotFound):
        return "not_found"
    if isinstance(error, FailedPrecondition):
        return "refused"
    if isinstance(error, Unavailable):
        return "unavailable"
    return "error"


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: use ``plaintext`` now, store only ``wrapped``."""

    plaintext: bytes
    wrapped: str


@dataclass(frozen=True)
class Signature:
    key_version: int
    signature: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unprefix(value: str) -> tuple[int, bytes]:
    """``vault:v3:BASE64`` → (3, raw bytes)."""
    _, version, encoded = value.split(":", 2)
    return int(version.removeprefix("v")), base64.b64decode(encoded)


class VaultTransit:
    """Authenticated hvac clients, logged in as calls need them (at most ``concurrency``),
    each used by one worker thread at a time and kept for the next call; one that lost its
    connection is dropped."""

    def __init__(
        self,
        settings: VaultSettings,
        *,
        timeout_seconds: int = 5,
        concurrency: int = MAX_CONCURRENT_CALLS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("a Vault adapter needs room for one call")
        self._settings = settings
        self._timeout = timeout_seconds
        self._mount = settings.transit_mount
        self._calls = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()  # guards _idle
        self._idle: list[hvac.Client] = []

    def _login(self) -> hvac.Client:
        s = self._settings
        client = hvac.Client(
            url=s.addr,
            namespace=s.namespace,
            verify=str(s.cacert) if s.cacert else True,
            timeout=int(self._timeout),
        )
        if s.auth_method == "token":
            client.token = s.token or ""
        elif s.auth_method == "approle":
            client.auth.approle.login(role_id=s.role_id, secret_id=s.secret_id)
        else:
            jwt = s.k8s_token_file.read_text().strip()
            client.auth.kubernetes.login(role=s.k8s_role, jwt=jwt, mount_point=s.k8s_mount)
        return client

    def _checkout(self) -> hvac.Client:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._login()

    def _checkin(self, client: hvac.Client) -> None:
        with self._lock:
            self._idle.append(client)

    def _call(self, operation: Callable[[hvac.Client], T]) -> T:
        with self._calls:
            client: hvac.Client | None = None
            try:
                client = self._checkout()
                try:
                    return operation(client)
                except hvac.exceptions.Forbidden:
                    if self._settings.auth_method == "token":
                        raise
                    # A short-lived login token expired: log in again once.
                    client.adapter.close()
                    client = None
                    client = self._login()
                    return operation(client)
            except hvac.exceptions.InvalidPath as exc:
                raise NotFound("vault key not found", reason="VAULT_KEY_NOT_FOUND") from exc
            except hvac.exceptions.Forbidden as exc:
                raise FailedPrecondition(
                    "vault denied the operation", reason="VAULT_FORBIDDEN"
                ) from exc
            except (
                requests.exceptions.RequestException,
                hvac.exceptions.VaultDown,
                hvac.exceptions.InternalServerError,
                hvac.exceptions.BadGateway,
                OSError,
            ) as exc:
                if client is not None:  # its connection may be broken: not used again
                    client.adapter.close()
                    client = None
                raise Unavailable(DEPENDENCY) from exc
            finally:
                if client is not None:
                    self._checkin(client)

    async def _run(self, name: str, operation: Callable[[hvac.Client], T]) -> T:
        """Runs ``operation`` in a Vault thread, measured as transit call ``name`` (the wait
        for a thread and the client's lock included: callers wait for them too)."""
        # As asyncio.to_thread does, the call sees the caller's context (its trace).
        call = functools.partial(contextvars.copy_context().run, self._call, operation)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await asyncio.get_running_loop().run_in_executor(_VAULT_CALLS, call)
        except BaseException as exc:
            error = exc
            raise
        finally:
            attributes = {"operation": name, "outcome": _outcome(error)}
            _duration.record(elapsed_ms(started), attributes)
            if error is not None and not isinstance(error, asyncio.CancelledError):
                _errors.add(1, attributes)

    async def check(self) -> None:
        """Health probe: Vault answers, is initialised and unsealed, and our token works."""

        def probe(client: hvac.Client) -> None:
            status = client.sys.read_seal_status()
            if status.get("sealed", True):
                raise hvac.exceptions.VaultDown("sealed")
            client.auth.token.lookup_self()

        await self._run("health_check", probe)

    name = DEPENDENCY

    async def encrypt(self, key: str, plaintext: bytes, *, context: bytes | None = None) -> str:
        def op(c: hvac.Client) -> str:
            response = c.secrets.transit.encrypt_data(
                name=key,
                plaintext=_b64(plaintext),
                context=_b64(context) if context else None,
                mount_point=self._mount,
            )
            return str(response["data"]["ciphertext"])

        return await self._run("encrypt", op)

    async def decrypt(self, key: str, ciphertext: str, *, context: bytes | None = None) -> bytes:
        def op(c: hvac.Client) -> bytes:
            response = c.secrets.transit.decrypt_data(
                name=key,
                ciphertext=ciphertext,
                context=_b64(context) if context else None,
                mount_point=self._mount,
            )
            return base64.b64decode(response["data"]["plaintext"])

        return await self._run("decrypt", op)

    async def generate_data_key(self, key: str, *, bits: int = 256) -> DataKey:
        def op(c: hvac.Client) -> DataKey:
            response = c.secrets.transit.generate_data_key(
                name=key, key_type="plaintext", bits=bits, mount_point=self._mount
            )
            data = response["data"]
            return DataKey(base64.b64decode(data["plaintext"]), str(data["ciphertext"]))

        return await self._run("generate_data_key", op)

    async def sign(self, key: str, data: bytes) -> Signature:
        """Signs ``data`` itself (Ed25519 signs the message, not a pre-hash)."""

        def op(c: hvac.Client) -> Signature:
            response = c.secrets.transit.sign_data(
                name=key, hash_input=_b64(data), mount_point=self._mount
            )
            version, raw = _unprefix(str(response["data"]["signature"]))
            return Signature(version, raw)

        return await self._run("sign", op)

    async def verify(self, key: str, data: bytes, signature: Signature) -> bool:
        def op(c: hvac.Client) -> bool:
            response = c.secrets.transit.verify_signed_data(
                name=key,
                hash_input=_b64(data),
                signature=f"vault:v{signature.key_version}:{_b64(signature.signature)}",
                mount_point=self._mount,
            )
            return bool(response["data"]["valid"])

        return await self._run("verify", op)

    async def rotate(self, key: str) -> int:
        """Rotates ``key``; returns the new latest version. Old versions keep verifying."""

        def op(c: hvac.Client) -> int:
            c.secrets.transit.rotate_key(name=key, mount_point=self._mount)
            response = c.secrets.transit.read_key(name=key, mount_point=self._mount)
            return int(response["data"]["latest_version"])

        return await self._run("rotate", op)

    async def public_keys(self, key: str) -> dict[int, bytes]:
        """Raw public keys by version (Ed25519: 32 bytes each)."""

        def op(c: hvac.Client) -> dict[int, bytes]:
            response = c.secrets.transit.read_key(name=key, mount_point=self._mount)
            keys: dict[str, Any] = response["data"]["keys"]
            return {
                int(version): base64.b64decode(entry["public_key"])
                for version, entry in keys.items()
                if isinstance(entry, dict) and entry.get("public_key")
            }

        return await self._run("public_keys", op)

    async def read_secret(self, path: str, *, mount: str = "secret") -> dict[str, Any] | None:
        """A KV v2 secret's data, or None when it does not exist."""

        def op(c: hvac.Client) -> dict[str, Any] | None:
            try:
                response = c.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True
                )
            except hvac.exceptions.InvalidPath:
                return None
            return dict(response["data"]["data"])

        return await self._run("read_secret", op)

    async def create_secret(
        self, path: str, data: dict[str, Any], *, mount: str = "secret"
    ) -> bool:
        """Writes a KV v2 secret only if it does not exist yet (check-and-set 0); returns
        whether this call created it, so concurrent creators agree on one value."""

        def op(c: hvac.Client) -> bool:
            try:
                c.secrets.kv.v2.create_or_update_secret(
                    path=path, secret=data, cas=0, mount_point=mount
                )
            except hvac.exceptions.InvalidRequest:
                return False  # check-and-set failed: it exists
            return True

        return await self._run("create_secret", op)

    def close(self) -> None:
        """Closes the idle clients' connections (a later call logs in again)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            client.adapter.close()
