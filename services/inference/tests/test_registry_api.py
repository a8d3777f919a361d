"""The model registry over gRPC against real servers: the testkit platform's identity and
ledger, secantusdb, OpenBao (the inference service's own Vault token and client key) and one
tritonserver for the module serving freshly built models (diabetes-progression versions 1
and 2, breast-cancer-malignancy version 1).

Four inference servers, each wired as ``python -m medledger.inference`` wires it:
``api``; ``cut``, on api's database with the ledger at an address where nothing listens;
``tampered``, on a database of its own, reading a copy of the model repository in which
one byte of each model.onnx differs from what Triton serves. The last test stops Triton.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.cli.models import read_model
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.devstack.triton import TritonServer
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.runtime import from_settings
from medledger.testkit.inprocess import eventually
from medledger.testkit.models import serving_models
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.receipt import verify_receipt
from medledger.verify.trust import TrustPolicy

pytestmark = pytest.mark.triton

DIABETES, BREAST = "diabetes-progression", "breast-cancer-malignancy"


@dataclass
class Registry:
    repository: Path
    triton: TritonServer
    api: inference_pb2_grpc.InferenceServiceAsyncStub  # as the admin
    predictor: inference_pb2_grpc.InferenceServiceAsyncStub  # inference.predict
    stranger: inference_pb2_grpc.InferenceServiceAsyncStub  # ledger.read only
    cut: inference_pb2_grpc.InferenceServiceAsyncStub  # admin; ledger down
    tampered: inference_pb2_grpc.InferenceServiceAsyncStub  # admin; other model files
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    policy: TrustPolicy
    admin_subject: str
    api_address: str

    def model(self, name: str, version: int = 1) -> inference_pb2.Model:
        return read_model(name, version, repository=self.repository)

    async def size(self) -> int:
        checkpoint = await self.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        return int(self.policy.open(checkpoint.checkpoint).size)

    async def registered_since(self, size: int) -> list[ledger_pb2.LedgerEntry]:
        """The MODEL_REGISTERED entries from leaf ``size`` on (others, such as identity's
        TOKEN_ISSUED for a service's first token, come and go)."""
        reply = await self.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=size, page_size=1000)
        )
        return [
            e.entry for e in reply.entries if e.entry.kind == ledger_pb2.EVENT_KIND_MODEL_REGISTERED
        ]


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TritonServer]]:
    with serving_models(tmp_path_factory, "registry") as served:
        yield served


def _tampered_copy(repository: Path, out: Path) -> Path:
    """The repository with the first byte of every model.onnx changed."""
    copy = out / "tampered"
    shutil.copytree(repository, copy)
    for onnx in copy.glob("*/*/model.onnx"):
        data = bytearray(onnx.read_bytes())
        data[0] ^= 0x01
        onnx.write_bytes(bytes(data))
    return copy


