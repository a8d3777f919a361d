"""``medledger predict`` and ``medledger predict batch``: score patients with a registered model.

A prediction needs a token holding ``inference.predict`` and the record scopes to read the
patient's Patient and Observations and to write the RiskAssessment and its Provenance (a
hospital app's ``system/*.cruds inference.predict``), and a purpose of use: the inference
service reads the record with the caller's own token, so identity decides (and the ledger
records) as for a direct read. ``predict`` prints the score, its label, the base score and
each feature's contribution as a bar chart (base score plus the contributions is the score,
in the space the answer states), the RiskAssessment written to the record and the ledger
leaf of the INFERENCE_MADE entry; ``--opening-out`` saves the opening that
``medledger verify prediction`` checks offline (it holds the patient's inputs: keep it as you
keep their record). ``predict batch`` scores many patients in one stream with a progress bar,
prints each patient's error and a summary, and ``--out`` writes each result and error as one
JSON line. A refused call exits 1 with the reason; so does a batch in which a patient failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final, TypeAlias, TypeVar

import typer
from google.protobuf import json_format
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.cli.calls import CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.consent import (
    JsonOption,
    ReceiptOutOption,
    TokenOption,
    print_json,
    purpose_value,
    require_token,
    save_receipt,
)
from medledger.cli.models import DEFAULT_INFERENCE, InferenceOption, TimeoutOption
from medledger.cli.record import BreakGlassOption, PurposeOption

app = typer.Typer(
    help="Score a patient (or, with `batch`, many) with a registered model; each prediction "
    "is explained, ledgered and written to the record as a RiskAssessment.",
    invoke_without_command=True,
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")
# Only in the generated type stubs; the runtime stub class is not generic.
Stub: TypeAlias = "inference_pb2_grpc.InferenceServiceAsyncStub"

BAR_WIDTH: Final = 28
SPACES: Final = {
    inference_pb2.CONTRIBUTION_SPACE_PROBABILITY: "probability",
    inference_pb2.CONTRIBUTION_SPACE_SCORE: "the score's own units",
}

ModelOption = Annotated[
    str | None, typer.Option("--model", metavar="NAME", help="The registered model's name.")
]
VersionOption = Annotated[
    int, typer.Option("--version", min=0, help="The model version (0: the latest registered).")
]


# --- output -------------------------------------------------------------------------------------


def space_text(space: inference_pb2.ContributionSpace.ValueType) -> str:
    return SPACES.get(space, "an unstated space")


def _units(model: inference_pb2.Model) -> dict[str, str]:
    return {feature.name: feature.unit for feature in model.features}


def _value_text(value: float, unit: str) -> str:
    if not unit:
        return f"{value:g} (coded)"
    if unit == "1":
        return f"{value:g}"
    return f"{value:g} {unit}"


def _bar(contribution: float, largest: float) -> Text:
    """A bar as long as the contribution's share of the largest one: red where it raises the
    score, green where it lowers it."""
    cells = 0 if largest == 0 else max(1, round(abs(contribution) / largest * BAR_WIDTH))
    if contribution == 0:
        return Text("·", style="dim")
    style = "red" if contribution > 0 else "green"
    return Text(("+" if contribution > 0 else "-") + "█" * cells, style=style)


def contributions_table(
    contributions: list[inference_pb2.FeatureContribution], model: inference_pb2.Model
) -> Table:
    """The contributions sorted by magnitude, each with the feature's value and unit."""
    units = _units(model)
    ordered = sorted(contributions, key=lambda c: abs(c.contribution), reverse=True)
    largest = max((abs(c.contribution) for c in ordered), default=0.0)
    table = Table(title="contributions, largest first")
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("contribution", justify="right")
    table.add_column("", no_wrap=True)
    for item in ordered:
        table.add_row(
            item.feature,
            _value_text(item.value, units.get(item.feature, "")),
            Text(f"{item.contribution:+.4g}", style="red" if item.contribution > 0 else "green"),
            _bar(item.contribution, largest),
        )
    return table


def additivity_text(
    score: float, base: float, space: inference_pb2.ContributionSpace.ValueType
) -> str:
    return (
        f"contributions add up to score − base score ({score:.6g} − {base:.6g} = "  # noqa: RUF001
        f"{score - base:+.6g}) in {space_text(space)}"
    )


