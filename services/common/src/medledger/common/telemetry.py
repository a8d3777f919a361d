"""OpenTelemetry traces, metrics and JSON logs, configured once per process.

Only the standard ``OTEL_*`` variables are read. A tracer provider is always installed,
even with no exporter, because trace ids travel in gRPC metadata and into ledger
entries; spans leave the process only when an OTLP endpoint (or
``OTEL_TRACES_EXPORTER=console``) is configured. Spans and logs carry identifiers and
method names only: MongoDB statements are not captured (they would hold PHI).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from pythonjsonlogger.json import JsonFormatter


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


def setup_telemetry(
    service_name: str, *, span_processors: Sequence[SpanProcessor] = ()
) -> Telemetry:
    """Installs the global providers and the PyMongo instrumentation (first call wins;
    later calls only add ``span_processors``, which tests use for in-memory exporters)."""
    global _installed  # noqa: PLW0603 - OpenTelemetry providers are process-global
    if _installed is not None:
        for processor in span_processors:
            _installed.tracer_provider.add_span_processor(processor)
        return _installed

    attributes = {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)}
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    traces = _exporter_choice("traces")
    if traces == "otlp":
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif traces == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)

    readers: list[MetricReader] = []
    if _exporter_choice("metrics") == "otlp":
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)

    PymongoInstrumentor().instrument(tracer_provider=tracer_provider, capture_statement=False)
    _installed = Telemetry(tracer_provider, meter_provider)
    return _installed


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The tracing interceptor for a gRPC server (extracts the caller's trace context)."""
    return [aio_server_interceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Tracing interceptors for outgoing calls (inject the current trace context)."""
    return list(aio_client_interceptors())


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
