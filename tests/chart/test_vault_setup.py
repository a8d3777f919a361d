"""The chart's Vault setup hook (vault.setup): its policies are medledger.common.vault_layout's
(one per component, each naming only its own keys; the witness's on its own mount), its roles
bind each component's service account to its own policy, and its script, run twice against a
real OpenBao, sets everything up the first time and changes nothing the second."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest

from medledger.common import vault_layout
from medledger.devstack.process import find_executable, free_port
from medledger.devstack.vault import DevVault

ROOT = Path(__file__).resolve().parents[2]
SETUP = "medledger-vault-setup"
SERVICES = ("identity", "record", "ledger", "inference")


def setup_files(manifest: Any) -> dict[str, str]:
    data: dict[str, str] = manifest.get("ConfigMap", SETUP)["data"]
    return data


def policies(manifest: Any) -> dict[str, str]:
    return {
        name.removeprefix("policy.").removesuffix(".hcl"): text
        for name, text in setup_files(manifest).items()
        if name.startswith("policy.")
    }


def witness_policy_of_vault_layout(mount: str, key: str) -> str:
    """vault_layout's policy of a witness, for the chart's witness mount and key."""
    template = vault_layout.policy_hcl("witness-a")
    return template.replace(vault_layout.witness_mount("witness-a"), mount).replace(
        vault_layout.WITNESS_A_KEY, key
    )


@pytest.fixture(scope="module")
def hooked(chart: Any) -> Any:
    return chart(*chart.values("vault-setup"))


def test_the_chart_reads_vault_layout_as_it_is_now() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "vault-layout.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_setup_is_off_by_default(chart: Any) -> None:
    manifest = chart()
    assert manifest.hooks() == {}
    assert SETUP not in manifest.of_kind("Job")


def test_each_service_policy_is_vault_layouts(chart: Any) -> None:
    written = policies(chart("--set", "vault.setup.enabled=true"))
    assert written == {
        **{vault_layout.policy_name(s): vault_layout.policy_hcl(s) for s in SERVICES},
        vault_layout.OPERATOR_POLICY: operator_policy_without_witnesses(),
    }


def operator_policy_without_witnesses() -> str:
    rules = vault_layout.operator_policy_hcl().split("\n\n")
    return "\n\n".join(r for r in rules if '"transit-witness' not in r).strip() + "\n"


def test_the_witness_policy_is_vault_layouts_on_its_own_mount(hooked: Any) -> None:
    written = policies(hooked)
    assert written["medledger-witness"] == witness_policy_of_vault_layout(
        "transit-witness", "witness"
    )
    # Nothing else the chart writes touches the witness's mount, but the operators' read of
    # its public key.
    for name, text in written.items():
        if name not in {"medledger-witness", vault_layout.OPERATOR_POLICY}:
            assert "transit-witness/" not in text, name
    operator = written[vault_layout.OPERATOR_POLICY]
    assert 'path "transit-witness/keys/witness" {\n  capabilities = ["read"]\n}' in operator
    assert "transit-witness/keys/witness/rotate" not in operator


def test_another_transit_mount_is_in_every_policy(chart: Any) -> None:
    written = policies(
        chart("--set", "vault.setup.enabled=true", "--set", "vault.transitMount=medledger-transit")
    )
    for service in SERVICES:
        expected = vault_layout.policy_hcl(service).replace(
            'path "transit/', 'path "medledger-transit/'
        )
        assert written[vault_layout.policy_name(service)] == expected
        assert 'path "transit/' not in written[vault_layout.policy_name(service)]


def test_each_role_binds_its_components_service_account_to_its_own_policy(hooked: Any) -> None:
    files = setup_files(hooked)
    roles = [line.split() for line in files["roles"].splitlines() if line.strip()]
    deployments = hooked.of_kind("Deployment")
    assert {role for role, _, _ in roles} == {
        f"medledger-{name}" for name in (*SERVICES, "witness")
    }
    for role, account, policy in roles:
        assert policy == role
        assert f"policy.{policy}.hcl" in files
        component = role.removeprefix("medledger-")
        deployment = deployments[f"medledger-{component}"]
        assert hooked.pod_spec(deployment)["serviceAccountName"] == account
        assert hooked.env(hooked.container(deployment))["VAULT_K8S_ROLE"] == role


def test_the_job_runs_before_the_services_with_the_operators_token(hooked: Any) -> None:
    job = hooked.get("Job", SETUP)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    hooks = hooked.hooks()
    weights = {
        name: int(doc["metadata"]["annotations"]["helm.sh/hook-weight"])
        for name, doc in hooks.items()
    }
    assert all(
        weights[name] < weights[f"Job/{SETUP}"] for name in weights if name != f"Job/{SETUP}"
    )
    volumes = {v["name"]: v for v in hooked.pod_spec(job)["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "vault-setup-token"
    variables = hooked.env(hooked.container(job))
    assert variables["VAULT_TOKEN_FILE"].endswith("/token")
    assert "VAULT_TOKEN" not in variables


# The script against a real OpenBao.


@pytest.fixture(scope="module")
def fresh_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevVault]:
    """An OpenBao that nothing has set up yet (the testkit's is provisioned by the devstack)."""
    server = DevVault(
        port=free_port(with_next=True),
        log_file=tmp_path_factory.mktemp("vault-setup") / "vault.log",
        die_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


def run_setup(manifest: Any, vault: DevVault, work: Path) -> subprocess.CompletedProcess[str]:
    """The Job's script with its ConfigMap and environment, the CLI being OpenBao's."""
    job = manifest.get("Job", SETUP)
    files = work / "setup"
    files.mkdir(exist_ok=True)
    for name, text in setup_files(manifest).items():
        (files / name).write_text(text)
    (work / "token").write_text(vault.token)
    variables = {
        k: v for k, v in manifest.env(manifest.container(job)).items() if isinstance(v, str)
    }
    variables |= {
        "SETUP_DIR": str(files),
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN_FILE": str(work / "token"),
        "VAULT_CLI": find_executable("bao"),
        "HOME": str(work),
        "PATH": os.environ["PATH"],
    }
    variables.pop("VAULT_CACERT", None)  # this OpenBao listens on plain http
    # Configuring the auth method with only a host needs Vault to run in a cluster (it reads
    # its own service account's CA there); this one does not.
    variables.pop("KUBERNETES_HOST", None)
    return subprocess.run(
        ["/bin/sh", str(files / "vault-setup.sh")],
        env=variables,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@dataclass(frozen=True)
class TwoRuns:
    vault: DevVault
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    subject_key_after_first: dict[str, Any]


@pytest.fixture(scope="module")
def two_runs(
    hooked: Any, fresh_vault: DevVault, tmp_path_factory: pytest.TempPathFactory
) -> TwoRuns:
    """The script run twice on the fresh OpenBao with the vault-setup CI values."""
    work = tmp_path_factory.mktemp("setup-runs")
    first = run_setup(hooked, fresh_vault, work)
    assert first.returncode == 0, first.stderr
    subject = read_subject_key(fresh_vault)
    second = run_setup(hooked, fresh_vault, work)
    return TwoRuns(fresh_vault, first, second, subject)


def root_client(vault: DevVault) -> hvac.Client:
    return hvac.Client(url=vault.addr, token=vault.token)


def read_subject_key(vault: DevVault) -> dict[str, Any]:
    answer = root_client(vault).secrets.kv.v2.read_secret_version(
        vault_layout.SUBJECT_KEY_PATH, mount_point="secret", raise_on_deleted_version=True
    )
    data: dict[str, Any] = answer["data"]
    return data


def test_the_first_run_creates_the_keys_mounts_and_auth_method(two_runs: TwoRuns) -> None:
    out = two_runs.first.stdout
    for key in vault_layout.TRANSIT_KEYS.values():
        if key.mount == vault_layout.TRANSIT_MOUNT:
            assert f"created the transit key transit/{key.name} ({key.type})" in out
    assert "created the transit key transit-witness/witness (ed25519)" in out
    assert "created secret/medledger/ledger-subject-key" in out
    assert "enabled Kubernetes auth at auth/kubernetes/" in out
    client = root_client(two_runs.vault)
    for key in vault_layout.TRANSIT_KEYS.values():
        if key.mount == vault_layout.TRANSIT_MOUNT:
            found = client.secrets.transit.read_key(key.name, mount_point=key.mount)
            assert found["data"]["type"] == key.type, key.name
    assert len(base64.b64decode(two_runs.subject_key_after_first["data"]["key"])) == 32


def test_a_second_run_changes_nothing(two_runs: TwoRuns) -> None:
    assert two_runs.second.returncode == 0, two_runs.second.stderr
    assert "created" not in two_runs.second.stdout
    assert "enabled" not in two_runs.second.stdout
    again = read_subject_key(two_runs.vault)
    assert again["data"] == two_runs.subject_key_after_first["data"]
    assert again["metadata"]["version"] == 1


def test_vault_holds_the_rendered_policies_and_roles(hooked: Any, two_runs: TwoRuns) -> None:
    client = root_client(two_runs.vault)
    for name, text in policies(hooked).items():
        assert client.sys.read_policy(name)["data"]["rules"] == text, name
    for component in (*SERVICES, "witness"):
        role = client.auth.kubernetes.read_role(f"medledger-{component}", mount_point="kubernetes")
        assert role["bound_service_account_names"] == [f"medledger-{component}"]
        assert role["bound_service_account_namespaces"] == ["medledger"]
        assert role["audience"] == "vault"
        assert role["token_policies"] == [f"medledger-{component}"]
        assert role["token_ttl"] == 30 * 60


def test_a_service_can_use_only_its_own_keys(two_runs: TwoRuns) -> None:
    root = root_client(two_runs.vault)
    token = root.auth.token.create(policies=["medledger-record"], ttl="5m")["auth"]["client_token"]
    record = hvac.Client(url=two_runs.vault.addr, token=token)
    data = base64.b64encode(json.dumps({"x": 1}).encode()).decode()
    record.secrets.transit.sign_data("record-client", hash_input=data)
    record.secrets.transit.generate_data_key("record-patient-kek", key_type="wrapped")
    for key in ("ledger-checkpoint", "identity-token", "inference-client"):
        with pytest.raises(hvac.exceptions.Forbidden):
            record.secrets.transit.sign_data(key, hash_input=data)
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.transit.rotate_key("record-patient-kek")
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.transit.sign_data("witness", hash_input=data, mount_point="transit-witness")


def test_a_key_of_another_type_stops_the_setup(
    chart: Any, fresh_vault: DevVault, tmp_path: Path
) -> None:
    manifest = chart("--set", "vault.setup.enabled=true", "--set", "vault.transitMount=other")
    root = root_client(fresh_vault)
    root.sys.enable_secrets_engine("transit", path="other")
    root.secrets.transit.create_key("identity-token", key_type="aes256-gcm96", mount_point="other")
    done = run_setup(manifest, fresh_vault, tmp_path)
    assert done.returncode != 0
    assert "the transit key other/identity-token is aes256-gcm96, expected ed25519" in done.stderr
    key = root.secrets.transit.read_key("identity-token", mount_point="other")
    assert key["data"]["type"] == "aes256-gcm96"