def print_prediction(
    patient_id: str,
    model: inference_pb2.Model,
    score: float,
    label: str,
    base: float,
    contributions: list[inference_pb2.FeatureContribution],
    space: inference_pb2.ContributionSpace.ValueType,
) -> None:
    summary = Table(
        title=f"{model.name} v{model.version} for Patient/{patient_id}", show_header=False
    )
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("score", f"{score:.6g}")
    summary.add_row("label", label or "-")
    summary.add_row("base score", f"{base:.6g} (every feature at the model's reference)")
    console.print(summary)
    console.print(contributions_table(contributions, model))
    console.print(additivity_text(score, base, space), highlight=False, soft_wrap=True)


def _patient(text: str) -> str:
    return text.strip().removeprefix("Patient/")


def read_patients_file(path: Path) -> list[str]:
    """One patient id a line (``Patient/ID`` or ``ID``); blank lines and ``#`` comments are
    skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise typer.BadParameter(
            f"cannot read {path}: {error}", param_hint="--patients-file"
        ) from None
    return [_patient(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _write(path: Path, data: bytes, what: str) -> str:
    try:
        path.write_bytes(data)
    except OSError as error:
        errors.print(f"[red bold]✗ cannot save the {what}:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    return f"; {what} saved to {path}"


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


@app.callback()
def predict_command(
    ctx: typer.Context,
    *,
    model: ModelOption = None,
    version: VersionOption = 0,
    patient: Annotated[
        str | None, typer.Option("--patient", metavar="ID", help="The patient's id (Patient/ID).")
    ] = None,
    purpose: PurposeOption = "TREAT",
    break_glass_reason: BreakGlassOption = None,
    opening_out: Annotated[
        Path | None,
        typer.Option(
            "--opening-out",
            dir_okay=False,
            metavar="FILE",
            help="Save the prediction's opening (for medledger verify prediction); it holds the "
            "patient's inputs.",
        ),
    ] = None,
    receipt_out: ReceiptOutOption = None,
    token: TokenOption = None,
    inference: InferenceOption = DEFAULT_INFERENCE,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Score one patient: the score, its label, each feature's contribution, the RiskAssessment
    written to their record and the ledger leaf (`predict batch --help`: many patients)."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None or patient is None:
        missing = " and ".join(n for n, v in (("--model", model), ("--patient", patient)) if not v)
        raise typer.BadParameter(f"{missing} required", param_hint=missing)
    bearer_token = require_token(token)
    request = inference_pb2.PredictRequest(
        model_name=model,
        model_version=version,
        patient_id=_patient(patient),
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
    )

    async def call(stub: Stub, metadata: Metadata) -> inference_pb2.PredictResponse:
        return await checked(
            "Predict", inference, stub.Predict(request, metadata=metadata, timeout=timeout)
        )

    reply = _run(inference, bearer_token, call)
    saved = save_receipt(reply.receipt, receipt_out)
    if opening_out is not None:
        saved += _write(opening_out, reply.prediction_opening, "opening")
    if as_json:
        print_json(reply)
        return
    print_prediction(
        request.patient_id,
        reply.model,
        reply.score,
        reply.label,
        reply.base_score,
        list(reply.contributions),
        reply.contribution_space,
    )
    console.print(
        f"[green]•[/green] written to the record as RiskAssessment/{reply.risk_assessment_id}; "
        f"ledgered as INFERENCE_MADE at leaf index {reply.receipt.leaf_index}{saved}",
        highlight=False,
        soft_wrap=True,
    )


def _event_json(event: inference_pb2.BatchPredictResponse) -> str:
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":"))


@app.command("batch")
def batch_command(
    *,
    model: Annotated[
        str, typer.Option("--model", metavar="NAME", help="The registered model's name.")
    ],
    version: VersionOption = 0,
    patients: Annotated[
        list[str] | None,
        typer.Option("--patient", metavar="ID", help="A patient's id (repeat for more)."),
    ] = None,
    patients_file: Annotated[
        Path | None,
        typer.Option(
            "--patients-file",
            dir_okay=False,
            metavar="FILE",
            help="Patient ids, one a line ('#' comments and blank lines skipped).",
        ),
    ] = None,
    purpose: PurposeOption = "TREAT",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            dir_okay=False,
            metavar="FILE",
            help="Write each result and error as one JSON line (results hold the openings).",
        ),
    ] = None,
    token: TokenOption = None,
    inference: InferenceOption = DEFAULT_INFERENCE,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, help="Seconds the whole batch may take."),
    ] = 600.0,
) -> None:
    """Score many patients in one stream, with a progress bar; each patient's error is
    printed and the batch goes on. Exits 1 when a patient could not be scored."""
    ids = [_patient(p) for p in patients or []]
    if patients_file is not None:
        ids.extend(read_patients_file(patients_file))
    if not ids:
        raise typer.BadParameter(
            "name the patients: --patient ID ... or --patients-file FILE", param_hint="--patient"
        )
    bearer_token = require_token(token)
    request = inference_pb2.BatchPredictRequest(
        model_name=model, model_version=version, patient_ids=ids, purpose=purpose_value(purpose)
    )
    try:
        sink = out.open("w", encoding="utf-8") if out is not None else None
    except OSError as error:
        raise typer.BadParameter(f"cannot write {out}: {error}", param_hint="--out") from None
    results: list[inference_pb2.PredictionResult] = []
    failures: list[inference_pb2.PatientError] = []
    last = inference_pb2.Progress(total=len(ids))

    async def stream(stub: Stub, metadata: Metadata) -> None:
        nonlocal last
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=errors,
            transient=False,
        ) as progress:
            task = progress.add_task(f"{model} ", total=len(ids), failed=0)
            call = stub.BatchPredict(request, metadata=metadata, timeout=timeout)

            async def consume() -> None:
                nonlocal last
                async for event in call:
                    kind = event.WhichOneof("event")
                    if kind == "progress":
                        last = event.progress
                        progress.update(
                            task,
                            completed=last.completed + last.failed,
                            total=last.total or len(ids),
                            failed=last.failed,
                        )
                        continue
                    if kind == "result":
                        results.append(event.result)
                    elif kind == "error":
                        failures.append(event.error)
                        progress.console.print(_error_text(event.error), highlight=False)
                    if sink is not None:
                        sink.write(_event_json(event) + "\n")

            await checked("BatchPredict", inference, consume())

    try:
        _run(inference, bearer_token, stream)
    finally:
        if sink is not None:
            sink.close()
    _summary(model, results, failures, last, len(ids), out)
    if failures:
        raise typer.Exit(1)


def _error_text(error: inference_pb2.PatientError) -> Text:
    features = f" ({', '.join(error.features)})" if error.features else ""
    text = Text("✗ ", style="red bold")
    text.append(f"Patient/{error.patient_id}: {error.reason}{features}", style="red")
    if error.message:
        text.append(f": {error.message}")
    return text


def _summary(
    model: str,
    results: list[inference_pb2.PredictionResult],
    failures: list[inference_pb2.PatientError],
    last: inference_pb2.Progress,
    asked: int,
    out: Path | None,
) -> None:
    if results:
        table = Table(title=f"{model}: {len(results)} scored")
        for column in ("patient", "score", "label", "base score", "top feature", "risk assessment"):
            table.add_column(column, overflow="fold")
        table.add_column("leaf", justify="right")
        for result in results:
            top = max(result.contributions, key=lambda c: abs(c.contribution), default=None)
            table.add_row(
                result.patient_id,
                f"{result.score:.6g}",
                result.label or "-",
                f"{result.base_score:.6g}",
                "-" if top is None else f"{top.feature} {top.contribution:+.3g}",
                f"RiskAssessment/{result.risk_assessment_id}",
                str(result.receipt.leaf_index),
            )
        console.print(table)
    total = last.total or asked
    written = f"; results written to {out}" if out is not None else ""
    colour = "red" if failures else "green"
    console.print(
        f"[{colour}]•[/{colour}] {len(results)} of {total} patient(s) scored, "
        f"{len(failures)} failed{written}",
        highlight=False,
        soft_wrap=True,
    )
