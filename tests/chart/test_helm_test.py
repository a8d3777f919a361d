"""`helm test` (tests.enabled): the test pod runs files/helm-test.py with the client's key from a
Secret and a client certificate of its own, may reach only the release's services; and the
script itself, run against a real identity and ledger, passes with the first admin client's key
and fails with a key identity does not know or a service that does not answer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from medledger.devstack.process import free_port
from medledger.testkit.platform import ADMIN_CLIENT, Platform

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "charts" / "medledger" / "files" / "helm-test.py"
TEST = "medledger-test"


@pytest.fixture(scope="module")
def tested(chart: Any) -> Any:
    return chart(*chart.values("helm-test"))


def test_there_is_no_test_pod_by_default(chart: Any) -> None:
    manifest = chart()
    assert TEST not in manifest.of_kind("Pod")
    assert TEST not in manifest.of_kind("Certificate")


def test_the_pod_runs_the_script_with_the_clients_key_and_its_own_certificate(
    tested: Any,
) -> None:
    pod = tested.get("Pod", TEST)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    config = tested.get("ConfigMap", TEST)
    assert config["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert config["data"]["helm_test.py"] == SCRIPT.read_text()
    test = tested.container(pod)
    assert test["command"] == ["python", "/etc/medledger/helm-test/helm_test.py"]
    identity = tested.container(tested.get("Deployment", "medledger-identity"))
    assert test["image"] == identity["image"]
    variables = tested.env(test)
    assert variables["MEDLEDGER_HELM_TEST_SERVICES"] == (
        "identity=medledger-identity:50051,inference=medledger-inference:50054,"
        "ledger=medledger-ledger:50053,record=medledger-record:50052"
    )
    assert variables["MEDLEDGER_HELM_TEST_CLIENT_ID"] == "ops-admin"
    assert variables["MEDLEDGER_HELM_TEST_TRITON_URL"] == "http://medledger-triton:8000"
    assert variables["MEDLEDGER_TLS_CA_FILE"] == "/etc/medledger/tls/ca.crt"
    volumes = {v["name"]: v for v in tested.pod_spec(pod)["volumes"]}
    assert volumes["client-key"]["secret"]["secretName"] == "ops-admin-key"
    assert volumes["client-key"]["secret"]["items"] == [{"key": "jwk", "path": "client.jwk"}]
    certificate = tested.get("Certificate", TEST)["spec"]
    assert volumes["tls"]["secret"]["secretName"] == certificate["secretName"]
    assert "client auth" in certificate["usages"]
    assert test["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_pod_may_reach_only_the_releases_services(tested: Any) -> None:
    policy = tested.get("NetworkPolicy", TEST)["spec"]
    assert policy["ingress"] == []
    reached = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: rule["ports"][0]["port"]
        for rule in policy["egress"]
        for peer in rule.get("to", [])
        if "podSelector" in peer and "namespaceSelector" not in peer
    }
    assert reached == {
        "identity": 50051,
        "record": 50052,
        "ledger": 50053,
        "inference": 50054,
        "triton": 8000,
    }


def test_tests_need_a_client(chart: Any) -> None:
    error = chart.refuses("--set", "tests.enabled=true")
    assert "tests.enabled needs tests.clientId or identity.bootstrapClient.id" in error


# The script against a real identity and ledger.


async def run_script(
    platform: Platform, key: OKPKey, tmp_path: Path, services: str | None = None
) -> tuple[int, str]:
    key_file = tmp_path / "client.jwk"
    key_file.write_text(json.dumps(key.as_dict(private=True)))
    environment = {
        "PATH": os.environ["PATH"],
        "MEDLEDGER_HELM_TEST_SERVICES": services
        or f"identity={platform.identity_address},ledger={platform.ledger_address}",
        "MEDLEDGER_HELM_TEST_CLIENT_ID": ADMIN_CLIENT,
        "MEDLEDGER_HELM_TEST_CLIENT_KEY": str(key_file),
        "OTEL_SDK_DISABLED": "true",
    }
    # Not subprocess.run: the servers answering it run on this event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_script_passes_against_running_services(
    auth_platform: Platform, tmp_path: Path
) -> None:
    code, out = await run_script(auth_platform, auth_platform.admin_key, tmp_path)
    assert code == 0, out
    assert "ok   identity SERVING" in out
    assert "ok   ledger SERVING" in out
    assert "ok   identity issued ops-admin a token for ledger.read" in out
    assert "ok   ledger GetCheckpoint with the token: platform.test/ledger" in out


async def test_the_script_fails_with_a_key_identity_does_not_know(
    auth_platform: Platform, tmp_path: Path
) -> None:
    stranger = OKPKey.generate_key("Ed25519", parameters={"kid": "admin-1"})
    code, out = await run_script(auth_platform, stranger, tmp_path)
    assert code == 1, out
    assert "FAIL authenticated call" in out


async def test_the_script_fails_when_a_service_does_not_answer(
    auth_platform: Platform, tmp_path: Path
) -> None:
    services = (
        f"identity={auth_platform.identity_address},ledger={auth_platform.ledger_address},"
        f"record=127.0.0.1:{free_port()}"
    )
    code, out = await run_script(auth_platform, auth_platform.admin_key, tmp_path, services)
    assert code == 1, out
    assert "FAIL record health: UNAVAILABLE" in out
    assert "ok   ledger GetCheckpoint" in out
