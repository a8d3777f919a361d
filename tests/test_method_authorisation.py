"""Authorisation fails closed across the services: every method of every service, as each
running server lists it through its own reflection service, answers PERMISSION_DENIED to a
valid token from identity that lacks the method's scope; only IssueToken, GetJwks, health and
reflection are public.

The five services run in this process, wired as ``python -m`` wires them (``from_settings``:
tokens checked against identity's JWKS), next to a real identity that issues the tokens.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.policy import MethodPolicy, Public
from medledger.common.server import ServiceServer
from medledger.common.vault_layout import WITNESS_KEYS, witness_mount
from medledger.identity.server import IDENTITY_ACCESS
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.runtime import from_settings as inference_from_settings
from medledger.inference.server import INFERENCE_ACCESS
from medledger.ledger.server import LEDGER_ACCESS
from medledger.record.config import RecordSettings
from medledger.record.runtime import from_settings as record_from_settings
from medledger.record.server import RECORD_ACCESS
from medledger.testkit.platform import Platform
from medledger.tlog.note import SIG_ED25519, VerifierKey
from medledger.witness.config import WitnessSettings
from medledger.witness.runtime import from_settings as witness_from_settings
from medledger.witness.server import WITNESS_ACCESS

PUBLIC = {
    "/medledger.api.identity.v1.IdentityService/IssueToken",
    "/medledger.api.identity.v1.IdentityService/GetJwks",
}
OURS = "medledger.api."
# What each declared method demands, to pick a token lacking it.
POLICIES: dict[str, MethodPolicy] = {
    path: policy
    for access in (
        IDENTITY_ACCESS,
        LEDGER_ACCESS,
        WITNESS_ACCESS,
        RECORD_ACCESS,
        INFERENCE_ACCESS,
    )
    for path, policy in access.by_path().items()
}
# Scopes a partner client may be granted; for each method, the first its policy refuses.
CANDIDATE_SCOPES = ("ledger.read", "witness.add", "system/Observation.rs")


def _log_vkey() -> str:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return str(VerifierKey.for_key("authorisation.test/log", SIG_ED25519, public))


@pytest.fixture(scope="module")
async def servers(
    auth_platform: Platform,
    mongo_server: Any,
    vault_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, str]]:
    """Service name -> address, for all five services."""
    peers = PeerSettings(
        identity_addr=auth_platform.identity_address, ledger_addr=auth_platform.ledger_address
    )
    mongo = MongoSettings(
        MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"authz{os.getpid()}"
    )
    started = [
        ServiceServer(
            record_from_settings(
                RecordSettings(grpc_port=0),
                mongo,
                VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
                peers,
            )
        ),
        # No Triton here: inference stays NOT_SERVING, and still decides who may call it.
        ServiceServer(
            inference_from_settings(
                InferenceSettings(grpc_port=0),
                InferenceConfig(model_repository=tmp_path_factory.mktemp("models")),
                TritonSettings(url="127.0.0.1:9"),
                mongo,
                VaultSettings(addr=vault_server.addr, token=vault_server.token_for("inference")),
                peers,
            )
        ),
        ServiceServer(
            witness_from_settings(
                WitnessSettings(
                    grpc_port=0,
                    witness_name="authorisation.test/witness",
                    witness_key=WITNESS_KEYS["witness-a"],
                    witness_log_vkeys=(_log_vkey(),),
                ),
                mongo,
                VaultSettings(
                    addr=vault_server.addr,
                    token=vault_server.token_for("witness-a"),
                    transit_mount=witness_mount("witness-a"),
                ),
                peers,
            )
        ),
    ]
    for server in started:
        await server.start()
    yield {
        "identity": auth_platform.identity_address,
        "ledger": auth_platform.ledger_address,
        **{s.service.name: f"127.0.0.1:{s.port}" for s in started},
    }
    for server in started:
        await server.stop(0)


async def reflected_methods(address: str) -> list[tuple[str, bool, bool]]:
    """(full method name, client streaming, server streaming) of every medledger method the
    server at ``address`` lists, read from its reflection service alone."""
    requests = [reflection_pb2.ServerReflectionRequest(list_services="")]
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (listed,) = [r async for r in call(iter(requests))]
        names = [s.name for s in listed.list_services_response.service if s.name.startswith(OURS)]
        asks = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names]
        files = [r async for r in call(iter(asks))]
    found = []
    for name, answer in zip(names, files, strict=True):
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for service in file.service:
                if f"{file.package}.{service.name}" == name:
                    found += [
                        (f"/{name}/{m.name}", m.client_streaming, m.server_streaming)
                        for m in service.method
                    ]
    return found


async def outcome(
    ch: grpc.aio.Channel, path: str, streams: tuple[bool, bool], token: str
) -> grpc.StatusCode:
    """The status of a call with an empty request (each call shape as it is served)."""
    metadata = [("authorization", f"Bearer {token}")]
    try:
        match streams:
            case (False, False):
                await ch.unary_unary(path)(b"", metadata=metadata, timeout=10)
            case (False, True):
                async for _ in ch.unary_stream(path)(b"", metadata=metadata, timeout=10):
                    pass
            case (True, False):
                await ch.stream_unary(path)(iter([b""]), metadata=metadata, timeout=10)
            case _:
                async for _ in ch.stream_stream(path)(iter([b""]), metadata=metadata, timeout=10):
                    pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_every_method_refuses_a_token_without_its_scope(
    servers: dict[str, str], auth_platform: Platform
) -> None:
    tokens = {scope: await auth_platform.token(scope) for scope in CANDIDATE_SCOPES}
    walked: dict[str, int] = {}
    wrong: dict[str, str] = {}
    for service, address in servers.items():
        async with grpc.aio.insecure_channel(address) as ch:
            for path, client_streams, server_streams in await reflected_methods(address):
                if path in PUBLIC:
                    continue
                policy = POLICIES.get(path)
                assert policy is not None, f"{path} is served but declared nowhere"
                assert not isinstance(policy, Public), f"{path} is declared public"
                scope = next(s for s in CANDIDATE_SCOPES if not policy.admits(frozenset({s})))
                code = await outcome(ch, path, (client_streams, server_streams), tokens[scope])
                if code != grpc.StatusCode.PERMISSION_DENIED:
                    wrong[path] = f"{code.name} with a token holding only {scope}"
                walked[service] = walked.get(service, 0) + 1
    assert wrong == {}
    # The walk really covered each service's surface (identity: all but its 2 public RPCs).
    assert walked == {"identity": 23, "ledger": 9, "witness": 2, "record": 17, "inference": 5}
