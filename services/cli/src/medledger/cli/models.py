"""``medledger models list|show|register``: the inference service's model registry.

``list`` and ``show`` need a token holding ``inference.predict`` or ``admin``; ``register``
an admin token. ``register NAME --version N`` reads the version's model card and hashes its
ONNX file from the model repository ``make models`` writes (``build/models/local``, the one
the local stack's Triton serves), or from ``--card`` and ``--onnx``; the service then checks
that Triton serves exactly that file and ledgers the registration (MODEL_REGISTERED, whose
receipt ``--receipt-out`` saves for ``medledger verify receipt``). Registering a model that
is registered already changes nothing and prints it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Final, TypeAlias, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.cli.calls import CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.consent import (
    JsonOption,
    ReceiptOutOption,
    TokenOption,
    print_json,
    require_token,
    save_receipt,
    when_text,
)
from medledger.devstack.paths import local_model_repository

app = typer.Typer(
    help="List, show and register the models the inference service scores with.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")
# Only in the generated type stubs; the runtime stub class is not generic.
Stub: TypeAlias = "inference_pb2_grpc.InferenceServiceAsyncStub"

DEFAULT_INFERENCE: Final = "127.0.0.1:50054"
PAGE_SIZE: Final = 100
LOINC: Final = "http://loinc.org"
CARD_FILE: Final = "model-card.json"
ONNX_FILE: Final = "model.onnx"
# The model card's output.score.kind for each task.
TASKS: Final = {
    "regression": inference_pb2.MODEL_TASK_REGRESSION,
    "probability": inference_pb2.MODEL_TASK_BINARY_CLASSIFICATION,
}
TASK_NAMES: Final = {
    inference_pb2.MODEL_TASK_REGRESSION: "regression",
    inference_pb2.MODEL_TASK_BINARY_CLASSIFICATION: "binary classification",
}

InferenceOption = Annotated[
    str,
    typer.Option(
        "--inference",
        metavar="HOST:PORT",
        envvar="MEDLEDGER_INFERENCE_ADDR",
        help="The inference service's gRPC address.",
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="Seconds each call to the inference service may take."),
]


class CardError(Exception):
    """A model card or ONNX file that cannot be read; the message says which and why."""


# --- the registration from make models' files --------------------------------------------------


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _feature(entry: Any) -> inference_pb2.Feature:
    item = _object(entry)
    code = _object(item.get("code"))
    bounds = _object(item.get("plausible_range"))
    system = _text(code.get("system"))
    return inference_pb2.Feature(
        name=_text(item.get("name")),
        loinc_code=_text(code.get("code")),
        code_system="" if system == LOINC else system,
        unit=_text(item.get("unit")),
        min_value=_number(bounds.get("low")),
        max_value=_number(bounds.get("high")),
    )


def model_from_card(name: str, version: int, card_json: str, onnx: bytes) -> inference_pb2.Model:
    """The registration of a model as ``make models`` describes it: its card (features,
    task) and the SHA-256 of its ONNX file. Whatever the card holds is sent: the service
    checks it and names what is wrong."""
    try:
        card = json.loads(card_json)
    except ValueError as error:
        raise CardError(f"the model card is not JSON: {error}") from None
    card = _object(card)
    score = _object(_object(card.get("output")).get("score"))
    features = card.get("features")
    features = features if isinstance(features, list) else []
    return inference_pb2.Model(
        name=name,
        version=version,
        digest=hashlib.sha256(onnx).digest(),
        task=TASKS.get(_text(score.get("kind")), inference_pb2.MODEL_TASK_UNSPECIFIED),
        features=[_feature(entry) for entry in features],
        model_card_json=card_json,
    )


def read_model(
    name: str,
    version: int,
    *,
    repository: Path | None = None,
    card: Path | None = None,
    onnx: Path | None = None,
) -> inference_pb2.Model:
    """The registration of ``repository/NAME/VERSION/{model-card.json,model.onnx}`` (the
    local model repository by default), or of the files given."""
    folder = (repository or local_model_repository()) / name / str(version)
    card_path = card or folder / CARD_FILE
    onnx_path = onnx or folder / ONNX_FILE
    try:
        card_json = card_path.read_text(encoding="utf-8")
        onnx_bytes = onnx_path.read_bytes()
    except (OSError, UnicodeDecodeError) as error:
        raise CardError(f"cannot read the model's files ({error}); run `make models`?") from None
    return model_from_card(name, version, card_json, onnx_bytes)


# --- output -------------------------------------------------------------------------------------


def _task(model: inference_pb2.Model) -> str:
    return TASK_NAMES.get(model.task, "-")


def models_table(models: list[inference_pb2.Model]) -> Table:
    table = Table(title=f"{len(models)} registered model version(s)")
    for column in ("model", "version", "task", "features", "registered", "sha256"):
        table.add_column(column, overflow="fold")
    for model in models:
        table.add_row(
            model.name,
            str(model.version),
            _task(model),
            str(len(model.features)),
            when_text(model.register_time, model.HasField("register_time")),
            model.digest.hex()[:16] + "…",
        )
    return table


def _code(feature: inference_pb2.Feature) -> str:
    if not feature.code_system:
        return f"LOINC {feature.loinc_code}"
    return f"{feature.code_system}|{feature.loinc_code}"


def features_table(model: inference_pb2.Model) -> Table:
    table = Table(title=f"{model.name} v{model.version}: features, in the model's input order")
    for column in ("#", "feature", "code", "unit", "accepted range"):
        table.add_column(column, overflow="fold")
    for index, feature in enumerate(model.features):
        table.add_row(
            str(index),
            feature.name,
            _code(feature),
            feature.unit or "(coded)",
            f"{feature.min_value:g} to {feature.max_value:g}",
        )
    return table


def _metrics(card: dict[str, Any]) -> str:
    metrics = card.get("metrics")
    held_out = metrics.get("held_out") if isinstance(metrics, dict) else None
    if not isinstance(held_out, dict):
        return ""
    return ", ".join(
        f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in held_out.items()
    )


def card_table(model: inference_pb2.Model) -> Table:
    """The model and a summary of its card (the whole card: ``--json``)."""
    try:
        card = json.loads(model.model_card_json)
    except ValueError:
        card = {}
    card = _object(card)
    about, data = _object(card.get("model")), _object(card.get("training_data"))
    score = _object(_object(card.get("output")).get("score"))
    explanation = _object(card.get("explanation"))
    limitations = card.get("limitations")
    rows = [
        ("model", f"{model.name} version {model.version}"),
        ("title", _text(about.get("title"))),
        ("task", _task(model)),
        ("score", _text(score.get("meaning"))),
        ("algorithm", _text(about.get("algorithm"))),
        ("intended use", _text(card.get("intended_use"))),
        ("training data", f"{_text(data.get('name'))} ({data.get('rows', '?')} rows)"),
        ("held-out metrics", _metrics(card)),
        ("explanation", f"{_text(explanation.get('method'))}; {_text(explanation.get('space'))}"),
        (
            "limitations",
            f"{len(limitations)} (see --json)" if isinstance(limitations, list) else "",
        ),
        ("sha256", model.digest.hex()),
        ("registered", when_text(model.register_time, model.HasField("register_time"))),
    ]
    table = Table(title="model card", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in rows:
        table.add_row(field, value or "-")
    return table


def _more(next_page_token: str) -> None:
    if next_page_token:
        errors.print(
            f"[dim]•[/dim] more: --page-token {next_page_token}", highlight=False, soft_wrap=True
        )


# --- calls --------------------------------------------------------------------------------------


def _run(inference: str, token: str, work: Callable[[Stub, Metadata], Awaitable[T]]) -> T:
    """Runs ``work`` against the inference service; a refused call exits 1 with the reason."""

    async def main() -> T:
        async with open_channel(inference) as channel:
            return await work(inference_pb2_grpc.InferenceServiceStub(channel), bearer(token))

    try:
        return asyncio.run(main())
    except ValidationError as error:
        raise typer.BadParameter(f"invalid MEDLEDGER_TLS_* settings: {error}") from None
    except CallFailed as failure:
        errors.print(f"[red bold]✗ {failure}[/red bold]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command("list")
def list_command(
    *,
    page_size: Annotated[
        int | None,
        typer.Option(
            "--page-size", min=1, metavar="N", help="Fetch one page of at most N (default: all)."
        ),
    ] = None,
    page_token: Annotated[
        str | None,
        typer.Option("--page-token", metavar="TOKEN", help="Fetch the page after a previous one."),
    ] = None,
    token: TokenOption = None,
    inference: InferenceOption = DEFAULT_INFERENCE,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List the registered model versions, by name then version."""
    bearer_token = require_token(token)

    async def walk(stub: Stub, metadata: Metadata) -> tuple[list[inference_pb2.Model], str]:
        async def fetch(size: int, cursor: str) -> inference_pb2.ListModelsResponse:
            return await checked(
                "ListModels",
                inference,
                stub.ListModels(
                    inference_pb2.ListModelsRequest(page_size=size, page_token=cursor),
                    metadata=metadata,
                    timeout=timeout,
                ),
            )

        if page_size is not None or page_token is not None:
            reply = await fetch(page_size or 0, page_token or "")
            return list(reply.models), reply.next_page_token
        found: list[inference_pb2.Model] = []
        cursor, seen = "", set()
        while True:
            reply = await fetch(PAGE_SIZE, cursor)
            found.extend(reply.models)
            cursor = reply.next_page_token
            if not cursor:
                return found, ""
            if cursor in seen:  # a server that loops would keep the CLI walking forever
                errors.print("[red bold]✗ the server repeated a page token[/red bold]")
                raise typer.Exit(1)
            seen.add(cursor)

    models, next_page_token = _run(inference, bearer_token, walk)
    if as_json:
        print_json(inference_pb2.ListModelsResponse(models=models, next_page_token=next_page_token))
        return
    console.print(models_table(models))
    _more(next_page_token)


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")],
    *,
    version: Annotated[
        int, typer.Option("--version", min=0, help="The version (0: the latest registered).")
    ] = 0,
    token: TokenOption = None,
    inference: InferenceOption = DEFAULT_INFERENCE,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Show a registered model version: its features and a summary of its card."""
    bearer_token = require_token(token)

    async def get(stub: Stub, metadata: Metadata) -> inference_pb2.GetModelResponse:
        return await checked(
            "GetModel",
            inference,
            stub.GetModel(
                inference_pb2.GetModelRequest(name=name, version=version),
                metadata=metadata,
                timeout=timeout,
            ),
        )

    reply = _run(inference, bearer_token, get)
    if as_json:
        print_json(reply)
        return
    console.print(card_table(reply.model))
    console.print(features_table(reply.model))


@app.command("register")
def register_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name in Triton.")],
    *,
    version: Annotated[int, typer.Option("--version", min=1, help="The Triton model version.")],
    repository: Annotated[
        Path | None,
        typer.Option(
            "--repository",
            file_okay=False,
            metavar="DIR",
            help="The model repository holding NAME/VERSION/ (default: build/models/local).",
        ),
    ] = None,
    card: Annotated[
        Path | None,
        typer.Option("--card", dir_okay=False, metavar="FILE", help="The model card (JSON)."),
    ] = None,
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", dir_okay=False, metavar="FILE", help="The ONNX file to hash."),
    ] = None,
    receipt_out: ReceiptOutOption = None,
    token: TokenOption = None,
    inference: InferenceOption = DEFAULT_INFERENCE,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Register a model version Triton serves (admin; ledgered as MODEL_REGISTERED)."""
    bearer_token = require_token(token)
    try:
        model = read_model(name, version, repository=repository, card=card, onnx=onnx)
    except CardError as error:
        raise typer.BadParameter(str(error), param_hint="NAME") from None

    async def register(stub: Stub, metadata: Metadata) -> inference_pb2.RegisterModelResponse:
        return await checked(
            "RegisterModel",
            inference,
            stub.RegisterModel(
                inference_pb2.RegisterModelRequest(model=model), metadata=metadata, timeout=timeout
            ),
        )

    reply = _run(inference, bearer_token, register)
    saved = save_receipt(reply.receipt, receipt_out)
    if as_json:
        print_json(reply)
        return
    console.print(models_table([reply.model]))
    errors.print(
        f"[green]•[/green] {reply.model.name} version {reply.model.version} registered "
        f"({when_text(reply.model.register_time)}), ledgered at leaf index "
        f"{reply.receipt.leaf_index}{saved}",
        highlight=False,
        soft_wrap=True,
    )
