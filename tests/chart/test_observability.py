"""The chart's observability (ci/observability-values.yaml): every metric the Grafana dashboards
and the PrometheusRule alerts query is a series of medledger.common.metric_catalog, with labels
it has; the dashboards pick their Prometheus by ${datasource}; the services expose their metrics
port, the ServiceMonitor scrapes it, and the collector is their OTLP endpoint."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from medledger.common import metric_catalog

ROOT = Path(__file__).resolve().parents[2]
# Labels Prometheus adds to every scraped series (the target's), and histograms' bucket bound.
SCRAPE_LABELS = frozenset({"namespace", "job", "pod", "instance", "service", "container"})
SERVICES = ("identity", "record", "ledger", "inference")
REQUIRED_ALERTS = {
    "MedledgerLedgerAppendSlow",
    "MedledgerCheckpointStale",
    "MedledgerWitnessLagging",
    "MedledgerErrorRatioHigh",
}


@pytest.fixture(scope="module")
def observed(chart: Any) -> Any:
    return chart(*chart.values("observability"))


@pytest.fixture(scope="module")
def promql_python() -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "chart-check.sh"), "--promql-python"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot install promql-parser: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def dashboards(manifest: Any) -> dict[str, dict[str, Any]]:
    found = {}
    for config_map in manifest.of_kind("ConfigMap").values():
        if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            ((name, text),) = config_map["data"].items()
            found[name] = json.loads(text)
    return found


def alert_rules(manifest: Any) -> dict[str, dict[str, Any]]:
    (rule,) = manifest.of_kind("PrometheusRule").values()
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def grafana_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL a dashboard runs: its panels' targets and its variables' label_values()."""
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]+\)", query)
            assert inner, query
            queries.append(inner.group(1))
    return queries


def as_prometheus_sees_it(query: str) -> str:
    """Grafana's variables replaced as Grafana does before sending the query."""
    query = query.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?[A-Za-z_]+\}?", "x", query)


