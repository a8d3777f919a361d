"""A request with thousands of bad items still gets its INVALID_ARGUMENT: the status names
the first violations only, so it fits in gRPC's trailers (else the client would see
RESOURCE_EXHAUSTED from its own transport)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.errors import MAX_REPORTED_VIOLATIONS, FieldViolation, InvalidArgument
from medledger.common.interceptors import ErrorInterceptor
from medledger.testkit.inprocess import channel


class ManyBadItems(LedgerServiceServicer):
    async def GetEntry(self, request: Any, context: Any) -> ledger_pb2.GetEntryResponse:
        raise InvalidArgument(
            [FieldViolation(f"items[{i}]", "must be a known item type") for i in range(5_000)]
        )


async def test_thousands_of_violations_still_answer_invalid_argument() -> None:
    server = grpc.aio.server(interceptors=[ErrorInterceptor("ledger")])
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(ManyBadItems(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with channel(port) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await ledger_pb2_grpc.LedgerServiceStub(ch).GetEntry(ledger_pb2.GetEntryRequest())
    finally:
        await server.stop(0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").endswith(f"and {5_000 - MAX_REPORTED_VIOLATIONS} more")
    status = rpc_status.from_call(raised.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert [v.field for v in bad.field_violations] == [
        f"items[{i}]" for i in range(MAX_REPORTED_VIOLATIONS)
    ]
