"""The environment the launcher gives each service: its own Vault token, never the root
token nor another service's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from medledger.common.vault_layout import (
    OPERATOR_POLICY,
    SERVICE_VAULT,
    TRANSIT_KEYS,
    TRANSIT_MOUNT,
    operator_policy_hcl,
    policy_hcl,
    policy_name,
)
from medledger.devstack.services import (
    SERVICE_PORTS,
    ServiceServer,
    StackEndpoints,
    read_stack_keys,
    service_env,
)

ENDPOINTS = StackEndpoints(
    mongo_uri="mongodb://127.0.0.1:27018/?directConnection=true",
    vault_addr="http://127.0.0.1:8201",
    vault_tokens={name: f"s.{name}" for name in SERVICE_PORTS},
    triton_url="127.0.0.1:8011",
)


def test_fixed_ports() -> None:
    assert dict(SERVICE_PORTS) == {
        "identity": 50051,
        "record": 50052,
        "ledger": 50053,
        "inference": 50054,
        "witness-a": 50055,
        "witness-b": 50056,
    }


def test_service_env_points_at_the_stack() -> None:
    env = service_env("record", ENDPOINTS, base={"PATH": "/usr/bin", "VAULT_TOKEN": "root"})
    assert env["PATH"] == "/usr/bin"
    assert env["MEDLEDGER_GRPC_HOST"] == "127.0.0.1"
    assert env["MEDLEDGER_GRPC_PORT"] == "50052"
    assert env["MONGODB_URI"] == ENDPOINTS.mongo_uri
    assert env["MEDLEDGER_MONGODB_DATABASE"] == "medledger_record"
    assert env["VAULT_ADDR"] == "http://127.0.0.1:8201"
    assert env["VAULT_TOKEN"] == "s.record"  # its own, never the caller's (root) token
    assert env["MEDLEDGER_IDENTITY_ADDR"] == "127.0.0.1:50051"
    assert env["MEDLEDGER_RECORD_ADDR"] == "127.0.0.1:50052"
    assert env["MEDLEDGER_LEDGER_ADDR"] == "127.0.0.1:50053"
    assert env["OTEL_SERVICE_NAME"] == "record"
    assert env["LEDGER_ORIGIN"] == "medledger.local/ledger"
    assert env["LEDGER_WITNESSES"] == ""  # no keys known: no witness to check
    assert env["LEDGER_WITNESS_VKEYS"] == ""
    assert "TRITON_URL" not in env
    assert "WITNESS_NAME" not in env
    inference = service_env(
        "inference",
        replace(ENDPOINTS, model_repository=Path("build/models/local")),
        base={"INFERENCE_MODEL_REPOSITORY": "/elsewhere"},
    )
    assert inference["TRITON_URL"] == "127.0.0.1:8011"
    # The folder the stack's Triton serves, whatever the shell said.
    assert inference["INFERENCE_MODEL_REPOSITORY"] == str(Path("build/models/local").resolve())
    assert inference["MEDLEDGER_MONGODB_DATABASE"] == "medledger_inference"
    assert "INFERENCE_MODEL_REPOSITORY" not in env


def test_otel_exporters_off_unless_the_user_configured_otel() -> None:
    quiet = service_env("ledger", ENDPOINTS, base={})
    assert quiet["OTEL_TRACES_EXPORTER"] == "none"
    assert quiet["OTEL_METRICS_EXPORTER"] == "none"
    user = service_env("ledger", ENDPOINTS, base={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert "OTEL_TRACES_EXPORTER" not in user
    assert user["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://c:4317"
    assert user["OTEL_SERVICE_NAME"] == "ledger"


def test_every_service_of_the_stack_has_a_policy_of_its_own() -> None:
    assert set(SERVICE_VAULT) == set(SERVICE_PORTS)
    names = {policy_name(service) for service in SERVICE_VAULT}
    assert len(names) == len(SERVICE_VAULT)
    assert OPERATOR_POLICY not in names


@pytest.mark.parametrize("service", list(SERVICE_VAULT))
def test_a_service_policy_names_only_its_own_keys_and_never_rotates(service: str) -> None:
    policy = policy_hcl(service)
    own = set(SERVICE_VAULT[service].keys)
    for key in TRANSIT_KEYS.values():
        named = f"/{key.name}" in policy
        assert named == (key.name in own), key.name
    assert "rotate" not in policy
    assert "/keys/*" not in policy
    assert "sudo" not in policy
    assert "export" not in policy
    assert "delete" not in policy.split('path "secret/')[0]  # no key may be deleted
    assert 'path "secret/data/medledger/*"' not in policy  # no KV of the other services


def test_the_witnesses_use_their_own_mounts_only() -> None:
    for witness in ("witness-a", "witness-b"):
        policy = policy_hcl(witness)
        assert f'path "transit-{witness}/sign/{witness}"' in policy
        assert f'"{TRANSIT_MOUNT}/' not in policy
        assert "secret/" not in policy


def test_the_operator_rotates_medledger_keys_and_uses_none() -> None:
    policy = operator_policy_hcl()
    for key in TRANSIT_KEYS.values():
        rotates = f'path "{key.mount}/keys/{key.name}/rotate"' in policy
        assert rotates == (key.mount == TRANSIT_MOUNT), key.name
    for operation in ("sign", "encrypt", "decrypt", "datakey", "rewrap", "export"):
        assert f"/{operation}/" not in policy
    assert "secret/" not in policy


ROOT = "hvs.the-root-token"


def test_the_shell_s_vault_settings_never_reach_a_service() -> None:
    shell = {
        "PATH": "/usr/bin",
        "VAULT_TOKEN": ROOT,
        "BAO_TOKEN": ROOT,
        "VAULT_ROLE_ID": "role",
        "VAULT_TRANSIT_MOUNT": "elsewhere",
    }
    for name in SERVICE_PORTS:
        env = service_env(name, ENDPOINTS, base=shell)
        assert ROOT not in env.values()
        assert env["VAULT_TOKEN"] == f"s.{name}"
        assert not {f"s.{other}" for other in SERVICE_PORTS if other != name} & set(env.values())
        assert "VAULT_ROLE_ID" not in env
        assert env.get("VAULT_TRANSIT_MOUNT", TRANSIT_MOUNT) != "elsewhere"
    # A service the stack holds no token for gets none (and refuses to start).
    lone = StackEndpoints("m", "http://v", {}, "")
    assert "VAULT_TOKEN" not in service_env("ledger", lone, base=shell)


def test_no_stack_service_process_gets_the_root_token(
    vault_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the root token in the launcher's own environment, every service process the
    stack starts gets exactly its own token from the real, provisioned OpenBao."""
    monkeypatch.setenv("VAULT_TOKEN", vault_server.token)
    monkeypatch.setenv("BAO_TOKEN", vault_server.token)
    endpoints = StackEndpoints(
        mongo_uri="mongodb://127.0.0.1:1/?directConnection=true",
        vault_addr=vault_server.addr,
        vault_tokens=vault_server.service_tokens,
        triton_url="",
        keys=read_stack_keys(vault_server.addr, vault_server.operator_token),
    )
    held = {vault_server.token, vault_server.operator_token, *vault_server.service_tokens.values()}
    root = vault_server.client()
    for name in SERVICE_PORTS:
        env = ServiceServer(name, endpoints=endpoints, log_file=Path("/dev/null")).env()
        assert held & set(env.values()) == {vault_server.token_for(name)}
        info = root.auth.token.lookup(env["VAULT_TOKEN"])["data"]
        assert set(info["policies"]) == {"default", policy_name(name)}
