"""The real service processes against real dependencies: health that follows MongoDB,
reflection that lists every method, and a graceful exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from medledger.api.identity.v1 import identity_pb2
from medledger.api.inference.v1 import inference_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2
from medledger.api.witness.v1 import witness_pb2
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import (
    SERVICE_PORTS,
    ServiceServer,
    StackEndpoints,
    read_stack_keys,
)

MONGO_SERVICES = ("identity", "record", "ledger", "witness-a")
DESCRIPTORS = {
    "identity": identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    "record": record_pb2.DESCRIPTOR.services_by_name["RecordService"],
    "ledger": ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    "witness-a": witness_pb2.DESCRIPTOR.services_by_name["WitnessService"],
    "inference": inference_pb2.DESCRIPTOR.services_by_name["InferenceService"],
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def own_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A MongoDB for this module alone: the outage test stops and restarts it."""
    root = tmp_path_factory.mktemp("outage-mongo")
    server = MongoServer(
        port=free_port(),
        storage_path=root / "data",
        log_file=root / "mongo.log",
        sync_on_commit=False,
        die_with_parent=True,
    )
    server.start()
    yield server
    server.stop()


def endpoints(mongo: MongoServer, vault: Any, triton: Any = None) -> StackEndpoints:
    ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    return StackEndpoints(
        mongo_uri=mongo.uri,
        vault_addr=vault.addr,
        vault_tokens=vault.service_tokens,
        triton_url=triton.grpc_url if triton is not None else "",
        model_repository=triton.model_repository if triton is not None else None,
        service_ports=ports,
        # The public keys the witness follows, read with the operators' token as `dev up` does.
        keys=read_stack_keys(vault.addr, vault.operator_token),
    )


def start_services(names: tuple[str, ...], where: StackEndpoints, logs: Path) -> list[Any]:
    servers = [
        ServiceServer(name, endpoints=where, log_file=logs / f"{name}.log", die_with_parent=True)
        for name in names
    ]
    for server in servers:
        server.start()  # returns once its health check answers SERVING
    return servers


@pytest.fixture(scope="module")
def services(
    own_mongo: MongoServer, vault_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceServer]]:
    logs = tmp_path_factory.mktemp("service-logs")
    servers = start_services(MONGO_SERVICES, endpoints(own_mongo, vault_server), logs)
    yield {s.component: s for s in servers}
    for server in servers:
        server.stop()


def check(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)


def wait_for(addresses: list[str], status: int, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if all(check(a) == status for a in addresses):
            return time.monotonic() - start
        time.sleep(0.1)
    seen = {a: check(a) for a in addresses}
    pytest.fail(f"not all {status} within {within} s: {seen}")


def reflected_methods(address: str, service: str) -> tuple[set[str], set[str]]:
    with grpc.insecure_channel(address) as ch:
        database = ProtoReflectionDescriptorDatabase(ch)
        names = set(database.get_services())
        file = database.FindFileContainingSymbol(service)
        methods = {
            m.name for s in file.service if f"{file.package}.{s.name}" == service for m in s.method
        }
    return names, methods


def test_reflection_lists_every_method(services: dict[str, ServiceServer]) -> None:
    for name, server in services.items():
        descriptor = DESCRIPTORS[name]
        names, methods = reflected_methods(server.address, descriptor.full_name)
        assert {descriptor.full_name, "grpc.health.v1.Health"} <= names
        assert methods == {m.name for m in descriptor.methods}


def test_mongo_outage_takes_health_down_and_back(
    services: dict[str, ServiceServer], own_mongo: MongoServer
) -> None:
    addresses = [s.address for s in services.values()]
    wait_for(addresses, SERVING, within=10)
    own_mongo.stop()
    try:
        took_down = wait_for(addresses, NOT_SERVING, within=15)
    finally:
        own_mongo.start()
    took_up = wait_for(addresses, SERVING, within=20)
    # "Within seconds": the probe interval plus its timeout, with room for a slow machine.
    assert took_down < 15
    assert took_up < 20


def test_sigterm_exits_cleanly(own_mongo: MongoServer, vault_server: Any, tmp_path: Path) -> None:
    (server,) = start_services(("ledger",), endpoints(own_mongo, vault_server), tmp_path)
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    start = time.monotonic()
    while server.process.is_running() and time.monotonic() - start < 15:
        time.sleep(0.05)
    assert not server.process.is_running()
    assert server.process.exit_code() == 0
    log = (tmp_path / "ledger.log").read_text()
    assert '"message": "stopped"' in log


@pytest.mark.triton
def test_inference_serves_when_triton_is_ready(
    own_mongo: MongoServer, vault_server: Any, triton_server: Any, tmp_path: Path
) -> None:
    where = endpoints(own_mongo, vault_server, triton_server)
    (server,) = start_services(("inference",), where, tmp_path)
    try:
        assert check(server.address) == SERVING
        names, methods = reflected_methods(server.address, DESCRIPTORS["inference"].full_name)
        assert DESCRIPTORS["inference"].full_name in names
        assert "Predict" in methods
        with grpc.insecure_channel(server.address) as ch:
            call = ch.unary_unary(f"/{DESCRIPTORS['inference'].full_name}/Predict")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop()


PUBLIC = {
    "/medledger.api.identity.v1.IdentityService/IssueToken",
    "/medledger.api.identity.v1.IdentityService/GetJwks",
}


def test_every_method_refuses_calls_without_a_token(services: dict[str, ServiceServer]) -> None:
    """Walks every method of every service found by reflection: all but health, reflection,
    IssueToken and GetJwks answer UNAUTHENTICATED to a call that carries no token."""
    checked = 0
    for name, server in services.items():
        descriptor = DESCRIPTORS[name]
        _, methods = reflected_methods(server.address, descriptor.full_name)
        with grpc.insecure_channel(server.address) as ch:
            for method in sorted(methods):
                path = f"/{descriptor.full_name}/{method}"
                if path in PUBLIC:
                    continue
                call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.RpcError) as refused:
                    call(b"", timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
                checked += 1
    assert checked >= 30  # the walk really covered the services' surfaces
