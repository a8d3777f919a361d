"""The local stack's Vault (raft storage): keys survive a restart, provisioning is idempotent."""

from __future__ import annotations

import base64
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
    assert stat.S_IMODE(vault.init_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault.services_token_file.stat().st_mode) == 0o600

    services = vault.client(first.services_token)
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
    assert again.services_token == first.services_token
    services = vault.client(again.services_token)
    assert _public_key(services) == key_before
    verified = services.secrets.transit.verify_signed_data(
        LEDGER_CHECKPOINT_KEY, MESSAGE, signature=signature
    )
    assert verified["data"]["valid"] is True
    tampered = base64.b64encode(b"medledger.local/ledger\n43\nroot-hash\n").decode()
    assert (
        services.secrets.transit.verify_signed_data(
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


def test_services_token_is_not_root(vault: PersistentVault) -> None:
    services = vault.client(vault.provision().services_token)
    with pytest.raises(hvac.exceptions.Forbidden):
        services.sys.list_mounted_secrets_engines()
