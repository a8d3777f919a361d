"""One trace id across two services: the caller's context crosses the gRPC hop; spans are
named by RPC and say which service made them; each call is measured by RPC and status."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.telemetry import configure_logging, current_trace_id, setup_telemetry
from medledger.testkit.inprocess import ledger_servicer, running
from medledger.testkit.tokens import TEST_TOKENS


class Downstream(LedgerServiceServicer):
    def __init__(self) -> None:
        self.trace_ids: list[bytes] = []

    async def GetVerifierKey(self, request: Any, context: Any) -> ledger_pb2.GetVerifierKeyResponse:
        self.trace_ids.append(current_trace_id())
        logging.getLogger("medledger.test").info("downstream handled")
        return ledger_pb2.GetVerifierKeyResponse(vkey="downstream")


class Upstream(LedgerServiceServicer):
    """Answers GetCheckpoint by calling the downstream service, as record calls ledger."""

    def __init__(self, downstream_port: int) -> None:
        self._target = f"127.0.0.1:{downstream_port}"

    async def GetCheckpoint(self, request: Any, context: Any) -> ledger_pb2.GetCheckpointResponse:
        async with create_channel(self._target, ServiceSettings()) as ch:
            key = await ledger_pb2_grpc.LedgerServiceStub(ch).GetVerifierKey(
                ledger_pb2.GetVerifierKeyRequest(), metadata=TEST_TOKENS.metadata()
            )
        return ledger_pb2.GetCheckpointResponse(checkpoint=key.vkey.encode())


async def test_one_trace_crosses_two_services(capfd: Any) -> None:
    exporter = InMemorySpanExporter()
    setup_telemetry("test", span_processors=[SimpleSpanProcessor(exporter)])
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("test")  # writes to this test's captured stderr: restored below
    try:
        await _run_two_services(exporter, capfd)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def _run_two_services(exporter: InMemorySpanExporter, capfd: Any) -> None:
    downstream = Downstream()
    async with running(ledger_servicer(downstream), name="downstream") as b:
        async with running(ledger_servicer(Upstream(b.port)), name="upstream") as a:
            async with create_channel(f"127.0.0.1:{a.port}", ServiceSettings()) as ch:
                stub = ledger_pb2_grpc.LedgerServiceStub(ch)
                response = await stub.GetCheckpoint(
                    ledger_pb2.GetCheckpointRequest(), metadata=TEST_TOKENS.metadata()
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.GetEntry(
                        ledger_pb2.GetEntryRequest(), metadata=TEST_TOKENS.metadata()
                    )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert response.checkpoint == b"downstream"

    spans = exporter.get_finished_spans()
    by_name = {(s.name, s.kind): s for s in spans}
    get_checkpoint = "medledger.api.ledger.v1.LedgerService/GetCheckpoint"
    get_key = "medledger.api.ledger.v1.LedgerService/GetVerifierKey"
    upstream_server = by_name[(get_checkpoint, SpanKind.SERVER)]
    downstream_client = by_name[(get_key, SpanKind.CLIENT)]
    downstream_server = by_name[(get_key, SpanKind.SERVER)]
    trace_id = upstream_server.context.trace_id
    assert downstream_client.context.trace_id == trace_id
    assert downstream_server.context.trace_id == trace_id
    # The hop is linked: downstream's server span is the child of upstream's client span.
    assert downstream_server.parent is not None
    assert downstream_server.parent.span_id == downstream_client.context.span_id
    assert downstream_client.parent is not None
    assert downstream_client.parent.span_id == upstream_server.context.span_id
    # Each span says which service made it, on its attributes as on its resource; health
    # checks (the servers' readiness) are not traced.
    for span in spans:
        assert span.attributes is not None
        assert span.attributes[SERVICE_NAME] == span.resource.attributes[SERVICE_NAME]
        assert "grpc.health" not in span.name
    # Both calls were measured, by service, method and status (OK is 0).
    measured = {
        (sample.labels["rpc_method"], sample.labels["rpc_grpc_status_code"])
        for family in REGISTRY.collect()
        if family.name == "medledger_rpc_server_duration_milliseconds"
        for sample in family.samples
        if sample.name.endswith("_count") and sample.value > 0
    }
    # The status is the one the caller saw: UNIMPLEMENTED (12) from the error mapping.
    assert {("GetCheckpoint", "0"), ("GetVerifierKey", "0"), ("GetEntry", "12")} <= measured
    # The handler sees the same trace id (what ledger entries will carry) ...
    assert downstream.trace_ids == [trace_id.to_bytes(16, "big")]
    # ... and so do the JSON logs.
    # Our JSON lines only: gRPC's C core may log to the same stderr (a GOAWAY from servers
    # an earlier module stopped), lines that can hold braces too.
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    handled = [line for line in lines if line.get("message") == "downstream handled"]
    assert handled
    assert handled[0]["trace_id"] == format(trace_id, "032x")
