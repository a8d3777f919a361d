"""Triton in the chart (triton.enabled): GPU resources and nodes, Triton's own health endpoints
as probes, the model repository inference hashes (the same volume, or the same image copied
into both pods), and inference pointed at it and allowed to reach it, alone."""

from __future__ import annotations

from typing import Any

import pytest

GPU = "nvidia.com/gpu"
TRITON = "medledger-triton"
INFERENCE = "medledger-inference"


@pytest.fixture(scope="module")
def gpu(chart: Any) -> Any:
    return chart(*chart.values("gpu-triton"))


def test_triton_is_off_by_default_and_inference_uses_the_external_one(chart: Any) -> None:
    manifest = chart()
    assert TRITON not in manifest.of_kind("Deployment")
    inference = manifest.get("Deployment", INFERENCE)
    assert manifest.env(manifest.container(inference))["TRITON_URL"] == (
        "triton-inference-server.triton.svc:8001"
    )


def test_triton_asks_for_a_gpu_on_gpu_nodes(gpu: Any) -> None:
    triton = gpu.get("Deployment", TRITON)
    server = gpu.container(triton, "triton")
    assert server["resources"]["limits"][GPU] == 1
    assert server["resources"]["requests"][GPU] == 1
    pod = gpu.pod_spec(triton)
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"
    assert {"key": GPU, "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert server["image"].startswith("nvcr.io/nvidia/tritonserver@sha256:")


def test_triton_probes_its_own_health_endpoints_and_exposes_metrics(gpu: Any) -> None:
    triton = gpu.get("Deployment", TRITON)
    server = gpu.container(triton, "triton")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    args = server["args"]
    assert "--strict-readiness=true" in args
    assert "--model-repository=/models" in args
    assert "--metrics-port=8002" in args
    service = gpu.get("Service", TRITON)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports


def test_inference_calls_the_charts_triton_and_may_reach_it(gpu: Any) -> None:
    inference = gpu.get("Deployment", INFERENCE)
    assert gpu.env(gpu.container(inference))["TRITON_URL"] == f"{TRITON}:8001"
    egress = gpu.get("NetworkPolicy", INFERENCE)["spec"]["egress"]
    to_triton = [
        rule
        for rule in egress
        for peer in rule.get("to", [])
        if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        == "triton"
    ]
    assert [rule["ports"] for rule in to_triton] == [[{"port": 8001, "protocol": "TCP"}]]
    # The external Triton's port is no longer opened to any destination.
    assert all(
        rule.get("to") for rule in egress if {"port": 8001, "protocol": "TCP"} in rule["ports"]
    )


def test_only_inference_and_the_helm_test_reach_triton(gpu: Any) -> None:
    policy = gpu.get("NetworkPolicy", TRITON)["spec"]
    assert policy["egress"] == []
    calls, metrics = policy["ingress"]
    names = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in calls["from"]}
    assert names == {"inference", "test"}
    assert {p["port"] for p in calls["ports"]} == {"grpc", "http"}
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_a_model_image_fills_triton_and_inference_with_the_same_bytes(gpu: Any) -> None:
    copies = {}
    for name, mount in ((TRITON, "/models"), (INFERENCE, "/var/lib/medledger/models")):
        workload = gpu.get("Deployment", name)
        pod = gpu.pod_spec(workload)
        (init,) = pod["initContainers"]
        copies[name] = (init["image"], init["command"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["model-repository"]
        mounts = {
            m["name"]: m
            for c in pod["containers"]
            for m in c["volumeMounts"]
            if m["name"] == "model-repository"
        }
        assert mounts["model-repository"]["mountPath"] == mount
        assert mounts["model-repository"]["readOnly"] is True
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert copies[TRITON] == copies[INFERENCE]
    image, command = copies[TRITON]
    assert "@sha256:" in image
    assert command == ["cp", "-R", "/models/.", "/model-repository/"]


def test_with_a_volume_triton_and_inference_mount_the_same_claim(chart: Any) -> None:
    manifest = chart("--set", "triton.enabled=true")
    for name in (TRITON, INFERENCE):
        pod = manifest.pod_spec(manifest.get("Deployment", name))
        assert "initContainers" not in pod
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["model-repository"]["persistentVolumeClaim"] == {
            "claimName": "triton-model-repository",
            "readOnly": True,
        }


def test_an_explicit_triton_url_for_inference_still_wins(chart: Any) -> None:
    manifest = chart(
        "--set",
        "triton.enabled=true",
        "--set",
        "components.inference.env[0].name=TRITON_URL",
        "--set",
        "components.inference.env[0].value=triton.elsewhere:8001",
    )
    inference = manifest.get("Deployment", INFERENCE)
    assert manifest.env(manifest.container(inference))["TRITON_URL"] == "triton.elsewhere:8001"


def test_triton_speaks_mutual_tls_with_inference(gpu: Any) -> None:
    """Feature rows derived from patients' records cross the pod network encrypted: Triton's
    gRPC demands a client certificate of the release's CA, and inference presents its own."""
    triton = gpu.get("Deployment", TRITON)
    args = gpu.container(triton, "triton")["args"]
    assert "--grpc-use-ssl-mutual=true" in args
    assert "--grpc-root-cert=/etc/medledger/tls/ca.crt" in args
    certificate = gpu.get("Certificate", TRITON)
    assert TRITON in certificate["spec"]["dnsNames"]
    volumes = {v["name"]: v for v in gpu.pod_spec(triton)["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    env = gpu.env(gpu.container(gpu.get("Deployment", INFERENCE)))
    assert env["TRITON_TLS_CA_FILE"] == "/etc/medledger/tls/ca.crt"
    assert env["TRITON_TLS_CERT_FILE"] == "/etc/medledger/tls/tls.crt"
