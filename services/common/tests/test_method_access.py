"""Authorisation fails closed: every method of a service is declared (public, or what the
token must hold), a server with an undeclared method or without a verifier does not start,
and the interceptor denies what it was not told about, whatever the token."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.ledger.v1.ledger_pb2_grpc import LedgerServiceServicer
from medledger.common.config import ConfigError, ServiceSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.interceptors import authenticated_principal
from medledger.common.policy import (
    PUBLIC,
    ResourceAccess,
    Scopes,
    ServiceAccess,
    undeclared_methods,
)
from medledger.common.server import ServiceServer
from medledger.common.service import Servicer, ServiceRuntime
from medledger.testkit.inprocess import inference_servicer, running
from medledger.testkit.tokens import TEST_TOKENS

LEDGER = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
METHODS = LEDGER.methods_by_name
# A declaration of this test's own: one public method, one scope, one SMART resource rule.
TEST_ACCESS = ServiceAccess(
    LEDGER,
    {
        METHODS["GetVerifierKey"]: PUBLIC,
        METHODS["GetCheckpoint"]: Scopes("ledger.read", "admin"),
        METHODS["GetEntry"]: ResourceAccess("Observation", "r"),
        **{
            method: Scopes("admin")
            for method in LEDGER.methods
            if method.name not in {"GetVerifierKey", "GetCheckpoint", "GetEntry"}
        },
    },
)
UNDECLARED = "/test.Extra/Call"


class WhoAmI(LedgerServiceServicer):
    """Answers with the caller's subject, read the one way handlers read it."""

    async def GetVerifierKey(self, request: Any, context: Any) -> ledger_pb2.GetVerifierKeyResponse:
        return ledger_pb2.GetVerifierKeyResponse(vkey=authenticated_principal().subject)

    async def GetCheckpoint(self, request: Any, context: Any) -> ledger_pb2.GetCheckpointResponse:
        return ledger_pb2.GetCheckpointResponse(
            checkpoint=authenticated_principal().subject.encode()
        )

    async def GetEntry(self, request: Any, context: Any) -> ledger_pb2.GetEntryResponse:
        return ledger_pb2.GetEntryResponse(entry_bytes=authenticated_principal().subject.encode())


def _add_with_extra(implementation: Any, server: grpc.aio.Server) -> None:
    """Registers the ledger servicer and, beside it, a method no declaration names."""
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(implementation, server)

    async def call(request: bytes, context: Any) -> bytes:
        return b"reached"

    handler = grpc.unary_unary_rpc_method_handler(call)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Extra", {"Call": handler})]
    )


def runtime(access: ServiceAccess, **overrides: Any) -> ServiceRuntime:
    fields: dict[str, Any] = {
        "name": "ledger",
        "settings": ServiceSettings(grpc_port=0),
        "servicers": [Servicer(WhoAmI(), _add_with_extra, access)],
        "verifier": TEST_TOKENS.verifier(),
    }
    fields.update(overrides)
    return ServiceRuntime(**fields)


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    server = ServiceServer(runtime(TEST_ACCESS))
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop(grace=0)


def bearer(*scopes: str) -> list[tuple[str, str]]:
    return TEST_TOKENS.metadata(scopes, subject="lab-app")


def error_info(error: grpc.aio.AioRpcError) -> MedledgerError:
    return from_rpc_error(error)


async def refusal(address: str, method: str, metadata: Any = None) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ch.unary_unary(method)(b"", metadata=metadata, timeout=5)
    return refused.value


# --- the rules -------------------------------------------------------------------------------


def test_scopes_admit_a_token_holding_any_one_of_them() -> None:
    rule = Scopes("ledger.read", "admin")
    assert rule.admits(frozenset({"admin", "x"}))
    assert not rule.admits(frozenset({"ledger.append", "system/*.cruds"}))
    assert not rule.admits(frozenset())
    with pytest.raises(ValueError, match="at least one"):
        Scopes()


@pytest.mark.parametrize(
    ("scope", "admitted"),
    [
        ("system/Observation.rs", True),
        ("user/*.cruds", True),
        ("patient/Observation.r?category=laboratory", True),
        ("system/Observation.s", False),  # search only
        ("system/Patient.rs", False),  # another resource
        ("admin", False),  # platform scopes are not resource scopes
        ("system/Observation", False),  # malformed
    ],
)
def test_resource_access_needs_a_smart_scope_that_could_grant_it(
    scope: str, admitted: bool
) -> None:
    assert ResourceAccess("Observation", "r").admits(frozenset({scope})) is admitted


