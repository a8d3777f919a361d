"""The metric catalogue says truly how each instrument appears in Prometheus: an instrument
made from each entry, exported by the real OpenTelemetry Prometheus reader, shows exactly the
series and labels the entry lists. Names are unique, units UCUM, and the README's
observability section lists every metric."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from prometheus_client import CollectorRegistry

from medledger.common.metric_catalog import CATALOG, Kind, MetricSpec, prometheus_series
from medledger.common.metrics import ingest_rejected

README = Path(__file__).resolve().parents[3] / "README.md"


def _exported(spec: MetricSpec) -> dict[str, set[str]]:
    """Series name -> label names, as a scrape of one recorded measurement shows them."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(
        resource_attribute_filter=lambda key: key == SERVICE_NAME, registry=registry
    )
    provider = MeterProvider(
        resource=Resource.create({SERVICE_NAME: "test"}), metric_readers=[reader]
    )
    meter = provider.get_meter("medledger")
    attributes = {key: "x" for key in spec.attributes}
    if spec.kind is Kind.HISTOGRAM:
        meter.create_histogram(spec.name, unit=spec.unit).record(1.0, attributes)
    elif spec.kind is Kind.COUNTER:
        meter.create_counter(spec.name, unit=spec.unit).add(1, attributes)
    else:

        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(1.0, attributes)]

        meter.create_observable_gauge(spec.name, callbacks=[observe], unit=spec.unit)
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith("medledger_"):
                series.setdefault(sample.name, set()).update(sample.labels)
    provider.shutdown()
    return series


@pytest.mark.parametrize("spec", CATALOG, ids=[m.name for m in CATALOG])
def test_the_listed_series_are_what_the_exporter_makes(spec: MetricSpec) -> None:
    exported = _exported(spec)
    assert set(exported) == set(spec.prometheus_series)
    for labels in exported.values():
        assert {*spec.prometheus_labels, "service_name"} <= labels


def test_names_are_unique_and_units_ucum() -> None:
    assert len({m.name for m in CATALOG}) == len(CATALOG)
    assert len(prometheus_series()) == sum(len(m.prometheus_series) for m in CATALOG)
    for metric in CATALOG:
        assert metric.name.startswith("medledger.")
        assert re.fullmatch(r"ms|s|\{[a-z]+\}", metric.unit), metric.unit
        assert metric.reading
        assert metric.description
        assert metric.services


def test_the_readme_lists_every_metric() -> None:
    text = README.read_text(encoding="utf-8")
    for metric in CATALOG:
        assert f"`{metric.name}`" in text, metric.name
        assert f"`{metric.prometheus_name}" in text, metric.prometheus_name


def test_ingest_rejects_take_codes_only() -> None:
    ingest_rejected("hl7", "CODE_INVALID")
    ingest_rejected("csv", "MISSING_PATIENT", count=3)
    for source, reason in [("fax", "X"), ("hl7", "Zebulon Quixote"), ("csv", "")]:
        with pytest.raises(ValueError, match="must be"):
            ingest_rejected(source, reason)
