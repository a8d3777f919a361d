"""Reflection answers under both names clients ask for, grpc.reflection.v1 and v1alpha,
without a token, and can describe itself under each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.testkit.inprocess import ledger_servicer, running

LEDGER = "medledger.api.ledger.v1.LedgerService"


async def ask(
    address: str, version: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """One request over ``grpc.reflection.<version>``: the v1 and v1alpha messages are
    the same on the wire, so the v1alpha classes encode both."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield request

        responses = [response async for response in call(requests())]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_v1_and_v1alpha_list_and_describe_the_services() -> None:
    async with running(ledger_servicer(LedgerServiceServicer()), name="ledger") as server:
        address = f"127.0.0.1:{server.port}"
        for version in ("v1", "v1alpha"):
            listed = await ask(
                address, version, reflection_pb2.ServerReflectionRequest(list_services="")
            )
            names = {s.name for s in listed.list_services_response.service}
            assert {
                LEDGER,
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names, version
            for symbol, package in (
                (LEDGER, "medledger.api.ledger.v1"),
                ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1"),
            ):
                found = await ask(
                    address,
                    version,
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
                )
                files = [
                    descriptor_pb2.FileDescriptorProto.FromString(raw)
                    for raw in found.file_descriptor_response.file_descriptor_proto
                ]
                assert files, (version, symbol, found.error_response.error_message)
                assert files[0].package == package
