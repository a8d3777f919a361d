"""The whole system as ``medledger dev up`` runs it — identity, ledger, two witnesses, record,
inference, each a real ``python -m medledger.<service>`` process, with Triton serving the
models — exporting its traces and metrics over OTLP to a receiver in this process
(:class:`~medledger.testkit.otlp.OtlpReceiver`) and serving Prometheus ``/metrics``.

Its own Mongo and OpenBao: the services use the stack's fixed database names, and the last
module (``test_vault_outage.py``, last by name) stops this Vault to see the services count
the failures. The fixtures are the package's: the stack stops after this folder's tests.

:func:`predicted` runs the request the trace tests follow: a hospital app writes a patient
with a distinctive name, identifier, birth date and measurements (:data:`PHI`), then asks
for a prediction with a W3C ``traceparent`` of ours, so the trace's id is known.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from joserfc.jwk import OKPKey

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2_grpc
from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.models import read_model
from medledger.common.keyfiles import ensure_key_pair
from medledger.devstack.mongo import MongoServer
from medledger.devstack.paths import StackPaths
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import (
    BOOTSTRAP_ADMIN_CLIENT,
    SERVICE_PORTS,
    IdentityBootstrap,
    ServiceServer,
    StackEndpoints,
    read_stack_keys,
)
from medledger.devstack.triton import TritonServer
from medledger.devstack.vault import DevVault
from medledger.identity.config import IdentityConfig
from medledger.testkit.fhir_samples import measured_observation
from medledger.testkit.models import serving_models
from medledger.testkit.otlp import OtlpReceiver, ReceivedSpan
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.tokens import authed_channel

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
DIABETES: Final = "diabetes-progression"
LOINC = "http://loinc.org"
# The patient's data, chosen so that none of it could appear anywhere by chance.
GIVEN, FAMILY = "Zebulon", "Quixote-Marchetti"
IDENTIFIER = "MRN-7F3K9QX2"
BIRTH_DATE = "1957-03-29"
# (LOINC, value, UCUM unit): the diabetes model's measurements, odd decimals each.
MEASURED: Final = (
    ("39156-5", 31.274, "kg/m2"),
    ("8478-0", 101.372, "mm[Hg]"),
    ("2093-3", 221.436, "mg/dL"),
    ("13457-7", 139.617, "mg/dL"),
    ("2085-9", 41.293, "mg/dL"),
    ("2571-8", 2.1379, "mmol/L"),
    ("2345-7", 7.4193, "mmol/L"),
)
# Every string that would be a leak: name parts, identifier, birth date (as written and
# without dashes), each measured value.
PHI: Final = (
    GIVEN,
    "Quixote",
    "Marchetti",
    IDENTIFIER,
    BIRTH_DATE,
    BIRTH_DATE.replace("-", ""),
    *(str(value) for _, value, _ in MEASURED),
)


def phi_findings(
    spans: Iterable[ReceivedSpan], lines: Iterable[str], needles: Iterable[str]
) -> list[str]:
    """Where any of ``needles`` occurs: in a span's name, attributes (keys and values),
    resource, events, links or status message, or in a log line; one finding each."""
    wanted = [n for n in needles if n]
    findings = []
    for span in spans:
        texts = {
            "name": span.name,
            "attributes": repr(span.attributes),
            "resource": repr(span.resource),
            "events": repr(span.events),
            "links": repr(span.links),
            "status": span.status_message,
        }
        for field, text in texts.items():
            findings += [
                f"{span.service} span {span.name} {field}: {n}" for n in wanted if n in text
            ]
    for number, line in enumerate(lines):
        findings += [f"log line {number}: {n}" for n in wanted if n in line]
    return findings


class TracedService(ServiceServer):
    """A stack service exporting to the receiver and serving /metrics on its own port."""

    def __init__(
        self, name: str, endpoints: StackEndpoints, logs: Path, otlp: str, metrics_port: int
    ) -> None:
        super().__init__(
            name, endpoints=endpoints, log_file=logs / f"{name}.log", die_with_parent=True
        )
        self.otlp = otlp
        self.metrics_port = metrics_port

    def env(self) -> dict[str, str]:
        return super().env() | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            # Export soon after a span ends and every second: the tests wait for them.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "MEDLEDGER_METRICS_PORT": str(self.metrics_port),
            "MEDLEDGER_HEALTH_INTERVAL_SECONDS": "0.5",
        }


@dataclass
class TracedStack:
    receiver: OtlpReceiver
    services: dict[str, TracedService]
    logs: Path
    vault: DevVault
    triton: TritonServer
    platform: Platform
    inference: inference_pb2_grpc.InferenceServiceAsyncStub  # hospital A's app
    record: record_pb2_grpc.RecordServiceAsyncStub  # hospital A's app
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub  # a reader

    def log_lines(self) -> list[str]:
        """Every line the services have logged so far."""
        return [
            line
            for path in sorted(self.logs.glob("*.log"))
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        ]


@pytest.fixture(scope="package")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="package")
def trace_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    root = tmp_path_factory.mktemp("trace-mongo")
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


@pytest.fixture(scope="package")
def trace_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevVault]:
    server = DevVault(
        port=free_port(with_next=True),
        log_file=tmp_path_factory.mktemp("trace-vault") / "vault.log",
        die_with_parent=True,
    )
    server.start()
    server.provision()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def trace_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TritonServer]]:
    with serving_models(tmp_path_factory, "trace") as served:
        yield served


async def _admin_token(platform: Platform, within: float = 60.0) -> str:
    """The bootstrap admin's token, once identity has registered it (its first start)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
        except grpc.aio.AioRpcError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.fixture(scope="package")