@pytest.fixture(scope="module")
async def registry(
    served: tuple[Path, TritonServer],
    auth_platform: Platform,
    mongo_server: Any,
    vault_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Registry]:
    repository, triton = served
    database = f"registry{uuid.uuid4().hex[:8]}"
    tampered = _tampered_copy(repository, tmp_path_factory.mktemp("registry-tampered"))
    platform = auth_platform

    def server(database: str, files: Path, ledger: str) -> ServiceServer:
        return ServiceServer(
            from_settings(
                InferenceSettings(grpc_port=0, health_interval_seconds=0.2),
                InferenceConfig(model_repository=files, ledger_timeout_seconds=2),
                TritonSettings(url=triton.grpc_url, timeout_seconds=5),
                MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database),
                VaultSettings(addr=vault_server.addr, token=vault_server.token_for("inference")),
                PeerSettings(identity_addr=platform.identity_address, ledger_addr=ledger),
            )
        )

    servers = [
        server(database, repository, platform.ledger_address),
        server(database, repository, f"127.0.0.1:{free_port()}"),
        server(f"{database}t", tampered, platform.ledger_address),
    ]
    for each in servers:
        await each.start()
    admin = await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
    predictor = await platform.token("inference.predict", "hospital-a")
    reader = await platform.token("ledger.read", "hospital-a")
    api, cut, tampered_address = (f"127.0.0.1:{s.port}" for s in servers)
    channels = [
        authed_channel(api, admin),
        authed_channel(api, predictor),
        authed_channel(api, reader),
        authed_channel(cut, admin),
        authed_channel(tampered_address, admin),
        authed_channel(platform.ledger_address, reader),
    ]
    stubs = [inference_pb2_grpc.InferenceServiceStub(ch) for ch in channels[:5]]
    ledger = ledger_pb2_grpc.LedgerServiceStub(channels[5])
    vkey = (await ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    try:
        yield Registry(
            repository,
            triton,
            *stubs,
            ledger=ledger,
            policy=TrustPolicy.parse([vkey]),
            admin_subject=_subject(admin),
            api_address=api,
        )
    finally:
        for channel in channels:
            await channel.close(None)
        for each in servers:
            await each.stop(0)


async def failure(call: Any) -> MedledgerError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


def register(model: inference_pb2.Model) -> inference_pb2.RegisterModelRequest:
    return inference_pb2.RegisterModelRequest(model=model)


def with_card(
    model: inference_pb2.Model, score_tensor: str = "", **changes: Any
) -> inference_pb2.Model:
    """``model`` whose card's ``model`` section has ``changes`` (and whose score is read
    from ``score_tensor``, if given)."""
    card = json.loads(model.model_card_json)
    card["model"].update(changes)
    if score_tensor:
        card["output"]["score"]["tensor"] = score_tensor
    changed = inference_pb2.Model()
    changed.CopyFrom(model)
    changed.model_card_json = json.dumps(card)
    if "version" in changes:
        changed.version = changes["version"]
    if "name" in changes:
        changed.name = changes["name"]
    return changed


def without_time(model: inference_pb2.Model) -> inference_pb2.Model:
    copy = inference_pb2.Model()
    copy.CopyFrom(model)
    copy.ClearField("register_time")
    return copy


async def test_both_models_register_with_a_receipt_of_their_model_registered_entry(
    registry: Registry,
) -> None:
    for name in (DIABETES, BREAST):
        model = registry.model(name)
        reply = await registry.api.RegisterModel(register(model))
        assert without_time(reply.model) == model
        assert reply.model.HasField("register_time")
        entry = await registry.ledger.GetEntry(
            ledger_pb2.GetEntryRequest(leaf_index=reply.receipt.leaf_index)
        )
        assert verify_receipt(reply.receipt, registry.policy, entry.entry_bytes).entry_checked
        logged = entry.entry
        assert logged.kind == ledger_pb2.EVENT_KIND_MODEL_REGISTERED
        assert (logged.resource.type, logged.resource.id, logged.resource.version) == (
            "Model",
            name,
            1,
        )
        assert logged.content_commitment == model.digest
        assert (logged.actor, logged.organization) == (registry.admin_subject, "medledger")
        assert not logged.subject  # about no patient
        assert logged.time == reply.model.register_time


async def test_registering_the_same_model_again_changes_nothing(registry: Registry) -> None:
    model = registry.model(DIABETES)
    first = (await registry.api.GetModel(inference_pb2.GetModelRequest(name=DIABETES))).model
    size = await registry.size()
    # The same card in another layout is the same model.
    relaid = inference_pb2.Model()
    relaid.CopyFrom(model)
    relaid.model_card_json = json.dumps(json.loads(model.model_card_json), separators=(",", ":"))
    for again in (model, relaid):
        reply = await registry.api.RegisterModel(register(again))
        assert reply.model.register_time == first.register_time
        assert reply.model.model_card_json == model.model_card_json  # as first registered
        entry = await registry.ledger.GetEntry(
            ledger_pb2.GetEntryRequest(leaf_index=reply.receipt.leaf_index)
        )
        assert entry.entry.time == first.register_time  # the first registration's entry
    assert await registry.registered_since(size) == []


async def test_another_model_under_a_registered_version_is_refused(registry: Registry) -> None:
    model = registry.model(DIABETES)
    card = json.loads(model.model_card_json)
    card["limitations"].append("A limitation added after the registration.")
    changed = inference_pb2.Model()
    changed.CopyFrom(model)
    changed.model_card_json = json.dumps(card)
    error = await failure(registry.api.RegisterModel(register(changed)))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "MODEL_VERSION_TAKEN"


async def test_a_digest_other_than_the_served_files_is_refused(registry: Registry) -> None:
    size = await registry.size()
    # The wrong digest, its card agreeing: Triton serves version 2, with other bytes.
    wrong = with_card(registry.model(DIABETES, 2), sha256="ab" * 32)
    wrong.digest = bytes.fromhex("ab" * 32)
    error = await failure(registry.api.RegisterModel(register(wrong)))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "MODEL_DIGEST_MISMATCH"
    # The right digest, but the model repository this server reads has one byte changed.
    error = await failure(registry.tampered.RegisterModel(register(registry.model(BREAST))))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "MODEL_DIGEST_MISMATCH"
    assert await registry.registered_since(size) == []


async def test_a_model_triton_does_not_serve_is_refused(registry: Registry) -> None:
    diabetes = registry.model(DIABETES)
    outputs = json.loads(diabetes.model_card_json)["model"]["outputs"]
    for model in (
        with_card(diabetes, version=3),  # no such version
        with_card(diabetes, name="no-such-model"),  # no such model
        # A consistent card whose tensors are not those Triton serves.
        with_card(diabetes, "score", version=2, outputs=[{**outputs[0], "name": "score"}]),
    ):
        error = await failure(registry.api.RegisterModel(register(model)))
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "MODEL_NOT_SERVED"


async def test_bad_registrations_name_each_bad_field(registry: Registry) -> None:
    error = await failure(
        registry.api.RegisterModel(
            register(
                inference_pb2.Model(name="../diabetes", digest=b"abc", model_card_json="not JSON")
            )
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in error.violations} == {
        "model.name",
        "model.version",
        "model.digest",
        "model.task",
        "model.features",
        "model.model_card_json",
    }
    model = registry.model(DIABETES, 2)
    model.features[0].loinc_code = "age"
    model.features[1].min_value = 3
    model.features[2].unit = "not a unit"
    model.features[3].name = model.features[4].name
    model.task = inference_pb2.MODEL_TASK_BINARY_CLASSIFICATION
    error = await failure(registry.api.RegisterModel(register(model)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in error.violations}
    assert {
        "model.features[0].loinc_code",
        "model.features[1].min_value",
        "model.features[2].unit",
        "model.features[4].name",
    } <= fields
    # The card says otherwise: each disagreement named by its path in the card.
    card = [v.description for v in error.violations if v.field == "model.model_card_json"]
    assert any(d.startswith("features[0].code.code ") for d in card)
    assert any(d.startswith("features[1].plausible_range ") for d in card)
    assert any(d.startswith("features[2].unit ") for d in card)
    assert any(d.startswith("features[3].name ") for d in card)
    assert any(d.startswith("output.score.kind ") for d in card)
    assert all("not a unit" not in v.description for v in error.violations)


async def test_registering_needs_an_admin_and_reading_a_predictor(registry: Registry) -> None:
    model = registry.model(BREAST)
    error = await failure(registry.predictor.RegisterModel(register(model)))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    for call in (
        registry.stranger.ListModels(inference_pb2.ListModelsRequest()),
        registry.stranger.GetModel(inference_pb2.GetModelRequest(name=BREAST)),
        registry.stranger.RegisterModel(register(model)),
    ):
        assert (await failure(call)).code == grpc.StatusCode.PERMISSION_DENIED
    found = await registry.predictor.GetModel(inference_pb2.GetModelRequest(name=BREAST))
    assert without_time(found.model) == model


async def test_a_registration_the_ledger_did_not_take_is_pending_then_completed(
    registry: Registry,
) -> None:
    """The cut server stores version 2 pending and answers UNAVAILABLE: unseen, and the
    version taken for any other model; registering it again ledgers the stored entry."""
    model = registry.model(DIABETES, 2)
    size = await registry.size()
    error = await failure(registry.cut.RegisterModel(register(model)))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert await registry.registered_since(size) == []
    latest = await registry.api.GetModel(inference_pb2.GetModelRequest(name=DIABETES))
    assert latest.model.version == 1  # a pending version is not the latest
    gone = await failure(
        registry.api.GetModel(inference_pb2.GetModelRequest(name=DIABETES, version=2))
    )
    assert gone.code == grpc.StatusCode.NOT_FOUND
    other = with_card(model, title="Another model")
    taken = await failure(registry.api.RegisterModel(register(other)))
    assert taken.code == grpc.StatusCode.ALREADY_EXISTS
    reply = await registry.api.RegisterModel(register(model))
    assert len(await registry.registered_since(size)) == 1
    entry = await registry.ledger.GetEntry(
        ledger_pb2.GetEntryRequest(leaf_index=reply.receipt.leaf_index)
    )
    assert verify_receipt(reply.receipt, registry.policy, entry.entry_bytes).entry_checked
    assert (entry.entry.resource.id, entry.entry.resource.version) == (DIABETES, 2)
    assert entry.entry.time == reply.model.register_time


async def test_models_are_listed_by_name_then_version_and_the_latest_is_found(
    registry: Registry,
) -> None:
    seen: list[tuple[str, int]] = []
    token = ""
    while True:
        reply = await registry.predictor.ListModels(
            inference_pb2.ListModelsRequest(page_size=1, page_token=token)
        )
        seen += [(m.name, m.version) for m in reply.models]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [(BREAST, 1), (DIABETES, 1), (DIABETES, 2)]
    everything = await registry.predictor.ListModels(inference_pb2.ListModelsRequest())
    assert [(m.name, m.version) for m in everything.models] == seen
    assert not everything.next_page_token
    latest = await registry.predictor.GetModel(inference_pb2.GetModelRequest(name=DIABETES))
    assert latest.model.version == 2
    first = await registry.predictor.GetModel(
        inference_pb2.GetModelRequest(name=DIABETES, version=1)
    )
    assert without_time(first.model) == registry.model(DIABETES)
    for request, code in (
        (inference_pb2.GetModelRequest(name="unknown"), grpc.StatusCode.NOT_FOUND),
        (inference_pb2.GetModelRequest(name=DIABETES, version=9), grpc.StatusCode.NOT_FOUND),
        (inference_pb2.GetModelRequest(name="../x"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            inference_pb2.GetModelRequest(name=DIABETES, version=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        assert (await failure(registry.predictor.GetModel(request))).code == code
    bad = await failure(
        registry.predictor.ListModels(inference_pb2.ListModelsRequest(page_token="forged"))
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.violations] == ["page_token"]


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def test_triton_down_takes_health_down_and_registrations_unavailable(
    registry: Registry,
) -> None:
    """Last: it stops the module's Triton."""
    assert await health(registry.api_address) == health_pb2.HealthCheckResponse.SERVING
    registry.triton.stop()

    async def not_serving() -> bool:
        return await health(registry.api_address) == health_pb2.HealthCheckResponse.NOT_SERVING

    await eventually(not_serving, within=15)
    size = await registry.size()
    unknown = with_card(registry.model(BREAST), version=2)
    error = await failure(registry.api.RegisterModel(register(unknown)))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.metadata["dependency"] == "triton"
    assert await registry.registered_since(size) == []
    # What is registered is still read from the registry.
    found = await registry.predictor.GetModel(inference_pb2.GetModelRequest(name=BREAST))
    assert found.model.version == 1
