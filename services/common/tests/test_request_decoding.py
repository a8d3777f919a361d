"""Requests that do not decode answer INVALID_ARGUMENT naming the field (never UNKNOWN with
a Python exception in the message), for unary and streamed requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.config import ServiceSettings
from medledger.common.errors import from_rpc_error
from medledger.common.interceptors import ErrorInterceptor, RequestDecodingInterceptor
from medledger.common.policy import Scopes, ServiceAccess
from medledger.common.request_decoding import (
    MALFORMED_REQUEST,
    DecodeProblem,
    locate_decode_problem,
)
from medledger.common.server import ServiceServer
from medledger.common.service import Servicer, ServiceRuntime
from medledger.testkit.inprocess import channel
from medledger.testkit.tokens import TEST_TOKENS

APPEND = "/medledger.api.ledger.v1.LedgerService/Append"
STREAMED = "/test.Streams/Collect"


class Echo(LedgerServiceServicer):
    async def Append(self, request: Any, context: Any) -> ledger_pb2.AppendResponse:
        return ledger_pb2.AppendResponse()


async def _count(requests: AsyncIterator[Any], context: Any) -> ledger_pb2.AppendResponse:
    count = 0
    async for _ in requests:
        count += 1
    return ledger_pb2.AppendResponse(receipt=ledger_pb2.Receipt(leaf_index=count))


def _add_streams(server: grpc.aio.Server) -> None:
    handler = grpc.stream_unary_rpc_method_handler(
        _count,
        request_deserializer=ledger_pb2.AppendRequest.FromString,
        response_serializer=ledger_pb2.AppendResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Streams", {"Collect": handler})]
    )


def _string_field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


INVALID_UTF8 = b"\xff\xfe"
ENTRY_WITH_BAD_ACTOR = _string_field(1, _string_field(5, INVALID_UTF8))  # entry.actor
CASES = [
    (ENTRY_WITH_BAD_ACTOR, "entry.actor", "is not valid UTF-8"),
    (_string_field(2, INVALID_UTF8), "idempotency_key", "is not valid UTF-8"),
    (b"\x0a\x05\x08", "entry", "ends inside a value"),  # length beyond the end
    (b"\x0a\x02\x08\xff", "entry.kind", "ends inside a varint"),  # truncated varint
    (b"\x80", "request", "ends inside a varint"),  # truncated tag
    (b"\x7b" * 200, "request", "nests too deeply"),  # groups of an undeclared field
]


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """The ledger's servicer base and a streamed-request method, behind the error mapping
    and request decoding interceptors as the server bootstrap installs them."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor("ledger"), RequestDecodingInterceptor()]
    )
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(Echo(), server)
    _add_streams(server)
    bound = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield bound
    await server.stop(0)


def _violations(error: grpc.aio.AioRpcError) -> tuple[str, list[tuple[str, str]]]:
    """The ErrorInfo reason and the BadRequest field violations of a refused call."""
    decoded = from_rpc_error(error)
    return decoded.reason, [(v.field, v.description) for v in decoded.violations]


@pytest.mark.parametrize(("data", "field", "description"), CASES)
async def test_unary_request_that_does_not_decode_names_the_field(
    port: int, data: bytes, field: str, description: str
) -> None:
    with pytest.raises(DecodeError):
        ledger_pb2.AppendRequest.FromString(data)  # the case really is undecodable
    async with channel(port) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ch.unary_unary(APPEND, None, None)(data)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Error" not in (raised.value.details() or "")
    assert _violations(raised.value) == (MALFORMED_REQUEST, [(field, description)])


async def test_authentication_comes_before_decoding() -> None:
    """In the real bootstrap a caller without a valid token learns nothing about its bytes."""
    ledger = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
    access = ServiceAccess(ledger, dict.fromkeys(ledger.methods, Scopes("admin")))
    server = ServiceServer(
        ServiceRuntime(
            name="ledger",
            settings=ServiceSettings(grpc_port=0),
            servicers=[
                Servicer(Echo(), ledger_pb2_grpc.add_LedgerServiceServicer_to_server, access)
            ],
            verifier=TEST_TOKENS.verifier(),
        )
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            append = ch.unary_unary(APPEND, None, None)
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await append(ENTRY_WITH_BAD_ACTOR)
            with pytest.raises(grpc.aio.AioRpcError) as authenticated:
                await append(ENTRY_WITH_BAD_ACTOR, metadata=TEST_TOKENS.metadata(["admin"]))
    finally:
        await server.stop(grace=0)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert authenticated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(authenticated.value)[0] == MALFORMED_REQUEST


async def test_a_good_request_still_decodes(port: int) -> None:
    async with channel(port) as ch:
        reply = await ch.unary_unary(APPEND, None, None)(b"\x12\x01k")
    assert reply == b""


async def test_a_streamed_request_that_does_not_decode_names_the_field(
    port: int,
) -> None:
    good = ledger_pb2.AppendRequest(idempotency_key="k").SerializeToString()
    async with channel(port) as ch:
        collect = ch.stream_unary(STREAMED, None, None)
        reply = await collect(iter([good, good]))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(iter([good, ENTRY_WITH_BAD_ACTOR, good]))
    assert ledger_pb2.AppendResponse.FromString(reply).receipt.leaf_index == 2
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(raised.value) == (MALFORMED_REQUEST, [("entry.actor", "is not valid UTF-8")])


@given(st.binary(max_size=200))
def test_the_locator_accepts_any_bytes(data: bytes) -> None:
    problem = locate_decode_problem(ledger_pb2.AppendRequest.DESCRIPTOR, data)
    assert isinstance(problem, DecodeProblem)


@given(
    key=st.text(max_size=20),
    actor=st.text(max_size=20),
    bad=st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"a\x80"]),
)
def test_invalid_utf8_is_found_in_the_field_that_holds_it(key: str, actor: str, bad: bytes) -> None:
    entry = ledger_pb2.LedgerEntry(actor=actor).SerializeToString()
    data = (
        ledger_pb2.AppendRequest(idempotency_key=key).SerializeToString()
        + _string_field(1, entry + _string_field(6, bad))  # entry.organization
    )
    with pytest.raises(DecodeError):
        ledger_pb2.AppendRequest.FromString(data)
    assert locate_decode_problem(ledger_pb2.AppendRequest.DESCRIPTOR, data) == DecodeProblem(
        "entry.organization", "is not valid UTF-8"
    )