async def traced_stack(
    otlp_receiver: OtlpReceiver,
    trace_mongo: MongoServer,
    trace_vault: DevVault,
    trace_models: tuple[Path, TritonServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TracedStack]:
    repository, triton = trace_models
    home = StackPaths(tmp_path_factory.mktemp("trace-home"))
    admin = ensure_key_pair(
        BOOTSTRAP_ADMIN_CLIENT,
        home.client_key(BOOTSTRAP_ADMIN_CLIENT),
        home.client_jwks(BOOTSTRAP_ADMIN_CLIENT),
    )
    assert isinstance(admin.key, OKPKey)
    assert trace_vault.operator_token is not None
    endpoints = StackEndpoints(
        mongo_uri=trace_mongo.uri,
        vault_addr=trace_vault.addr,
        vault_tokens=trace_vault.service_tokens,
        triton_url=triton.grpc_url,
        service_ports=dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True)),
        keys=read_stack_keys(trace_vault.addr, trace_vault.operator_token),
        identity_bootstrap=IdentityBootstrap(admin.client_id, admin.public_file),
        model_repository=repository,
    )
    logs = tmp_path_factory.mktemp("trace-logs")
    metrics_ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    services = {
        name: TracedService(name, endpoints, logs, otlp_receiver.endpoint, metrics_ports[name])
        for name in SERVICE_PORTS
    }
    # As `dev up`: all launched, then each awaited (identity and the ledger need each other).
    for service in services.values():
        service.launch()
    for service in services.values():
        await asyncio.to_thread(service.wait_started)

    identity_address = endpoints.service_addr("identity")
    channels = [grpc.aio.insecure_channel(identity_address)]
    platform = Platform(
        identity_address=identity_address,
        ledger_address=endpoints.service_addr("ledger"),
        stub=identity_pb2_grpc.IdentityServiceStub(channels[0]),
        config=IdentityConfig(),
        admin_key=admin.key,
    )
    admin_token = await _admin_token(platform)
    app = await platform.token("system/*.cruds inference.predict", "hospital-a", [TREAT])
    reader = await platform.token("ledger.read", "hospital-a")
    inference_address = endpoints.service_addr("inference")
    channels += [
        authed_channel(inference_address, admin_token),
        authed_channel(inference_address, app),
        authed_channel(endpoints.service_addr("record"), app),
        authed_channel(endpoints.service_addr("ledger"), reader),
    ]
    registry = inference_pb2_grpc.InferenceServiceStub(channels[1])
    await registry.RegisterModel(
        inference_pb2.RegisterModelRequest(model=read_model(DIABETES, 1, repository=repository))
    )
    try:
        yield TracedStack(
            receiver=otlp_receiver,
            services=services,
            logs=logs,
            vault=trace_vault,
            triton=triton,
            platform=platform,
            inference=inference_pb2_grpc.InferenceServiceStub(channels[2]),
            record=record_pb2_grpc.RecordServiceStub(channels[3]),
            ledger=ledger_pb2_grpc.LedgerServiceStub(channels[4]),
        )
    finally:
        for channel in channels:
            await channel.close(None)
        for service in reversed(services.values()):
            service.stop()


@dataclass(frozen=True)
class Predicted:
    """The followed request: its trace id (hex), the span id of our (remote) parent, the
    answer, and the ledger's size before and after it."""

    trace_id: str
    parent_span_id: str
    reply: inference_pb2.PredictResponse
    patient_id: str
    size_before: int
    size_after: int


async def _create(stack: TracedStack, resource: dict[str, Any]) -> str:
    reply = await stack.record.CreateResource(
        record_pb2.CreateResourceRequest(resource_json=json.dumps(resource), purpose=TREAT)
    )
    return reply.resource.id


async def _tree_size(stack: TracedStack) -> int:
    reply = await stack.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
    return int(reply.checkpoint.split(b"\n")[1])


@pytest.fixture(scope="package")
async def predicted(traced_stack: TracedStack) -> Predicted:
    stack = traced_stack
    patient_id = await _create(
        stack,
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": IDENTIFIER}],
            "name": [{"family": FAMILY, "given": [GIVEN]}],
            "gender": "male",
            "birthDate": BIRTH_DATE,
        },
    )
    for code, value, unit in MEASURED:
        await _create(stack, measured_observation(patient_id, LOINC, code, value, unit))
    # The appends the writes caused are integrated before the tree size is read.
    await asyncio.sleep(0.5)
    size_before = await _tree_size(stack)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    reply = await stack.inference.Predict(
        inference_pb2.PredictRequest(model_name=DIABETES, patient_id=patient_id, purpose=TREAT),
        metadata=[("traceparent", f"00-{trace_id}-{parent}-01")],
    )
    return Predicted(
        trace_id=trace_id,
        parent_span_id=parent,
        reply=reply,
        patient_id=patient_id,
        size_before=size_before,
        size_after=await _tree_size(stack),
    )
