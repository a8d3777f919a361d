"""What the Helm chart renders: mutual TLS by default, an egress policy for every component,
a database and Mongo credential of its own for every component that uses Mongo, and a Vault role
of its own for every component that uses Vault (the witness on its organisation's mount).

Renders with the pinned helm that scripts/chart-check.sh installs (``--helm-path``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medledger"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "medledger"
NAMESPACE = "medledger"
DNS_PORT = 53

Manifest = list[dict[str, Any]]
Render = Callable[..., Manifest]


@pytest.fixture(scope="module")
def helm() -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "chart-check.sh"), "--helm-path"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot install helm: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def _helm_template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def render(helm: str) -> Render:
    def render(*args: str) -> Manifest:
        done = _helm_template(helm, *args)
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return render


@pytest.fixture(scope="module", params=["default", "full-values"])
def manifest(request: pytest.FixtureRequest, render: Render) -> Manifest:
    return render() if request.param == "default" else render("-f", str(FULL_VALUES))


def of_kind(manifest: Manifest, kind: str) -> dict[str, dict[str, Any]]:
    """The objects of one kind, by component name."""
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for doc in manifest
        if doc["kind"] == kind
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def egress_ports(policy: dict[str, Any]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    for rule in policy["spec"]["egress"]:
        for port in rule["ports"]:
            yield port["port"], rule.get("to", [])


def test_mutual_tls_is_on_by_default(render: Render) -> None:
    manifest = render()
    deployments = of_kind(manifest, "Deployment")
    certificates = of_kind(manifest, "Certificate")
    assert deployments
    assert certificates.keys() == deployments.keys()
    for name, deployment in deployments.items():
        variables = env(deployment)
        assert variables["MEDLEDGER_TLS_CERT_FILE"] == "/etc/medledger/tls/tls.crt"
        assert variables["MEDLEDGER_TLS_KEY_FILE"] == "/etc/medledger/tls/tls.key"
        # A CA file makes the server demand client certificates: mutual TLS.
        assert variables["MEDLEDGER_TLS_CA_FILE"] == "/etc/medledger/tls/ca.crt"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        certificate = certificates[name]["spec"]
        assert volumes["tls"]["secret"]["secretName"] == certificate["secretName"]
        assert {"server auth", "client auth"} <= set(certificate["usages"])
        service = f"{RELEASE}-{name}"
        assert service in certificate["dnsNames"]
        assert f"{service}.{NAMESPACE}.svc" in certificate["dnsNames"]
        # Kubelet's probes cannot do TLS: they use the plaintext health-only port.
        ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        assert int(variables["MEDLEDGER_HEALTH_PORT"]) == ports["health"] != ports["grpc"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container(deployment)[probe]["grpc"]["port"] == ports["health"]


def test_the_ledger_replicas_check_each_others_certificate_by_the_service_name(
    render: Render,
) -> None:
    manifest = render()
    ledger = env(of_kind(manifest, "Deployment")["ledger"])
    name = ledger["MEDLEDGER_SEQUENCER_TLS_NAME"]
    assert name == f"{RELEASE}-ledger"
    assert name in of_kind(manifest, "Certificate")["ledger"]["spec"]["dnsNames"]


def test_an_existing_secret_replaces_the_certificate(render: Render) -> None:
    manifest = render("-f", str(FULL_VALUES))
    assert "inference" not in of_kind(manifest, "Certificate")
    inference = of_kind(manifest, "Deployment")["inference"]
    volumes = {v["name"]: v for v in inference["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "inference-mtls"


def test_tls_off_leaves_no_certificate_and_no_tls_settings(render: Render) -> None:
    manifest = render("--set", "default.tls.enabled=false")
    assert of_kind(manifest, "Certificate") == {}
    for deployment in of_kind(manifest, "Deployment").values():
        assert not any(name.startswith("MEDLEDGER_TLS_") for name in env(deployment))


def test_every_component_has_an_egress_policy(manifest: Manifest) -> None:
    deployments = of_kind(manifest, "Deployment")
    policies = of_kind(manifest, "NetworkPolicy")
    assert policies.keys() == deployments.keys()
    for name, policy in policies.items():
        assert "Egress" in policy["spec"]["policyTypes"], name
        ports = {port for port, _ in egress_ports(policy)}
        assert DNS_PORT in ports, name


def test_egress_reaches_only_what_each_component_needs(render: Render) -> None:
    manifest = render("-f", str(FULL_VALUES))
    policies = of_kind(manifest, "NetworkPolicy")
    component_port = {
        "identity": 50051,
        "record": 50052,
        "ledger": 50053,
        "inference": 50054,
        "witness": 50055,
    }
    mongo, vault, triton, otlp = {27017, 27018}, {8200}, {8001}, {4317}
    expected = {
        "identity": {component_port["ledger"]} | mongo | vault,
        "record": {component_port["identity"], component_port["ledger"]} | mongo | vault,
        "ledger": {component_port[c] for c in ("identity", "ledger", "witness")} | mongo | vault,
        "inference": {component_port[c] for c in ("identity", "record", "ledger")}
        | mongo
        | vault
        | triton,
        "witness": {component_port["identity"]} | mongo | vault,
    }
    for name, policy in policies.items():
        ports = {port for port, _ in egress_ports(policy)} - {DNS_PORT}
        assert ports == expected[name] | otlp, name
        for port, to in egress_ports(policy):
            if port in mongo:
                assert to == [{"ipBlock": {"cidr": "10.20.0.0/16"}}], name
            elif port in vault:
                assert to[0]["namespaceSelector"]["matchLabels"], name
        # Other components of the release are chosen by their pod labels (the ledger may also
        # reach the witnesses' port anywhere: witnesses are run by other organisations).
        peers = {
            port
            for port, to in egress_ports(policy)
            for peer in to
            if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/instance")
            == RELEASE
        }
        assert peers == ports & set(component_port.values()), name


def mongo_users(manifest: Manifest) -> dict[str, tuple[str, tuple[str, str]]]:
    """Each component that uses Mongo: its database and its (Secret, key) for MONGODB_URI."""
    found = {}
    for name, deployment in of_kind(manifest, "Deployment").items():
        variables = env(deployment)
        if "MONGODB_URI" in variables:
            ref = variables["MONGODB_URI"]["secretKeyRef"]
            found[name] = (variables["MEDLEDGER_MONGODB_DATABASE"], (ref["name"], ref["key"]))
    return found


def test_no_two_components_share_a_database_or_a_mongo_credential(manifest: Manifest) -> None:
    users = mongo_users(manifest)
    assert {"identity", "record", "ledger", "inference"} <= users.keys()
    databases = [database for database, _ in users.values()]
    credentials = [credential for _, credential in users.values()]
    assert len(set(databases)) == len(databases)
    assert len(set(credentials)) == len(credentials)


def test_each_component_reads_its_own_credential_secret_by_default(render: Render) -> None:
    for name, (_, credential) in mongo_users(render()).items():
        assert credential == (f"{RELEASE}-{name}-mongodb", "uri")


@pytest.mark.parametrize(
    ("values", "mount", "source"),
    [
        ([], "/var/lib/medledger/models", "persistentVolumeClaim"),
        (["-f", str(FULL_VALUES)], "/models", "nfs"),
    ],
)
def test_inference_reads_the_model_repository_triton_serves_read_only(
    render: Render, values: list[str], mount: str, source: str
) -> None:
    inference = of_kind(render(*values), "Deployment")["inference"]
    assert env(inference)["INFERENCE_MODEL_REPOSITORY"] == mount
    mounts = {m["name"]: m for m in container(inference)["volumeMounts"]}
    assert mounts["model-repository"] == {
        "name": "model-repository",
        "mountPath": mount,
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in inference["spec"]["template"]["spec"]["volumes"]}
    assert source in volumes["model-repository"]
    assert volumes["model-repository"][source]["readOnly"] is True
    others = of_kind(render(*values), "Deployment")
    for name, deployment in others.items():
        if name != "inference":
            assert "INFERENCE_MODEL_REPOSITORY" not in env(deployment)


def test_the_witness_database_is_not_the_ledgers(render: Render) -> None:
    users = mongo_users(render("-f", str(FULL_VALUES)))
    assert users["witness"][0] != users["ledger"][0]


@pytest.mark.parametrize(
    ("values", "setting", "message"),
    [
        ([], "components.record.database=medledger_identity", "share the database"),
        (["-f", str(FULL_VALUES)], "components.witness.database=medledger_ledger", "database"),
        (
            [],
            "components.record.mongodb.existingSecret=medledger-ledger-mongodb",
            "share the Mongo credential",
        ),
        (
            ["-f", str(FULL_VALUES)],
            "components.record.mongodb.secretKey=identity-uri",
            "share the Mongo credential",
        ),
    ],
)
def test_rendering_refuses_a_shared_database_or_credential(
    helm: str, values: list[str], setting: str, message: str
) -> None:
    done = _helm_template(helm, *values, "--set", setting)
    assert done.returncode != 0
    assert message in done.stderr


def vault_logins(manifest: Manifest) -> dict[str, tuple[str, str]]:
    """Each component that uses Vault: its Kubernetes auth role and its transit mount."""
    return {
        name: (variables["VAULT_K8S_ROLE"], variables["VAULT_TRANSIT_MOUNT"])
        for name, deployment in of_kind(manifest, "Deployment").items()
        if "VAULT_ADDR" in (variables := env(deployment))
    }


def test_each_component_logs_in_to_vault_as_its_own_role(manifest: Manifest) -> None:
    logins = vault_logins(manifest)
    assert {"identity", "record", "ledger", "inference"} <= logins.keys()
    for name, (role, _) in logins.items():
        assert role == f"medledger-{name}"  # the policy of vault_layout.policy_name(name)
        deployment = of_kind(manifest, "Deployment")[name]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{RELEASE}-{name}"


def test_the_witness_cosigns_on_its_own_organisations_mount(render: Render) -> None:
    logins = vault_logins(render("-f", str(FULL_VALUES)))
    witness_mount = logins["witness"][1]
    assert witness_mount == "transit-witness"
    assert all(mount != witness_mount for name, (_, mount) in logins.items() if name != "witness")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("components.record.vaultRole=medledger-identity", "share the Vault role"),
        ("components.witness.vaultRole=medledger-ledger", "share the Vault role"),
        ("components.witness.vaultTransitMount=transit", "its own organisation's mount"),
        ("vault.transitMount=transit-witness", "its own organisation's mount"),
    ],
)
def test_rendering_refuses_a_shared_vault_role_or_the_witness_on_the_logs_mount(
    helm: str, setting: str, message: str
) -> None:
    done = _helm_template(helm, "-f", str(FULL_VALUES), "--set", setting)
    assert done.returncode != 0
    assert message in done.stderr
