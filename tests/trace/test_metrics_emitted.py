"""Every metric of the catalogue is really emitted, by the services the catalogue says emit it,
as the Prometheus series it lists (scraped from each process's MEDLEDGER_METRICS_PORT) and
over OTLP; and the services emit no ``medledger_`` series the catalogue does not list. With
the chart's test (its dashboards and alerts name catalogue series only) this proves the
dashboards read metrics that exist.

Vault's error counter needs Vault to fail: ``test_vault_outage.py`` proves it, last.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import defaultdict

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from medledger.api.record.v1 import record_pb2
from medledger.common.metric_catalog import (
    CATALOG,
    INGEST_REJECTS,
    VAULT_REQUEST_ERRORS,
    MetricSpec,
    prometheus_series,
)

from .conftest import TREAT, Predicted, TracedService, TracedStack

pytestmark = pytest.mark.triton

Scrape = dict[str, list[Sample]]  # series name -> samples


def _read(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode("utf-8"))


async def scrape(service: TracedService) -> Scrape:
    """What Prometheus would read from the service now."""
    text = await asyncio.to_thread(_read, service.metrics_port)
    series: Scrape = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[sample.name].append(sample)
    return series


def processes(stack: TracedStack, owner: str) -> list[str]:
    """The stack's processes of catalogue service ``owner`` (the witnesses are two)."""
    return [name for name in stack.services if name == owner or name.startswith(f"{owner}-")]


async def _ingest_reject(stack: TracedStack) -> bool:
    """Sends a message no HL7 v2 parser accepts; whether ingestion is implemented yet (the
    record service answers UNIMPLEMENTED until it is, and counts no reject)."""
    try:
        await stack.record.IngestHl7V2(
            record_pb2.IngestHl7V2Request(message="this is not an HL7 message", purpose=TREAT)
        )
    except grpc.aio.AioRpcError as error:
        return error.code() != grpc.StatusCode.UNIMPLEMENTED
    return True


def _check(spec: MetricSpec, process: str, scraped: Scrape) -> None:
    for series in spec.prometheus_series:
        samples = scraped.get(series, [])
        assert samples, f"{process} does not emit {series} ({spec.name})"
        for sample in samples:
            assert sample.labels.get("service_name") == process
            assert set(spec.prometheus_labels) <= set(sample.labels), (series, sample.labels)


async def test_every_catalogue_metric_is_scraped_from_the_services_that_emit_it(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    ingesting = await _ingest_reject(traced_stack)
    # Observable gauges are read at scrape time, histograms and counters already hold the
    # Predict's calls: one scrape of each process.
    scraped = {name: await scrape(service) for name, service in traced_stack.services.items()}
    expected = [
        spec
        for spec in CATALOG
        if spec is not VAULT_REQUEST_ERRORS and (ingesting or spec is not INGEST_REJECTS)
    ]
    for spec in expected:
        for owner in spec.services:
            names = processes(traced_stack, owner)
            assert names, f"{spec.name} names {owner}, which the stack does not run"
            for process in names:
                _check(spec, process, scraped[process])
    if not ingesting:  # nothing counts rejects before ingestion exists
        assert all(INGEST_REJECTS.prometheus_name not in s for s in scraped.values())
    # The RED metric covers the followed request: Predict answered OK (status 0).
    predicts = [
        s
        for s in scraped["inference"]["medledger_rpc_server_duration_milliseconds_count"]
        if s.labels["rpc_method"] == "Predict" and s.labels["rpc_grpc_status_code"] == "0"
    ]
    assert predicts
    assert predicts[0].value >= 1
    # CheckAccess permitted the app's reads of its own patient.
    decisions = scraped["identity"]["medledger_access_decisions_total"]
    assert {(s.labels["decision"], s.labels["reason"]) for s in decisions} >= {
        ("permit", "SAME_ORGANIZATION")
    }


async def test_the_services_emit_no_medledger_series_outside_the_catalogue(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    listed = prometheus_series()
    for name, service in traced_stack.services.items():
        scraped = await scrape(service)
        unlisted = sorted(s for s in scraped if s.startswith("medledger_") and s not in listed)
        assert unlisted == [], f"{name} emits series the catalogue does not list"


async def test_the_same_metrics_go_out_over_otlp(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    expected = {
        (process, spec.name)
        for spec in CATALOG
        if spec not in (VAULT_REQUEST_ERRORS, INGEST_REJECTS)
        for owner in spec.services
        for process in processes(traced_stack, owner)
    }
    received: set[tuple[str, str]] = set()
    for _ in range(100):  # the exporters send every second
        received = {(m.service, m.name) for m in traced_stack.receiver.metrics()}
        if expected <= received:
            break
        await asyncio.sleep(0.1)
    assert sorted(expected - received) == []
    units = {m.name: m.unit for m in traced_stack.receiver.metrics()}
    for spec in CATALOG:
        if spec.name in units:
            assert units[spec.name] == spec.unit
