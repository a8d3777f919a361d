"""from_rpc_error is the inverse of to_rpc_status: what the server raised, the client gets."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.errors import (
    FieldViolation,
    InvalidArgument,
    MedledgerError,
    NotFound,
    RemoteError,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from medledger.testkit.inprocess import channel, ledger_servicer, running


class Refusing(LedgerServiceServicer):
    async def GetEntry(self, request: Any, context: Any) -> ledger_pb2.GetEntryResponse:
        raise InvalidArgument(
            [FieldViolation("leaf_index", "must be below the tree size")], reason="BEYOND_TREE"
        )

    async def GetVerifierKey(self, request: Any, context: Any) -> ledger_pb2.GetVerifierKeyResponse:
        raise Unavailable("vault")

    async def ListEntries(self, request: Any, context: Any) -> ledger_pb2.ListEntriesResponse:
        raise NotFound("no such leaf", reason="LEAF_NOT_FOUND", metadata={"size": "3"})

    async def GetInclusionProof(
        self, request: Any, context: Any
    ) -> ledger_pb2.GetInclusionProofResponse:
        raise ResourceExhausted("slow down", reason="THROTTLED", retry_after_seconds=7)

    async def GetCheckpoint(self, request: Any, context: Any) -> ledger_pb2.GetCheckpointResponse:
        # A plain status, as a server that does not send rich details would answer.
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "past the end")
        raise AssertionError("unreachable")


async def decoded(method: str, request: Any) -> MedledgerError:
    async with running(ledger_servicer(Refusing()), name="ledger") as server:
        async with channel(server.port) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await getattr(stub, method)(request)
    return from_rpc_error(raised.value)


async def test_bad_request_comes_back_with_its_fields_and_reason() -> None:
    error = await decoded("GetEntry", ledger_pb2.GetEntryRequest(leaf_index=9))
    assert isinstance(error, InvalidArgument)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "BEYOND_TREE"
    assert error.violations == [FieldViolation("leaf_index", "must be below the tree size")]
    assert error.metadata["service"] == "ledger"


async def test_unavailable_carries_its_retry_delay_and_dependency() -> None:
    error = await decoded("GetVerifierKey", ledger_pb2.GetVerifierKeyRequest())
    assert isinstance(error, Unavailable)
    assert error.reason == "DEPENDENCY_UNAVAILABLE"
    assert error.metadata["dependency"] == "vault"
    assert error.retry_delay_seconds == pytest.approx(0.5)


async def test_resource_exhausted_says_when_to_retry() -> None:
    error = await decoded("GetInclusionProof", ledger_pb2.GetInclusionProofRequest())
    assert isinstance(error, ResourceExhausted)
    assert error.reason == "THROTTLED"
    assert error.retry_delay_seconds == 7


async def test_reason_and_metadata_survive() -> None:
    error = await decoded("ListEntries", ledger_pb2.ListEntriesRequest())
    assert isinstance(error, NotFound)
    assert (error.reason, error.metadata["size"], error.message) == (
        "LEAF_NOT_FOUND",
        "3",
        "no such leaf",
    )


async def test_a_status_without_details_keeps_code_and_message() -> None:
    error = await decoded("GetCheckpoint", ledger_pb2.GetCheckpointRequest())
    assert isinstance(error, RemoteError)
    assert error.code == grpc.StatusCode.OUT_OF_RANGE
    assert error.reason == "OUT_OF_RANGE"
    assert error.message == "past the end"
    assert error.violations == []
