"""Caller JSON nested deeper than any document we accept is refused as bad input before it
is parsed: never a RecursionError, an INTERNAL and a stack trace, even unauthenticated."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest

from medledger.api.identity.v1 import identity_pb2


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


DEEP = 30_000  # under the 32 KiB jwks_json limit, far past Python's recursion limit


@pytest.mark.parametrize("document", ["[" * DEEP, '{"keys":' * 3_000, '{"keys":[' + "[" * DEEP])
async def test_deep_jwks_json_is_invalid_argument_naming_the_field(
    identity: Any, document: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.stub.RegisterClient(
            identity_pb2.RegisterClientRequest(
                client_id="deep-app",
                organization="medledger",
                jwks_json=document,
                allowed_scopes=["system/Observation.rs"],
            ),
            metadata=await identity.admin(),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert identity.bad_fields(refused.value) == ["jwks_json"]


async def test_deep_client_assertion_is_malformed_not_internal(identity: Any) -> None:
    key = await identity.partner("lab-app", "medledger", ["system/*.rs"])
    header, payload, signature = identity.assertion("lab-app", key).split(".")
    deep = _segment(b"[" * 5_000)  # within the 8 KiB an assertion may take
    # The claims are read before the signature is checked (they name the client).
    for assertion in (f"{header}.{deep}.{signature}", f"{deep}.{payload}.{signature}"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.stub.IssueToken(identity.grant(assertion, "system/Patient.rs"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert identity.reason(refused.value) == "ASSERTION_MALFORMED"