def parse(python: str, expressions: list[str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [python, str(ROOT / "tests" / "chart" / "promql_names.py")],
        input=json.dumps(expressions),
        capture_output=True,
        text=True,
        check=True,
    )
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


def catalogue_labels() -> dict[str, frozenset[str]]:
    """Each catalogue series and the labels it carries."""
    labels = {}
    for metric in metric_catalog.CATALOG:
        for series in metric.prometheus_series:
            extra = {"le"} if series.endswith("_bucket") else set()
            labels[series] = frozenset(metric.prometheus_labels) | extra
    return labels


def test_the_catalogue_lists_series_names() -> None:
    series = metric_catalog.prometheus_series()
    assert "medledger_rpc_server_duration_milliseconds_bucket" in series
    assert "medledger_ledger_checkpoint_age_seconds" in series
    assert "medledger_vault_request_errors_total" in series


def test_every_query_names_catalogued_series_with_their_labels(
    observed: Any, promql_python: str
) -> None:
    queries: dict[str, str] = {}
    for name, dashboard in dashboards(observed).items():
        for i, query in enumerate(grafana_queries(dashboard)):
            queries[f"{name} #{i}"] = as_prometheus_sees_it(query)
    for name, rule in alert_rules(observed).items():
        queries[f"alert {name}"] = rule["expr"]
    assert len(queries) > 30
    known = catalogue_labels()
    used: set[str] = set()
    for (where, query), answer in zip(
        queries.items(), parse(promql_python, list(queries.values())), strict=True
    ):
        assert "error" not in answer, f"{where}: {answer.get('error')}: {query}"
        assert answer["names"], f"{where} selects no metric: {query}"
        for series, labels in answer["matchers"].items():
            assert series in known, f"{where}: {series} is not in the metric catalogue"
            assert set(labels) <= known[series] | SCRAPE_LABELS, f"{where}: {series} {labels}"
        allowed = set(SCRAPE_LABELS).union(*(known[s] for s in answer["names"]))
        assert set(answer["grouping"]) <= allowed, f"{where}: {answer['grouping']}"
        used.update(answer["names"])
    # The dashboards cover every catalogued instrument.
    for metric in metric_catalog.CATALOG:
        assert used & set(metric.prometheus_series), f"no dashboard shows {metric.name}"


def test_a_metric_not_in_the_catalogue_is_caught(promql_python: str) -> None:
    (answer,) = parse(promql_python, ['rate(medledger_made_up_total{namespace="x"}[5m])'])
    assert answer["names"] == ["medledger_made_up_total"]
    assert "medledger_made_up_total" not in catalogue_labels()


def test_the_required_alerts_are_there_with_what_an_sre_needs(observed: Any) -> None:
    rules = alert_rules(observed)
    assert rules.keys() >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 80, name
    # The thresholds come from the values.
    assert ") > 250" in rules["MedledgerLedgerAppendSlow"]["expr"]
    (rule,) = observed.of_kind("PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_for_the_grafana_sidecar_and_choose_their_datasource(
    observed: Any,
) -> None:
    found = dashboards(observed)
    assert set(found) == {"service-overview.json", "ledger.json", "inference.json"}
    for config_map in observed.of_kind("ConfigMap").values():
        if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            assert config_map["metadata"]["namespace"] == "monitoring"
    for name, dashboard in found.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                for target in panel["targets"]:
                    assert target["datasource"]["uid"] == "${datasource}", name
    uids = [d["uid"] for d in found.values()]
    assert len(set(uids)) == len(uids)


def test_services_expose_metrics_and_the_service_monitor_scrapes_them(observed: Any) -> None:
    for name in SERVICES:
        deployment = observed.get("Deployment", f"medledger-{name}")
        server = observed.container(deployment)
        assert observed.env(server)["MEDLEDGER_METRICS_PORT"] == "9464"
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in server["ports"]
        service = observed.get("Service", f"medledger-{name}")
        assert {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"} in (
            service["spec"]["ports"]
        )
        ingress = observed.get("NetworkPolicy", f"medledger-{name}")["spec"]["ingress"]
        (metrics,) = [rule for rule in ingress if rule["ports"][0]["port"] == "metrics"]
        assert metrics["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    (monitor,) = observed.of_kind("ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert set(expression["values"]) == set(SERVICES)


def test_the_metrics_port_is_on_by_default(chart: Any) -> None:
    manifest = chart()
    for name in SERVICES:
        server = manifest.container(manifest.get("Deployment", f"medledger-{name}"))
        assert manifest.env(server)["MEDLEDGER_METRICS_PORT"] == "9464"
    assert manifest.of_kind("ServiceMonitor") == {}
    assert manifest.of_kind("PrometheusRule") == {}
    assert "medledger-otel-collector" not in manifest.of_kind("Deployment")


def test_the_collector_is_the_services_otlp_endpoint(observed: Any) -> None:
    for name in SERVICES:
        deployment = observed.get("Deployment", f"medledger-{name}")
        variables = observed.env(observed.container(deployment))
        assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://medledger-otel-collector:4317"
        egress = observed.get("NetworkPolicy", f"medledger-{name}")["spec"]["egress"]
        assert {
            "to": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "otel-collector",
                            "app.kubernetes.io/instance": "medledger",
                        }
                    }
                }
            ],
            "ports": [{"port": 4317, "protocol": "TCP"}],
        } in egress
    config = yaml.safe_load(
        observed.get("ConfigMap", "medledger-otel-collector")["data"]["config.yaml"]
    )
    assert config["exporters"]["otlp/traces"]["endpoint"] == "tempo.observability.svc:4317"
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["otlp/traces"]
    policy = observed.get("NetworkPolicy", "medledger-otel-collector")["spec"]
    assert [rule["ports"] for rule in policy["egress"]][1] == [{"port": 4317, "protocol": "TCP"}]


def test_a_monitor_without_a_metrics_port_is_refused(chart: Any) -> None:
    error = chart.refuses("--set", "metrics.port=0", "--set", "metrics.monitor.kind=PodMonitor")
    assert "metrics.monitor.kind needs metrics.port" in error
