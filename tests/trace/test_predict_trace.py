"""One Predict, one trace: a partner's prediction crosses inference → record → identity →
ledger → witnesses, and Triton, each hop a CLIENT span of the caller whose child is the
SERVER span of the callee, every span saying which service made it; the ledger entries the
request caused carry its trace id. One test per hop, as the OpenTelemetry demo's trace tests.

The services are real processes exporting over OTLP to the receiver (``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medledger.api.ledger.v1 import ledger_pb2
from medledger.testkit.otlp import ReceivedSpan

from .conftest import DIABETES, Predicted, TracedStack

pytestmark = pytest.mark.triton

INFERENCE = "medledger.api.inference.v1.InferenceService"
RECORD = "medledger.api.record.v1.RecordService"
IDENTITY = "medledger.api.identity.v1.IdentityService"
LEDGER = "medledger.api.ledger.v1.LedgerService"
WITNESS = "medledger.api.witness.v1.WitnessService"
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"
Found = Callable[[list[ReceivedSpan]], bool]


def _hops(spans: list[ReceivedSpan], caller: str, callee: str, service: str) -> list[str]:
    """The RPCs of ``service`` that ``caller`` made to ``callee`` in these spans: a CLIENT
    span of the caller whose child is a SERVER span of the callee with the same name."""
    clients = {
        s.span_id: s
        for s in spans
        if s.kind == "CLIENT" and s.service == caller and s.name.startswith(f"{service}/")
    }
    return sorted(
        s.name
        for s in spans
        if s.kind == "SERVER"
        and s.service == callee
        and s.parent_span_id in clients
        and clients[s.parent_span_id].name == s.name
    )


def _hop(caller: str, callee: str, service: str) -> Found:
    return lambda spans: bool(_hops(spans, caller, callee, service))


def _ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


async def _trace(stack: TracedStack, predicted: Predicted, found: Found) -> list[ReceivedSpan]:
    return await stack.receiver.wait_for(found, predicted.trace_id)


async def test_the_predict_is_the_inference_service_server_span_under_our_parent(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    def predict(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == f"{INFERENCE}/Predict" for s in spans)

    spans = await _trace(traced_stack, predicted, predict)
    (server,) = [s for s in spans if s.name == f"{INFERENCE}/Predict"]
    assert server.kind == "SERVER"
    assert server.service == "inference"
    assert server.parent_span_id == predicted.parent_span_id  # our traceparent
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.method"] == "Predict"
    assert server.attributes["rpc.grpc.status_code"] == 0


async def test_inference_calls_triton_in_a_client_span_naming_only_the_model(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    def infer(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == MODEL_INFER for s in spans)

    spans = await _trace(traced_stack, predicted, infer)
    (call,) = [s for s in spans if s.name == MODEL_INFER]
    assert call.kind == "CLIENT"
    assert call.service == "inference"
    assert call.attributes["medledger.model.name"] == DIABETES
    assert call.attributes["medledger.model.version"] == 1
    assert call.attributes["server.port"] == int(traced_stack.triton.grpc_url.rsplit(":")[1])
    # Model and RPC only: nothing of the request.
    assert set(call.attributes) == {
        "service.name",
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "server.address",
        "server.port",
        "medledger.model.name",
        "medledger.model.version",
    }
    assert f"{INFERENCE}/Predict" in [s.name for s in _ancestors(call, spans)]


async def test_inference_reads_the_patient_through_record(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    spans = await _trace(traced_stack, predicted, _hop("inference", "record", RECORD))
    hops = _hops(spans, "inference", "record", RECORD)
    assert f"{RECORD}/GetResource" in hops or f"{RECORD}/SearchResources" in hops
    # The RiskAssessment and its Provenance are written back in the same trace, together.
    spans = await _trace(
        traced_stack,
        predicted,
        lambda spans: f"{RECORD}/ExecuteBundle" in _hops(spans, "inference", "record", RECORD),
    )
    assert f"{RECORD}/CreateResource" not in _hops(spans, "inference", "record", RECORD)


async def test_record_asks_identity_whether_the_caller_may_read(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    spans = await _trace(traced_stack, predicted, _hop("record", "identity", IDENTITY))
    assert f"{IDENTITY}/CheckAccess" in _hops(spans, "record", "identity", IDENTITY)


async def test_the_reads_and_the_prediction_are_appended_to_the_ledger(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    def appended(spans: list[ReceivedSpan]) -> bool:
        return bool(_hops(spans, "record", "ledger", LEDGER)) and bool(
            _hops(spans, "inference", "ledger", LEDGER)
        )

    spans = await _trace(traced_stack, predicted, appended)
    assert f"{LEDGER}/Append" in _hops(spans, "inference", "ledger", LEDGER)
    # The durable step is in the trace, under an Append or AppendBatch the ledger served
    # (the record writes the RiskAssessment and Provenance in one AppendBatch).
    steps = [s for s in spans if s.name == "ledger.sequencer.integrate"]
    assert steps
    for step in steps:
        assert step.service == "ledger"
        served = {s.name for s in _ancestors(step, spans)}
        assert served & {f"{LEDGER}/Append", f"{LEDGER}/AppendBatch"}


async def test_the_ledger_has_the_witnesses_cosign_its_new_checkpoint(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    def cosigned(spans: list[ReceivedSpan]) -> bool:
        return all(_hops(spans, "ledger", w, WITNESS) for w in ("witness-a", "witness-b"))

    spans = await _trace(traced_stack, predicted, cosigned)
    for witness in ("witness-a", "witness-b"):
        assert f"{WITNESS}/AddCheckpoint" in _hops(spans, "ledger", witness, WITNESS)
    publish = [s for s in spans if s.name == "ledger.witnesses.publish"]
    assert publish
    assert "ledger.sequencer.integrate" in [s.name for s in _ancestors(publish[0], spans)]


async def test_one_trace_every_span_saying_which_service_made_it(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    services = {"inference", "record", "identity", "ledger", "witness-a", "witness-b"}

    def everyone(spans: list[ReceivedSpan]) -> bool:
        return services <= {s.service for s in spans}

    spans = await _trace(traced_stack, predicted, everyone)
    for span in spans:
        assert span.attributes["service.name"] == span.resource["service.name"]
    # One tree: every span but the Predict hangs under another span of the trace.
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert [s.name for s in roots] == [f"{INFERENCE}/Predict"]


async def test_the_ledger_entries_the_request_caused_carry_its_trace_id(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    trace_id = bytes.fromhex(predicted.trace_id)
    made = await traced_stack.ledger.GetEntry(
        ledger_pb2.GetEntryRequest(leaf_index=predicted.reply.receipt.leaf_index)
    )
    assert made.entry.kind == ledger_pb2.EVENT_KIND_INFERENCE_MADE
    assert made.entry.trace_id == trace_id
    listed = await traced_stack.ledger.ListEntries(
        ledger_pb2.ListEntriesRequest(
            start_index=predicted.size_before,
            page_size=predicted.size_after - predicted.size_before,
        )
    )
    ours = {e.entry.kind for e in listed.entries if e.entry.trace_id == trace_id}
    assert {
        ledger_pb2.EVENT_KIND_RECORD_READ,
        ledger_pb2.EVENT_KIND_INFERENCE_MADE,
        ledger_pb2.EVENT_KIND_RECORD_CREATED,
    } <= ours
    # Nothing else wrote meanwhile: every entry of the interval is the request's.
    assert all(e.entry.trace_id == trace_id for e in listed.entries)
