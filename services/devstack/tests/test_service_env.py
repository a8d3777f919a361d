"""The environment the launcher gives each service."""

from __future__ import annotations

from medledger.common.vault_layout import TRANSIT_KEYS, services_policy_hcl
from medledger.devstack.services import SERVICE_PORTS, StackEndpoints, service_env

ENDPOINTS = StackEndpoints(
    mongo_uri="mongodb://127.0.0.1:27018/?directConnection=true",
    vault_addr="http://127.0.0.1:8201",
    vault_token="s.services",
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
    assert env["VAULT_TOKEN"] == "s.services"  # never the caller's (root) token
    assert env["MEDLEDGER_IDENTITY_ADDR"] == "127.0.0.1:50051"
    assert env["MEDLEDGER_RECORD_ADDR"] == "127.0.0.1:50052"
    assert env["MEDLEDGER_LEDGER_ADDR"] == "127.0.0.1:50053"
    assert env["OTEL_SERVICE_NAME"] == "record"
    assert env["LEDGER_ORIGIN"] == "medledger.local/ledger"
    assert env["LEDGER_WITNESSES"] == ""  # no keys known: no witness to check
    assert env["LEDGER_WITNESS_VKEYS"] == ""
    assert "TRITON_URL" not in env
    assert "WITNESS_NAME" not in env
    assert service_env("inference", ENDPOINTS, base={})["TRITON_URL"] == "127.0.0.1:8011"


def test_otel_exporters_off_unless_the_user_configured_otel() -> None:
    quiet = service_env("ledger", ENDPOINTS, base={})
    assert quiet["OTEL_TRACES_EXPORTER"] == "none"
    assert quiet["OTEL_METRICS_EXPORTER"] == "none"
    user = service_env("ledger", ENDPOINTS, base={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert "OTEL_TRACES_EXPORTER" not in user
    assert user["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://c:4317"
    assert user["OTEL_SERVICE_NAME"] == "ledger"


def test_policy_covers_every_transit_key_and_nothing_destructive() -> None:
    policy = services_policy_hcl()
    for key in TRANSIT_KEYS:
        assert f'path "transit/sign/{key}"' in policy
        assert f'path "transit/keys/{key}/rotate"' in policy
    assert "sudo" not in policy
    assert "export" not in policy
    assert 'path "secret/data/medledger/*"' in policy
