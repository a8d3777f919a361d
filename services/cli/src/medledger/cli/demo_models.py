"""The local stack's models in the inference service's registry (``medledger dev up`` runs it).

Every version folder of the model repository the stack's Triton serves (``make models``
writes it: ``build/models/local/<name>/<version>/`` with ``model-card.json`` and
``model.onnx``) is registered with the bootstrap admin client's token. What is registered
already is left as it is: a model whose version is registered with the same digest is
"exists" and nothing is called but GetModel; registering twice is a no-op in the service too.
Triton may still be loading a model the stack has just started (or polled after a rebuild):
MODEL_NOT_SERVED and UNAVAILABLE are retried for a little while.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from rich.table import Table

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.cli.calls import UNREACHABLE, CallFailed, bearer, checked, open_channel
from medledger.cli.demo import DemoSeeder, SeedError
from medledger.cli.models import CARD_FILE, CardError, read_model
from medledger.devstack.paths import StackPaths

NOT_SERVED_WAIT_SECONDS: Final = 30.0
RETRIED_REASONS: Final = frozenset({"MODEL_NOT_SERVED"})

Say = Callable[[str], None]


class ModelRegistrationError(Exception):
    """A model could not be registered; the message names it and why."""


@dataclass(frozen=True)
class RegisteredDemoModel:
    name: str
    version: int
    created: bool
    leaf_index: int | None = None  # of its MODEL_REGISTERED entry, when registered now


def _quiet(_: str) -> None:
    return None


def model_versions(repository: Path) -> list[tuple[str, int]]:
    """``(name, version)`` of every version folder of ``repository`` that holds a card."""
    found = []
    for card in repository.glob(f"*/*/{CARD_FILE}"):
        version = card.parent.name
        if version.isascii() and version.isdigit() and int(version) > 0:
            found.append((card.parent.parent.name, int(version)))
    return sorted(found)


async def _registered(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
    address: str,
    token: str,
    model: inference_pb2.Model,
) -> inference_pb2.Model | None:
    """The registered version, or None when it is not registered."""
    try:
        reply = await checked(
            "GetModel",
            address,
            stub.GetModel(
                inference_pb2.GetModelRequest(name=model.name, version=model.version),
                metadata=bearer(token),
                timeout=10,
            ),
        )
    except CallFailed as failure:
        if failure.code is grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return reply.model


async def _register(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
    address: str,
    token: str,
    model: inference_pb2.Model,
) -> inference_pb2.RegisterModelResponse:
    deadline = asyncio.get_running_loop().time() + NOT_SERVED_WAIT_SECONDS
    while True:
        try:
            return await checked(
                "RegisterModel",
                address,
                stub.RegisterModel(
                    inference_pb2.RegisterModelRequest(model=model),
                    metadata=bearer(token),
                    timeout=30,
                ),
            )
        except CallFailed as failure:
            waiting = failure.code in UNREACHABLE or failure.reason in RETRIED_REASONS
            if not waiting or asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(1.0)


async def register_models(
    inference: str, token: str, repository: Path, say: Say = _quiet
) -> list[RegisteredDemoModel]:
    done = []
    async with open_channel(inference) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for name, version in model_versions(repository):
            what = f"model {name} version {version}"
            try:
                model = read_model(name, version, repository=repository)
                existing = await _registered(stub, inference, token, model)
                if existing is not None and existing.digest == model.digest:
                    done.append(RegisteredDemoModel(name, version, created=False))
                    continue
                reply = await _register(stub, inference, token, model)
            except (CardError, CallFailed) as error:
                hint = ""
                if isinstance(error, CallFailed) and error.reason == "MODEL_VERSION_TAKEN":
                    hint = (
                        " (this version was registered with other bytes: a changed model "
                        "needs a new version)"
                    )
                raise ModelRegistrationError(f"{what}: {error}{hint}") from None
            say(f"registered {what} (ledger leaf {reply.receipt.leaf_index})")
            done.append(
                RegisteredDemoModel(
                    name, version, created=True, leaf_index=reply.receipt.leaf_index
                )
            )
    return done


def register_demo_models(
    identity: str, inference: str, paths: StackPaths, repository: Path, say: Say = _quiet
) -> list[RegisteredDemoModel]:
    """Registers every model of ``repository`` (idempotent) with the bootstrap admin's
    token; :class:`ModelRegistrationError` names the model that failed and why."""

    async def run() -> list[RegisteredDemoModel]:
        try:
            token = await DemoSeeder(identity, paths, say=say).admin_token()
        except SeedError as error:
            raise ModelRegistrationError(str(error)) from None
        return await register_models(inference, token, repository, say)

    return asyncio.run(run())


def registered_table(models: list[RegisteredDemoModel]) -> Table:
    table = Table(title="models (medledger models list)")
    table.add_column("model")
    table.add_column("version", justify="right")
    table.add_column("state")
    for model in models:
        state = "[green]registered[/green]" if model.created else "exists"
        if model.leaf_index is not None:
            state += f" (ledger leaf {model.leaf_index})"
        table.add_row(model.name, str(model.version), state)
    return table
