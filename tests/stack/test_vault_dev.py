"""The dev-mode Vault fixture, provisioned: each service's token can do its own job and
nothing else (no other service's key, no other KV, no rotation); only the operators rotate."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

import hvac
import hvac.exceptions
import pytest

from medledger.common.vault_layout import (
    IDENTITY_TOKEN_KEY,
    KV_PREFIX,
    LEDGER_CHECKPOINT_KEY,
    OPERATOR_POLICY,
    RECORD_PATIENT_KEK,
    SERVICE_VAULT,
    SUBJECT_KEY_PATH,
    TRANSIT_KEYS,
    WITNESS_A_KEY,
    WITNESS_B_KEY,
    TransitKey,
    policy_name,
    witness_mount,
)
from medledger.devstack.vault import DevVault, provision

DATA = base64.b64encode(b"medledger.local/ledger\n1\nroot\n").decode()


def as_service(vault: DevVault, service: str) -> hvac.Client:
    return hvac.Client(url=vault.addr, token=vault.token_for(service))


def use(client: hvac.Client, key: TransitKey, operation: str, sealed: str = "") -> None:
    """Performs ``operation`` with ``key`` (raises hvac.exceptions.Forbidden if refused);
    ``sealed``: a ciphertext of ``key`` to decrypt or rewrap."""
    transit = client.secrets.transit
    if operation == "sign":
        transit.sign_data(key.name, DATA, mount_point=key.mount)
    elif operation == "read":
        transit.read_key(key.name, mount_point=key.mount)
    elif operation == "encrypt":
        transit.encrypt_data(key.name, DATA, mount_point=key.mount)
    elif operation == "decrypt":
        assert transit.decrypt_data(key.name, sealed, mount_point=key.mount)["data"]["plaintext"]
    elif operation == "rewrap":
        transit.rewrap_data(key.name, sealed, mount_point=key.mount)
    elif operation == "datakey":
        transit.generate_data_key(key.name, key_type="wrapped", mount_point=key.mount)
    elif operation == "rotate":
        transit.rotate_key(key.name, mount_point=key.mount)
    else:
        raise AssertionError(operation)


def refused(action: Callable[[], object]) -> bool:
    try:
        action()
    except hvac.exceptions.Forbidden:
        return True
    return False


def test_fixture_is_provisioned(vault_server: DevVault) -> None:
    root = vault_server.client()
    for key in TRANSIT_KEYS.values():
        assert root.secrets.transit.read_key(key.name, mount_point=key.mount)["data"]["type"] == (
            key.type
        )
    assert set(vault_server.service_tokens) == set(SERVICE_VAULT)
    assert len(set(vault_server.service_tokens.values())) == len(SERVICE_VAULT)
    for service, token in vault_server.service_tokens.items():
        info = root.auth.token.lookup(token)["data"]
        assert set(info["policies"]) == {"default", policy_name(service)}
        assert info["renewable"] is True
    operator = root.auth.token.lookup(vault_server.operator_token)["data"]
    assert set(operator["policies"]) == {"default", OPERATOR_POLICY}


def test_provision_twice_is_a_no_op(vault_server: DevVault) -> None:
    result = provision(
        vault_server.client(), vault_server.service_tokens, vault_server.operator_token
    )
    assert result.created == ()
    assert result.service_tokens == vault_server.service_tokens
    assert result.operator_token == vault_server.operator_token


@pytest.mark.parametrize("service", list(SERVICE_VAULT))
def test_each_service_uses_its_own_keys_only(vault_server: DevVault, service: str) -> None:
    client = as_service(vault_server, service)
    root = vault_server.client()
    own = SERVICE_VAULT[service].keys
    for name, operations in own.items():
        key = TRANSIT_KEYS[name]
        sealed = ""
        if key.type.startswith("aes"):
            reply = root.secrets.transit.encrypt_data(name, DATA, mount_point=key.mount)
            sealed = reply["data"]["ciphertext"]
        for operation in operations:
            use(client, key, operation, sealed)
    for key in TRANSIT_KEYS.values():
        if key.name not in own:
            for operation in ("sign", "encrypt", "datakey"):
                assert refused(lambda key=key, op=operation: use(client, key, op)), (key, operation)


def test_record_cannot_sign_with_identitys_key_nor_read_its_kv(vault_server: DevVault) -> None:
    record = as_service(vault_server, "record")
    with pytest.raises(hvac.exceptions.Forbidden, match="permission denied"):
        record.secrets.transit.sign_data(IDENTITY_TOKEN_KEY, DATA)  # would mint admin tokens
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.transit.decrypt_data("identity-secrets", "vault:v1:AAAA")
    identity = as_service(vault_server, "identity")
    path = f"{KV_PREFIX}/identity/{uuid.uuid4().hex}"
    identity.secrets.kv.v2.create_or_update_secret(path, secret={"v": "identity's"})
    assert identity.secrets.kv.v2.read_secret_version(path, raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.kv.v2.read_secret_version(path, raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.kv.v2.create_or_update_secret(path, secret={"v": "overwritten"})
    # Its own folder works.
    own = f"{KV_PREFIX}/record/{uuid.uuid4().hex}"
    record.secrets.kv.v2.create_or_update_secret(own, secret={"v": "1"})


def test_a_witness_cannot_sign_with_the_other_witness_or_the_ledger(
    vault_server: DevVault,
) -> None:
    witness_a = as_service(vault_server, "witness-a")
    witness_a.secrets.transit.sign_data(WITNESS_A_KEY, DATA, mount_point=witness_mount("witness-a"))
    with pytest.raises(hvac.exceptions.Forbidden):
        witness_a.secrets.transit.sign_data(
            WITNESS_B_KEY, DATA, mount_point=witness_mount("witness-b")
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        witness_a.secrets.transit.sign_data(LEDGER_CHECKPOINT_KEY, DATA)
    # Nor can the log (its operator's service) forge a witness cosignature.
    ledger = as_service(vault_server, "ledger")
    for witness, key in (("witness-a", WITNESS_A_KEY), ("witness-b", WITNESS_B_KEY)):
        with pytest.raises(hvac.exceptions.Forbidden):
            ledger.secrets.transit.sign_data(key, DATA, mount_point=witness_mount(witness))


def test_no_service_token_can_rotate_a_key(vault_server: DevVault) -> None:
    for service in SERVICE_VAULT:
        client = as_service(vault_server, service)
        for key in TRANSIT_KEYS.values():
            assert refused(lambda c=client, k=key: use(c, k, "rotate")), (service, key.name)


def test_only_the_operators_rotate_and_they_use_no_key(vault_server: DevVault) -> None:
    operator = hvac.Client(url=vault_server.addr, token=vault_server.operator_token)
    key = TRANSIT_KEYS[RECORD_PATIENT_KEK]  # no test relies on its version
    before = operator.secrets.transit.read_key(key.name)["data"]["latest_version"]
    operator.secrets.transit.rotate_key(key.name)
    assert operator.secrets.transit.read_key(key.name)["data"]["latest_version"] == before + 1
    for other in TRANSIT_KEYS.values():
        for operation in ("sign", "encrypt", "datakey"):
            assert refused(lambda k=other, op=operation: use(operator, k, op)), other.name
    # A witness's key is its own organisation's to rotate.
    witness = TRANSIT_KEYS[WITNESS_A_KEY]
    assert refused(lambda: use(operator, witness, "rotate"))


def test_the_subject_key_is_made_once_and_never_replaced(vault_server: DevVault) -> None:
    for service in ("identity", "record", "inference"):
        client = as_service(vault_server, service)
        stored = client.secrets.kv.v2.read_secret_version(
            SUBJECT_KEY_PATH, raise_on_deleted_version=True
        )
        assert len(base64.b64decode(stored["data"]["data"]["key"])) == 32
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.kv.v2.create_or_update_secret(SUBJECT_KEY_PATH, secret={"key": "x"})
    with pytest.raises(hvac.exceptions.Forbidden):  # the ledger never sees a patient id
        as_service(vault_server, "ledger").secrets.kv.v2.read_secret_version(
            SUBJECT_KEY_PATH, raise_on_deleted_version=True
        )


def test_service_tokens_cannot_administer_vault(vault_server: DevVault) -> None:
    for service in SERVICE_VAULT:
        client = as_service(vault_server, service)
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.kv.v2.create_or_update_secret("elsewhere/x", secret={"v": "1"})
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.transit.create_key("rogue-key", key_type="ed25519")
        with pytest.raises(hvac.exceptions.Forbidden):
            client.sys.create_or_update_policy("rogue", 'path "*" { capabilities = ["sudo"] }')


def test_the_shared_policy_of_earlier_stacks_is_retired(vault_server: DevVault) -> None:
    root = vault_server.client()
    root.sys.create_or_update_policy(
        "medledger-services", 'path "transit/sign/*" { capabilities = ["update"] }'
    )
    shared = root.auth.token.create(policies=["medledger-services"], ttl="10m")["auth"]
    client = hvac.Client(url=vault_server.addr, token=shared["client_token"])
    client.secrets.transit.sign_data(IDENTITY_TOKEN_KEY, DATA)  # what the finding is about
    result = provision(root, vault_server.service_tokens, vault_server.operator_token)
    assert result.created == ("removed the retired policy medledger-services",)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.sign_data(IDENTITY_TOKEN_KEY, DATA)