def test_resource_access_on_any_type_and_combined_rules() -> None:
    assert ResourceAccess("*", "c").admits(frozenset({"system/Patient.cu"}))
    assert not ResourceAccess("*", "c").admits(frozenset({"system/Patient.rs"}))
    either = Scopes("medledger/check-access") | ResourceAccess("*", "")
    assert either.admits(frozenset({"medledger/check-access"}))
    assert either.admits(frozenset({"patient/Observation.r"}))
    assert not either.admits(frozenset({"ledger.read"}))
    assert "medledger/check-access" in either.describe()
    with pytest.raises(ValueError, match="ordered subset"):
        ResourceAccess("Observation", "rc")


# --- declarations ----------------------------------------------------------------------------


def test_a_declaration_names_every_method_it_misses_or_does_not_own() -> None:
    assert undeclared_methods([TEST_ACCESS]) == []
    partial = dict(TEST_ACCESS.methods)
    del partial[METHODS["Append"]]
    foreign = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].methods_by_name
    partial[foreign["Predict"]] = PUBLIC
    assert undeclared_methods([ServiceAccess(LEDGER, partial)]) == [
        "medledger.api.ledger.v1.LedgerService.Append is not declared",
        "medledger.api.inference.v1.InferenceService.Predict is declared for "
        "medledger.api.ledger.v1.LedgerService",
    ]


async def test_a_server_with_an_undeclared_method_does_not_start() -> None:
    partial = {m: p for m, p in TEST_ACCESS.methods.items() if m.name != "ListEntries"}
    server = ServiceServer(runtime(ServiceAccess(LEDGER, partial)))
    with pytest.raises(ConfigError, match=r"LedgerService\.ListEntries is not declared"):
        await server.start()


async def test_a_server_without_a_verifier_does_not_start() -> None:
    server = ServiceServer(runtime(TEST_ACCESS, verifier=None))
    with pytest.raises(ConfigError, match="no token verifier"):
        await server.start()


def test_the_process_exits_2_naming_the_undeclared_method() -> None:
    script = textwrap.dedent(
        """
        from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
        from medledger.common.config import ServiceSettings
        from medledger.common.policy import PUBLIC, ServiceAccess
        from medledger.common.server import run_service
        from medledger.common.service import Servicer, ServiceRuntime
        from medledger.testkit.tokens import TEST_TOKENS

        service = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
        access = ServiceAccess(service, {service.methods_by_name["Append"]: PUBLIC})
        run_service("ledger", lambda: ServiceRuntime(
            name="ledger",
            settings=ServiceSettings(grpc_port=0),
            servicers=[Servicer(ledger_pb2_grpc.LedgerServiceServicer(),
                                ledger_pb2_grpc.add_LedgerServiceServicer_to_server, access)],
            verifier=TEST_TOKENS.verifier(),
        ))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "LedgerService.GetCheckpoint is not declared" in done.stderr
    assert "LedgerService.Append is not declared" not in done.stderr


# --- the interceptor -------------------------------------------------------------------------


async def test_a_declared_method_needs_a_token_holding_its_scope(address: str) -> None:
    method = "/medledger.api.ledger.v1.LedgerService/GetCheckpoint"
    missing = await refusal(address, method)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    forged = await refusal(address, method, [("authorization", "Bearer nope")])
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED
    lacking = await refusal(address, method, bearer("ledger.append", "system/*.cruds"))
    assert lacking.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(lacking)
    assert info.reason == "SCOPE_MISSING"
    assert info.metadata["required"] == "admin or ledger.read"
    async with grpc.aio.insecure_channel(address) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        reply = await stub.GetCheckpoint(
            ledger_pb2.GetCheckpointRequest(), metadata=bearer("ledger.read")
        )
        entry = await stub.GetEntry(
            ledger_pb2.GetEntryRequest(), metadata=bearer("user/Observation.rs")
        )
    assert reply.checkpoint == b"lab-app"  # the handler saw the verified caller
    assert entry.entry_bytes == b"lab-app"
    smart = await refusal(
        address, "/medledger.api.ledger.v1.LedgerService/GetEntry", bearer("user/Patient.rs")
    )
    assert smart.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_method_nobody_declared_is_denied_whatever_the_token(address: str) -> None:
    for metadata in (None, TEST_TOKENS.metadata()):
        denied = await refusal(address, UNDECLARED, metadata)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(denied).reason == "METHOD_UNDECLARED"


async def test_public_methods_health_and_reflection_need_no_token(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        # Public, so no principal: the handler's read of it answers UNAUTHENTICATED, never
        # an anonymous caller.
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await ledger_pb2_grpc.LedgerServiceStub(ch).GetVerifierKey(
                ledger_pb2.GetVerifierKeyRequest()
            )
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_response_stream_is_refused_before_it_starts() -> None:
    async with running(
        inference_servicer(inference_pb2_grpc.InferenceServiceServicer()), name="inference"
    ) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            call = stub.BatchPredict(inference_pb2.BatchPredictRequest(), metadata=bearer("admin"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).metadata["required"] == "inference.predict"
