"""OpenTelemetry traces, metrics and JSON logs, configured once per process.

Only the standard ``OTEL_*`` variables are read. A tracer provider is always installed,
even with no exporter, because trace ids travel in gRPC metadata and into ledger
entries; spans leave the process only when an OTLP endpoint (or
``OTEL_TRACES_EXPORTER=console``) is configured. Spans and logs carry identifiers and
method names only: MongoDB statements are not captured (they would hold PHI).

Every span carries ``service.name`` twice: on the resource, and copied onto its own
attributes, for backends that keep no resource (Arize Phoenix keeps only its project name).
gRPC spans are named by RPC (``medledger.api.ledger.v1.LedgerService/Append``); health checks
and reflection are neither traced nor measured.

Metrics (the instruments of :mod:`medledger.common.metric_catalog`) go out over OTLP when
configured, and are always held for a Prometheus scrape, which the server bootstrap serves on
``MEDLEDGER_METRICS_PORT`` when that is set (each series labelled with ``service_name``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from pythonjsonlogger.json import JsonFormatter

from medledger.common.rpc_metrics import RpcMetricsInterceptor


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


_installed: Telemetry | None = None


def _exporter_choice(signal: str) -> str:
    """``otlp``, ``console`` or ``none`` for ``signal`` (traces/metrics), per the OTel spec."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return "none"
    chosen = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if chosen in {"none", "console"}:
        return chosen
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return "otlp" if endpoint else "none"


class ServiceNameSpanProcessor(SpanProcessor):
    """Copies the resource's ``service.name`` onto each span's attributes, and names gRPC
    spans ``package.Service/Method`` (the instrumentation's name has a leading slash)."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        service = span.resource.attributes.get(SERVICE_NAME)
        if isinstance(service, str):
            span.set_attribute(SERVICE_NAME, service)
        if span.name.startswith("/") and (span.attributes or {}).get("rpc.system") == "grpc":
            span.update_name(span.name[1:])

    def on_end(self, span: ReadableSpan) -> None:
        return None


def setup_telemetry(
    service_name: str,
    *,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """Installs the global providers and the PyMongo instrumentation (first call wins;
    later calls only add ``span_processors``, which tests use for in-memory exporters;
    ``metric_readers`` count on the first call only, as a meter provider's readers are fixed)."""
    global _installed  # noqa: PLW0603 - OpenTelemetry providers are process-global
    if _installed is not None:
        for processor in span_processors:
            _installed.tracer_provider.add_span_processor(processor)
        return _installed

    attributes = {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)}
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    # First, so the exporters' processors see the attribute.
    tracer_provider.add_span_processor(ServiceNameSpanProcessor())
    traces = _exporter_choice("traces")
    if traces == "otlp":
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif traces == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)

    # Collects only when scraped; the server bootstrap serves it on MEDLEDGER_METRICS_PORT.
    readers: list[MetricReader] = [
        PrometheusMetricReader(resource_attribute_filter=lambda key: key == SERVICE_NAME),
        *metric_readers,
    ]
    if _exporter_choice("metrics") == "otlp":
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)

    PymongoInstrumentor().instrument(tracer_provider=tracer_provider, capture_statement=False)
    _installed = Telemetry(tracer_provider, meter_provider)
    return _installed


# Health checks and reflection are probes, not the API: untraced, so they do not bury the
# traces of real calls (a probe every few seconds from every peer and the kubelet).
_TRACED = filters.negate(
    filters.any_of(
        filters.health_check(),
        filters.service_prefix("grpc.reflection."),
    )
)


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The tracing interceptor for a gRPC server (extracts the caller's trace context),
    then the RPC metrics, which thus see the status the caller gets."""
    return [aio_server_interceptor(filter_=_TRACED), RpcMetricsInterceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Tracing interceptors for outgoing calls (inject the current trace context)."""
    return list(aio_client_interceptors(filter_=_TRACED))


class _TraceContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.service = self._service
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON object a line on stderr, each with the current trace and span ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "asctime": "time"},
        )
    )
    handler.addFilter(_TraceContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def current_trace_id() -> bytes:
    """The 16-byte id of the current trace (empty when there is none), for ledger entries."""
    context = trace.get_current_span().get_span_context()
    return context.trace_id.to_bytes(16, "big") if context.is_valid else b""
