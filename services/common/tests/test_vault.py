"""The Vault transit adapter against a real OpenBao server."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from typing import Any

import hvac
import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.common.config import VaultSettings
from medledger.common.errors import FailedPrecondition, NotFound, Unavailable
from medledger.common.vault import Signature, VaultTransit
from medledger.common.vault_layout import TRANSIT_MOUNT, policy_name, witness_mount


def transit(vault_server: Any, token: str, mount: str = TRANSIT_MOUNT) -> VaultTransit:
    return VaultTransit(VaultSettings(addr=vault_server.addr, token=token, transit_mount=mount))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sign_verifies_with_the_public_key_only(vault_server: Any) -> None:
    vault = transit(vault_server, vault_server.token_for("ledger"))
    await vault.check()
    message = b"medledger.local/ledger\n1\nAAAA\n"
    signature = await vault.sign("ledger-checkpoint", message)
    keys = await vault.public_keys("ledger-checkpoint")
    public = Ed25519PublicKey.from_public_bytes(keys[signature.key_version])
    public.verify(signature.signature, message)  # raises if wrong
    with pytest.raises(InvalidSignature):
        public.verify(signature.signature, message + b"x")
    root = transit(vault_server, vault_server.token)
    assert await root.verify("ledger-checkpoint", message, signature)
    vault.close()
    root.close()


async def test_rotation_keeps_old_signatures_verifiable(vault_server: Any) -> None:
    # The root token stands for witness-b's organisation, which alone may rotate its key.
    vault = transit(vault_server, vault_server.token, witness_mount("witness-b"))
    key = "witness-b"
    before = await vault.sign(key, b"before")
    new_version = await vault.rotate(key)
    after = await vault.sign(key, b"after")
    assert new_version == before.key_version + 1 == after.key_version
    keys = await vault.public_keys(key)
    assert set(keys) >= {before.key_version, after.key_version}
    Ed25519PublicKey.from_public_bytes(keys[before.key_version]).verify(before.signature, b"before")
    assert await vault.verify(key, b"before", before)
    assert not await vault.verify(key, b"after", Signature(after.key_version, before.signature))
    vault.close()


async def test_envelope_encryption_round_trip(vault_server: Any) -> None:
    vault = transit(vault_server, vault_server.token_for("record"))
    data_key = await vault.generate_data_key("record-patient-kek")
    assert len(data_key.plaintext) == 32
    assert data_key.wrapped.startswith("vault:v")
    nonce = b"\x00" * 12
    sealed = AESGCM(data_key.plaintext).encrypt(nonce, b"observation", b"Observation/1/1")
    unwrapped = await vault.decrypt("record-patient-kek", data_key.wrapped)
    assert AESGCM(unwrapped).decrypt(nonce, sealed, b"Observation/1/1") == b"observation"
    ciphertext = await vault.encrypt("record-patient-kek", b"small secret")
    assert await vault.decrypt("record-patient-kek", ciphertext) == b"small secret"
    vault.close()


async def test_vault_down_is_unavailable() -> None:
    vault = VaultTransit(VaultSettings(addr=f"http://127.0.0.1:{closed_port()}", token="t"))
    with pytest.raises(Unavailable) as raised:
        await vault.sign("ledger-checkpoint", b"x")
    assert raised.value.metadata == {"dependency": "vault"}
    with pytest.raises(Unavailable):
        await vault.check()


async def test_bad_token_and_unknown_key(vault_server: Any) -> None:
    with pytest.raises(FailedPrecondition):
        await transit(vault_server, "not-a-token").check()
    with pytest.raises((NotFound, FailedPrecondition)):
        await transit(vault_server, vault_server.token_for("ledger")).sign("no-such-key", b"x")


class CountedLogins(VaultTransit):
    """Counts the clients it logs in."""

    logins = 0

    def _login(self) -> hvac.Client:
        self.logins += 1
        return super()._login()


async def test_concurrent_calls_run_at_once_each_on_its_own_client(vault_server: Any) -> None:
    vault = CountedLogins(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record"))
    )
    # Both calls must be inside Vault together to pass the barrier: one client behind a
    # lock made the second wait for the first, and the barrier broke.
    together = threading.Barrier(2, timeout=10)
    clients: list[int] = []

    def meet(client: hvac.Client) -> bool:
        clients.append(id(client))
        together.wait()
        return bool(client.sys.read_seal_status()["sealed"])

    assert await asyncio.gather(vault._run("test", meet), vault._run("test", meet)) == [
        False,
        False,
    ]
    assert len(set(clients)) == 2
    assert vault.logins == 2
    # Kept for the next calls: one after the other, they log nobody in again.
    for _ in range(3):
        ciphertext = await vault.encrypt("record-patient-kek", b"k")
        assert await vault.decrypt("record-patient-kek", ciphertext) == b"k"
    assert vault.logins == 2
    vault.close()


async def test_at_most_concurrency_calls_at_once(vault_server: Any) -> None:
    vault = CountedLogins(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
        concurrency=2,
    )
    inside = 0
    most = 0
    lock = threading.Lock()

    def count(client: hvac.Client) -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        client.sys.read_seal_status()
        with lock:
            inside -= 1

    await asyncio.gather(*(vault._run("test", count) for _ in range(12)))
    assert most <= 2
    assert vault.logins <= 2
    with pytest.raises(ValueError, match="room for one call"):
        VaultTransit(VaultSettings(addr=vault_server.addr, token="t"), concurrency=0)
    vault.close()


async def test_a_client_whose_vault_went_away_is_not_used_again(vault_server: Any) -> None:
    vault = CountedLogins(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record"))
    )
    await vault.check()

    def broken(client: hvac.Client) -> None:
        raise requests.exceptions.ConnectionError("reset")

    with pytest.raises(Unavailable):
        await vault._run("test", broken)
    await vault.check()
    assert vault.logins == 2  # the broken one was dropped, a new one logged in
    vault.close()


async def test_a_login_that_expired_is_made_again_once(vault_server: Any) -> None:
    # AppRole logins (as Kubernetes ones) expire; the client then logs in again.
    root = vault_server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    role = f"relogin-{uuid.uuid4().hex[:8]}"
    root.auth.approle.create_or_update_approle(
        role, token_policies=[policy_name("record")], token_ttl="2s", token_max_ttl="2s"
    )
    vault = CountedLogins(
        VaultSettings(
            addr=vault_server.addr,
            auth_method="approle",
            role_id=root.auth.approle.read_role_id(role)["data"]["role_id"],
            secret_id=root.auth.approle.generate_secret_id(role)["data"]["secret_id"],
        )
    )
    ciphertext = await vault.encrypt("record-patient-kek", b"k")
    await asyncio.sleep(3)  # the login's token has expired
    assert await vault.decrypt("record-patient-kek", ciphertext) == b"k"
    assert vault.logins == 2
    vault.close()
