"""The local stack's Vault (raft storage): keys survive a restart, provisioning is idempotent,
and the unseal key, the root token and the tokens are each kept in a file of their own."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from medledger.common.vault_layout import LEDGER_CHECKPOINT_KEY, TRANSIT_KEYS
from medledger.devstack.process import free_port
from medledger.devstack.vault import PersistentVault

MESSAGE = base64.b64encode(b"medledger.local/ledger\n42\nroot-hash\n").decode()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[PersistentVault]:
    server = PersistentVault(
        port=free_port(with_next=True),
        state_dir=tmp_path / "vault",
        log_file=tmp_path / "logs" / "vault.log",
        pid_file=tmp_path / "run" / "vault.pid",
        die_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


def _public_key(client: hvac.Client) -> str:
    data = client.secrets.transit.read_key(LEDGER_CHECKPOINT_KEY)["data"]
    return str(data["keys"][str(data["latest_version"])]["public_key"])


def test_keys_and_signatures_survive_a_restart(vault: PersistentVault) -> None:
    first = vault.provision()
    assert set(TRANSIT_KEYS) <= {c.removeprefix("transit key ").split()[0] for c in first.created}

    services = vault.client(first.service_tokens["ledger"])
    signature = services.secrets.transit.sign_data(LEDGER_CHECKPOINT_KEY, MESSAGE)["data"][
        "signature"
    ]
    key_before = _public_key(services)

    assert vault.provision().created == ()  # a second run changes nothing

    assert vault.stop()
    assert not vault.is_running()
    assert not vault.pid_file or not vault.pid_file.exists()
    vault.start()  # unseals with the saved key

    again = vault.provision()
    assert again.created == ()
    assert again.service_tokens == first.service_tokens
    assert again.operator_token == first.operator_token
    services = vault.client(again.service_tokens["ledger"])
    assert _public_key(services) == key_before
    root = vault.client()  # the ledger's token signs only; verifying is anyone's, offline
    verified = root.secrets.transit.verify_signed_data(
        LEDGER_CHECKPOINT_KEY, MESSAGE, signature=signature
    )
    assert verified["data"]["valid"] is True
    tampered = base64.b64encode(b"medledger.local/ledger\n43\nroot-hash\n").decode()
    assert (
        root.secrets.transit.verify_signed_data(
            LEDGER_CHECKPOINT_KEY, tampered, signature=signature
        )["data"]["valid"]
        is False
    )


def test_a_fresh_process_adopts_and_stops_the_running_vault(vault: PersistentVault) -> None:
    other = PersistentVault(
        port=vault.port,
        state_dir=vault.state_dir,
        log_file=vault.log_file,
        pid_file=vault.pid_file,
    )
    assert other.adopt()
    assert other.pid == vault.pid
    assert other.stop()
    assert not vault.is_running()


def test_service_tokens_are_not_root(vault: PersistentVault) -> None:
    for token in vault.provision().service_tokens.values():
        with pytest.raises(hvac.exceptions.Forbidden):
            vault.client(token).sys.list_mounted_secrets_engines()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_unseal_key_and_root_token_are_kept_apart(vault: PersistentVault) -> None:
    result = vault.provision()
    assert _mode(vault.state_dir) == 0o700
    files = {
        vault.unseal_key_file: {"unseal_keys_b64"},
        vault.root_token_file: {"root_token"},
        vault.service_tokens_file: {"tokens"},
        vault.operator_token_file: {"token"},
    }
    for path, keys in files.items():
        assert _mode(path) == 0o600, path
        assert set(json.loads(path.read_text())) == keys, path
    root = json.loads(vault.root_token_file.read_text())["root_token"]
    assert root not in vault.unseal_key_file.read_text()
    assert root not in vault.service_tokens_file.read_text()
    assert root not in result.service_tokens.values()
    assert json.loads(vault.service_tokens_file.read_text())["tokens"] == dict(
        result.service_tokens
    )
    assert not (vault.state_dir / "init.json").exists()


def test_a_stack_of_the_shared_token_era_is_split_on_start(vault: PersistentVault) -> None:
    """An earlier stack kept the unseal key with the root token in init.json, and one
    token for every service: the next start splits the file, provisioning revokes the token."""
    vault.provision()
    root = vault.token
    shared = vault.client().auth.token.create(policies=["default"], ttl="10m")["auth"]
    unseal = json.loads(vault.unseal_key_file.read_text())["unseal_keys_b64"]
    assert vault.stop()
    legacy = {"unseal_keys_b64": unseal, "root_token": root}
    (vault.state_dir / "init.json").write_text(json.dumps(legacy))
    (vault.state_dir / "services-token.json").write_text(
        json.dumps({"token": shared["client_token"]})
    )
    vault.unseal_key_file.unlink()
    vault.root_token_file.unlink()

    vault.start()  # unseals with the key from the split file
    assert not (vault.state_dir / "init.json").exists()
    assert json.loads(vault.unseal_key_file.read_text()) == {"unseal_keys_b64": unseal}
    assert vault.token == root
    vault.provision()
    assert not (vault.state_dir / "services-token.json").exists()
    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client(shared["client_token"]).auth.token.lookup_self()
