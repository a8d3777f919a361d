"""An OTLP/gRPC receiver in the test process: the services, run as real processes with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at it, export their spans and metrics here, as they
would to a Collector. The spans are kept flattened (:class:`ReceivedSpan`) for trace tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

# OTLP's span kinds, as OpenTelemetry's API names them.
KINDS = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def any_value(value: AnyValue) -> Any:
    """An OTLP attribute value as a Python value."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which is None:
        return None
    return getattr(value, which)


def attributes(items: Iterable[KeyValue]) -> dict[str, Any]:
    return {item.key: any_value(item.value) for item in items}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as a backend sees it."""

    resource: dict[str, Any]
    scope: str
    name: str
    kind: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    links: tuple[tuple[str, str, dict[str, Any]], ...]  # (trace id, span id, attributes)
    status_message: str

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True)
class ReceivedMetric:
    service: str
    name: str
    unit: str
    description: str


def _link(link: Span.Link) -> tuple[str, str, dict[str, Any]]:
    return (link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, keep: Callable[[list[ReceivedSpan]], None]) -> None:
        self._keep = keep

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            resource=resource,
                            scope=scope_spans.scope.name,
                            name=span.name,
                            kind=KINDS.get(span.kind, "UNSPECIFIED"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=attributes(span.attributes),
                            events=tuple((e.name, attributes(e.attributes)) for e in span.events),
                            links=tuple(_link(link) for link in span.links),
                            status_message=span.status.message,
                        )
                    )
        self._keep(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, keep: Callable[[list[ReceivedMetric]], None]) -> None:
        self._keep = keep

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        received: list[ReceivedMetric] = []
        for resource_metrics in request.resource_metrics:
            service = str(attributes(resource_metrics.resource.attributes).get("service.name"))
            for scope_metrics in resource_metrics.scope_metrics:
                received.extend(
                    ReceivedMetric(service, m.name, m.unit, m.description)
                    for m in scope_metrics.metrics
                )
        self._keep(received)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """OTLP/gRPC trace and metrics services on a loopback port (a thread pool of its own, so
    it answers whatever the test's event loop is doing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._metrics: list[ReceivedMetric] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _Traces(self._keep_spans), self._server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _Metrics(self._keep_metrics), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to."""
        return f"http://127.0.0.1:{self.port}"

    def _keep_spans(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def _keep_metrics(self, received: list[ReceivedMetric]) -> None:
        with self._lock:
            self._metrics.extend(received)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        """The spans received so far (of one trace, when given its hex id)."""
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def metrics(self) -> list[ReceivedMetric]:
        with self._lock:
            return list(self._metrics)

    async def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], trace_id: str, within: float = 20.0
    ) -> list[ReceivedSpan]:
        """The trace's spans once ``found`` holds for them (the exporters batch: a span
        arrives a moment after it ends); AssertionError naming what came, after ``within``."""
        deadline = time.monotonic() + within
        while True:
            spans = self.spans(trace_id)
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({f"{s.service}: {s.name}" for s in spans})
                raise AssertionError(f"trace {trace_id} incomplete after {within} s: {names}")
            await asyncio.sleep(0.1)
