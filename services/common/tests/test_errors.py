"""The error mapping: domain errors become rich statuses; bugs become a bare INTERNAL."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.errors import (
    ERROR_DOMAIN,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    to_rpc_status,
)
from medledger.testkit.inprocess import channel, inference_servicer, ledger_servicer, running

PHI = "Jane Doe, born 1961-04-02, MRN 99812"


class FailingLedger(LedgerServiceServicer):
    async def GetEntry(self, request: Any, context: Any) -> ledger_pb2.GetEntryResponse:
        raise InvalidArgument(
            [
                FieldViolation("leaf_index", "must be below the tree size"),
                FieldViolation("entry.subject", "must be 32 bytes"),
            ]
        )

    async def GetCheckpoint(self, request: Any, context: Any) -> ledger_pb2.GetCheckpointResponse:
        raise RuntimeError(f"bug while reading {PHI}")

    async def GetVerifierKey(self, request: Any, context: Any) -> ledger_pb2.GetVerifierKeyResponse:
        raise Unavailable("mongodb")

    async def ListEntries(self, request: Any, context: Any) -> ledger_pb2.ListEntriesResponse:
        raise NotFound("no such page", reason="PAGE_TOKEN_UNKNOWN")


class FailingMidStream(inference_pb2_grpc.InferenceServiceServicer):
    async def BatchPredict(self, request: Any, context: Any) -> Any:
        yield inference_pb2.BatchPredictResponse(
            progress=inference_pb2.Progress(completed=1, total=2)
        )
        raise InvalidArgument([FieldViolation("patient_ids[1]", "unknown patient")])


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    found: dict[str, Any] = {}
    for any_detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found[kind.__name__] = message
    return found


async def call_ledger(method: str, request: Any) -> grpc.aio.AioRpcError:
    async with running(ledger_servicer(FailingLedger()), name="ledger") as server:
        async with channel(server.port) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await getattr(stub, method)(request)
    return raised.value


async def test_invalid_argument_names_each_field() -> None:
    error = await call_ledger("GetEntry", ledger_pb2.GetEntryRequest(leaf_index=7))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert found["ErrorInfo"].reason == "INVALID_ARGUMENT"
    assert found["ErrorInfo"].domain == ERROR_DOMAIN
    assert found["ErrorInfo"].metadata["service"] == "ledger"
    fields = [v.field for v in found["BadRequest"].field_violations]
    assert fields == ["leaf_index", "entry.subject"]


async def test_a_bug_becomes_internal_without_its_message() -> None:
    error = await call_ledger("GetCheckpoint", ledger_pb2.GetCheckpointRequest())
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    everything = repr(error.trailing_metadata()) + str(error.debug_error_string())
    assert "Jane" not in everything
    assert "99812" not in everything
    assert details(error)["ErrorInfo"].reason == "INTERNAL"


async def test_unavailable_dependency_is_retryable() -> None:
    error = await call_ledger("GetVerifierKey", ledger_pb2.GetVerifierKeyRequest())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    found = details(error)
    assert found["ErrorInfo"].reason == "DEPENDENCY_UNAVAILABLE"
    assert found["ErrorInfo"].metadata["dependency"] == "mongodb"
    assert found["RetryInfo"].retry_delay.ToMilliseconds() > 0


async def test_custom_reason_is_kept() -> None:
    error = await call_ledger("ListEntries", ledger_pb2.ListEntriesRequest())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error)["ErrorInfo"].reason == "PAGE_TOKEN_UNKNOWN"


async def test_unfilled_rpc_answers_unimplemented() -> None:
    error = await call_ledger("Append", ledger_pb2.AppendRequest())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert details(error)["ErrorInfo"].reason == "NOT_IMPLEMENTED"


async def test_error_after_streamed_responses_keeps_them_and_maps_the_error() -> None:
    async with running(inference_servicer(FailingMidStream()), name="inference") as server:
        async with channel(server.port) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for response in stub.BatchPredict(inference_pb2.BatchPredictRequest()):
                    received.append(response)
    assert [r.progress.completed for r in received] == [1]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = details(raised.value)["BadRequest"].field_violations
    assert [v.field for v in violations] == ["patient_ids[1]"]


def test_a_precondition_on_named_inputs_carries_a_bad_request() -> None:
    """FAILED_PRECONDITION naming inputs (a prediction's missing features) lists them in a
    BadRequest, as INVALID_ARGUMENT does; one without names has none."""
    error = FailedPrecondition("features unusable", reason="FEATURES_UNUSABLE")
    error.violations = [FieldViolation("bmi", "FEATURE_MISSING")]
    status = to_rpc_status(error, service="inference")
    bad = error_details_pb2.BadRequest()
    assert [d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR)] == [True]
    assert [(v.field, v.description) for v in bad.field_violations] == [("bmi", "FEATURE_MISSING")]
    plain = to_rpc_status(FailedPrecondition("not ready"), service="inference")
    assert not any(d.Is(bad.DESCRIPTOR) for d in plain.details)
