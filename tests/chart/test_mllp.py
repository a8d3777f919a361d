"""The MLLP listener in the chart: off by default; enabled, a TCP Service port 2575 named
mllp, TCP probes (it has no gRPC health), its senders' mTLS and facilities from Secrets the
operators create, ingress from the engines' networks only, egress to identity and record."""

from __future__ import annotations

from typing import Any

import pytest

MLLP = "medledger-mllp"


@pytest.fixture(scope="module")
def enabled(chart: Any) -> Any:
    return chart(*chart.values("mllp"), "--set", "metrics.port=9464")


def test_off_by_default(chart: Any) -> None:
    assert MLLP not in chart().of_kind("Deployment")


def test_a_tcp_service_on_2575(enabled: Any) -> None:
    service = enabled.get("Service", MLLP)
    assert service["spec"]["type"] == "LoadBalancer"
    # No metrics port: the listener serves none.
    assert service["spec"]["ports"] == [
        {"name": "mllp", "port": 2575, "targetPort": "mllp", "protocol": "TCP"}
    ]
    container = enabled.container(enabled.get("Deployment", MLLP))
    assert container["image"].endswith("/medledger-mllp:0.1.0")
    assert container["ports"] == [{"name": "mllp", "containerPort": 2575, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "mllp"}
        assert "grpc" not in container[probe]


def test_senders_over_mtls_and_facilities_from_secrets(enabled: Any) -> None:
    deployment = enabled.get("Deployment", MLLP)
    env = enabled.env(enabled.container(deployment))
    assert env["MEDLEDGER_MLLP_HOST"] == "0.0.0.0"
    assert env["MEDLEDGER_MLLP_PORT"] == "2575"
    assert env["MEDLEDGER_MLLP_FACILITIES_FILE"] == "/etc/medledger/mllp/facilities.json"
    assert env["MEDLEDGER_MLLP_TLS_CLIENT_CA_FILE"] == "/etc/medledger/mllp-tls/ca.crt"
    assert env["MEDLEDGER_MLLP_MAX_MESSAGE_BYTES"] == "1048576"
    assert env["MEDLEDGER_RECORD_ADDR"] == "medledger-record:50052"
    assert env["MEDLEDGER_IDENTITY_ADDR"] == "medledger-identity:50051"
    for absent in ("MEDLEDGER_GRPC_PORT", "MEDLEDGER_METRICS_PORT", "MONGODB_URI", "VAULT_ADDR"):
        assert absent not in env
    volumes = {v["name"]: v for v in enabled.pod_spec(deployment)["volumes"]}
    assert volumes["mllp-facilities"]["secret"]["secretName"] == "medledger-mllp-facilities"
    # Not the component's own in-cluster certificate: the senders' CA is the hospital's.
    assert volumes["mllp-tls"]["secret"]["secretName"] == "medledger-mllp-senders-tls"
    assert volumes["tls"]["secret"]["secretName"] != volumes["mllp-tls"]["secret"]["secretName"]


def test_ingress_from_the_engines_only_and_egress_to_identity_and_record(enabled: Any) -> None:
    policy = enabled.get("NetworkPolicy", MLLP)["spec"]
    assert policy["ingress"] == [
        {
            "from": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "ports": [{"port": "mllp", "protocol": "TCP"}],
        }
    ]
    reached = {
        rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for rule in policy["egress"]
        if rule.get("to")
        and "podSelector" in rule["to"][0]
        and "app.kubernetes.io/name" in rule["to"][0]["podSelector"].get("matchLabels", {})
    }
    assert {"identity", "record"} <= reached
    assert "ledger" not in reached


def test_the_grpc_services_are_unchanged(enabled: Any) -> None:
    record = enabled.get("Deployment", "medledger-record")
    container = enabled.container(record)
    assert "grpc" in container["readinessProbe"]
    assert {p["name"] for p in container["ports"]} >= {"grpc", "metrics"}


def test_helm_test_does_not_ask_the_listener_for_grpc_health(chart: Any) -> None:
    manifest = chart(*chart.values("helm-test"), "--set", "components.mllp.enabled=true")
    (pod,) = [d for d in manifest.hooks().values() if d["kind"] == "Pod"]
    services = manifest.env(manifest.container(pod))["MEDLEDGER_HELM_TEST_SERVICES"]
    names = {entry.split("=", 1)[0] for entry in services.split(",")}
    assert "mllp" not in names
    assert {"identity", "record", "ledger"} <= names
