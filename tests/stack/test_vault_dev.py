"""The dev-mode Vault fixture: provisioned, and the services token can do only its job."""

from __future__ import annotations

import base64

import hvac
import hvac.exceptions
import pytest

from medledger.common.vault_layout import (
    LEDGER_CHECKPOINT_KEY,
    RECORD_PATIENT_KEK,
    SERVICES_POLICY,
    TRANSIT_KEYS,
)
from medledger.devstack.vault import DevVault, provision


def test_fixture_is_provisioned(vault_server: DevVault) -> None:
    root = vault_server.client()
    for name, key_type in TRANSIT_KEYS.items():
        assert root.secrets.transit.read_key(name)["data"]["type"] == key_type
    info = root.auth.token.lookup(vault_server.services_token)["data"]
    assert SERVICES_POLICY in info["policies"]
    assert "root" not in info["policies"]
    assert info["renewable"] is True


def test_provision_twice_is_a_no_op(vault_server: DevVault) -> None:
    result = provision(vault_server.client(), vault_server.services_token)
    assert result.created == ()
    assert result.services_token == vault_server.services_token


def test_services_token_can_use_its_keys_and_kv(vault_server: DevVault) -> None:
    client = hvac.Client(url=vault_server.addr, token=vault_server.services_token)
    plaintext = base64.b64encode(b"patient data key").decode()
    ciphertext = client.secrets.transit.encrypt_data(RECORD_PATIENT_KEK, plaintext)["data"][
        "ciphertext"
    ]
    assert (
        client.secrets.transit.decrypt_data(RECORD_PATIENT_KEK, ciphertext)["data"]["plaintext"]
        == plaintext
    )
    datakey = client.secrets.transit.generate_data_key(RECORD_PATIENT_KEK, key_type="wrapped")
    assert datakey["data"]["ciphertext"].startswith("vault:v")
    signed = client.secrets.transit.sign_data(LEDGER_CHECKPOINT_KEY, plaintext)
    assert signed["data"]["signature"].startswith("vault:v1:")

    client.secrets.kv.v2.create_or_update_secret("medledger/test/salt", secret={"v": "1"})
    read = client.secrets.kv.v2.read_secret_version(
        "medledger/test/salt", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"v": "1"}


def test_services_token_is_confined(vault_server: DevVault) -> None:
    client = hvac.Client(url=vault_server.addr, token=vault_server.services_token)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret("elsewhere/x", secret={"v": "1"})
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.create_key("rogue-key", key_type="ed25519")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.create_or_update_policy("rogue", 'path "*" { capabilities = ["sudo"] }')
