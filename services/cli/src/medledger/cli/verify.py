"""``medledger verify receipt|export|summary|prediction``: check a ledger receipt, a patient
export and the ledger proof of each of its resources, a patient summary's lines, or a
prediction and its INFERENCE_MADE entry, offline, with public keys only."""

from __future__ import annotations

import hashlib
from datetime import UTC
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.table import Table

from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.summary_document import SummaryInvalid, check_summary_lines, parse_document
from medledger.verify.export import (
    EntryInvalid,
    ExportFormatError,
    ExportNotVerifiable,
    VerifiedExport,
    parse_bundle,
    verify_export,
)
from medledger.verify.prediction import (
    CHECK_MODEL_OUTPUT,
    PredictionDocument,
    PredictionFormatError,
    PredictionInvalid,
    VerifiedPrediction,
    check_model_file,
    check_model_output,
    parse_opening,
    verify_prediction,
)
from medledger.verify.receipt import ReceiptInvalid, VerifiedReceipt, verify_receipt
from medledger.verify.receipts import ReceiptFormatError, read_receipt
from medledger.verify.trust import TrustPolicy

app = typer.Typer(
    help="Verify ledger receipts, patient exports and predictions offline, with public keys "
    "only (no network)."
)
console = Console()
errors = Console(stderr=True)

VkeyOption = Annotated[
    list[str],
    typer.Option(
        "--vkey",
        metavar="VKEY",
        help="The log's C2SP verifier key (GetVerifierKey). Repeat it for keys from before a "
        "rotation.",
    ),
]
WitnessOption = Annotated[
    list[str] | None,
    typer.Option(
        "--witness-vkey",
        metavar="VKEY",
        help="A witness's cosignature verifier key (type 0x04). Repeat for each witness.",
    ),
]
QuorumOption = Annotated[
    int,
    typer.Option(
        "--quorum", min=0, metavar="K", help="How many of the witnesses must have cosigned."
    ),
]
OriginOption = Annotated[
    str | None, typer.Option("--origin", help="Require the checkpoint to be this log's.")
]


def trust_policy(
    vkeys: list[str], witness_vkeys: list[str] | None, quorum: int, origin: str | None
) -> TrustPolicy:
    """The policy from the command line; a bad key or quorum is a usage error (exit 2)."""
    try:
        return TrustPolicy.parse(vkeys, witness_vkeys or [], quorum, origin)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _describe_entry(entry: bytes) -> str:
    """The entry's event, for the reader (what was verified is the bytes, not this)."""
    decoded = ledger_pb2.LedgerEntry()
    try:
        decoded.ParseFromString(entry)
    except DecodeError:
        return f"{len(entry)} bytes (not a LedgerEntry)"
    kind = ledger_pb2.EventKind.Name(decoded.kind).removeprefix("EVENT_KIND_")
    parts = [kind]
    if decoded.HasField("resource"):
        version = f" v{decoded.resource.version}" if decoded.resource.version else ""
        parts.append(f"{decoded.resource.type}/{decoded.resource.id}{version}")
    parts.append(f"by {decoded.actor} ({decoded.organization})")
    if decoded.HasField("time"):
        parts.append(f"at {decoded.time.ToDatetime(tzinfo=UTC).isoformat()}")
    return " ".join(parts)


def _summary(result: VerifiedReceipt, policy: TrustPolicy, entry: bytes | None) -> Table:
    checkpoint = result.checkpoint
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("origin", checkpoint.checkpoint.origin)
    table.add_row("tree size", str(checkpoint.size))
    table.add_row("root hash", checkpoint.root.hex())
    table.add_row("leaf index", str(result.leaf_index))
    table.add_row("leaf hash", result.leaf_hash.hex())
    table.add_row("signed by", checkpoint.log_key)
    witnesses = policy.describe_witnesses(checkpoint)
    if checkpoint.witnesses:
        witnesses += ": " + ", ".join(checkpoint.witnesses)
    table.add_row("witnesses", witnesses)
    table.add_row("inclusion", f"proof of {result.proof_length} hashes verifies (RFC 9162)")
    if entry is None:
        table.add_row("entry", "not checked (no --entry given)")
    else:
        table.add_row("entry", f"matches the leaf hash: {_describe_entry(entry)}")
    return table


@app.command("receipt")
def receipt_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The receipt (protobuf JSON)."
        ),
    ],
    *,
    vkey: VkeyOption,
    witness_vkey: WitnessOption = None,
    quorum: QuorumOption = 0,
    entry: Annotated[
        Path | None,
        typer.Option(
            "--entry",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The exact entry bytes; checks SHA-256(0x00 || entry) is the leaf hash.",
        ),
    ] = None,
    origin: OriginOption = None,
    binary: Annotated[
        bool, typer.Option("--binary", help="FILE is binary protobuf, not JSON.")
    ] = False,
) -> None:
    """Check a receipt: the checkpoint's signatures, the inclusion proof and the entry.

    Exit status: 0 every check passes; 1 one fails, named; 2 a usage error.
    """
    policy = trust_policy(vkey, witness_vkey, quorum, origin)
    entry_bytes = entry.read_bytes() if entry is not None else None
    try:
        receipt = read_receipt(file, binary=binary)
        result = verify_receipt(receipt, policy, entry_bytes)
    except ReceiptFormatError as error:
        errors.print(f"[red bold]✗ {file}: not a receipt:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    except ReceiptInvalid as failure:
        errors.print(
            f"[red bold]✗ receipt {file} does NOT verify[/red bold] "
            f"([bold]{failure.check}[/bold] check failed)",
            highlight=False,
        )
        errors.print(f"  {failure.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green bold]✓ receipt {file} verifies[/green bold]", highlight=False)
    console.print(_summary(result, policy, entry_bytes))


def _kind_text(kind: ledger_pb2.EventKind.ValueType) -> str:
    return ledger_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_")


def _entries_table(result: VerifiedExport) -> Table:
    table = Table()
    for column in ("entry", "type", "id", "version", "ledgered as", "leaf index"):
        table.add_column(column, overflow="fold")
    for entry in result.entries:
        table.add_row(
            str(entry.index),
            entry.resource_type,
            entry.resource_id,
            str(entry.version),
            _kind_text(entry.kind),
            str(entry.leaf_index),
        )
    return table


def _export_summary(result: VerifiedExport, policy: TrustPolicy) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("bundle", result.bundle_id or "-")
    table.add_row("timestamp", result.timestamp or "-")
    table.add_row("resources", str(len(result.entries)))
    for checkpoint in result.checkpoints:
        proven = sum(e.receipt.checkpoint.note == checkpoint.note for e in result.entries)
        table.add_row(
            "checkpoint",
            f"{checkpoint.checkpoint.origin}, tree size {checkpoint.size}, root "
            f"{checkpoint.root.hex()} ({proven} of the resources proven in it)",
        )
        table.add_row("signed by", checkpoint.log_key)
        witnesses = policy.describe_witnesses(checkpoint)
        if checkpoint.witnesses:
            witnesses += ": " + ", ".join(checkpoint.witnesses)
        table.add_row("witnesses", witnesses)
    return table


@app.command("export")
def export_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="BUNDLE",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The export (FHIR collection Bundle, JSON; medledger record export).",
        ),
    ],
    *,
    vkey: VkeyOption,
    witness_vkey: WitnessOption = None,
    quorum: QuorumOption = 0,
    origin: OriginOption = None,
) -> None:
    """Check a patient export: each resource is exactly what the ledger committed to, in a
    checkpoint signed by the log (and cosigned by the witnesses).

    Per entry, in order: the ledger-proof extension, the content commitment, the ledger entry
    (event, type, blinded id), the receipt (docs/export-format.md). The first failure names
    the entry and the check. Exit status: 0 every entry verifies; 1 one fails, or the file is
    not a verifiable export (not a collection Bundle, pseudonymised); 2 a usage error.
    """
    policy = trust_policy(vkey, witness_vkey, quorum, origin)
    try:
        result = verify_export(parse_bundle(file.read_bytes()), policy)
    except ExportFormatError as error:
        errors.print(
            f"[red bold]✗ {file}: not a FHIR collection Bundle:[/red bold] {error}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except ExportNotVerifiable as reason:
        errors.print(
            f"[red bold]✗ export {file} cannot be verified:[/red bold] {reason}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except EntryInvalid as failure:
        errors.print(
            f"[red bold]✗ export {file} does NOT verify[/red bold]: {failure.entry} "
            f"([bold]{failure.check}[/bold] check failed)",
            highlight=False,
            soft_wrap=True,
        )
        errors.print(f"  {failure.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(
        f"[green bold]✓ export {file} verifies: {len(result.entries)} resource(s), each "
        "exactly as the ledger committed to it[/green bold]",
        highlight=False,
    )
    console.print(_entries_table(result))
    console.print(_export_summary(result, policy))


@app.command("summary")
def summary_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="BUNDLE",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The summary (FHIR document Bundle, JSON; medledger report summary --bundle).",
        ),
    ],
    *,
    vkey: VkeyOption,
    witness_vkey: WitnessOption = None,
    quorum: QuorumOption = 0,
    origin: OriginOption = None,
) -> None:
    """Check a patient summary: a well-formed FHIR document whose every line is a resource
    carrying its ledger proof, each checked as an export's entries are (verify export).

    Exit status: 0 every line verifies; 1 the file is not a summary document, a line has no
    proof, or a proof fails (the entry and the check are named); 2 a usage error.
    """
    policy = trust_policy(vkey, witness_vkey, quorum, origin)
    try:
        document = parse_document(file.read_bytes())
        result = verify_export(check_summary_lines(document), policy)
    except (SummaryInvalid, ExportFormatError, ExportNotVerifiable) as reason:
        errors.print(
            f"[red bold]✗ summary {file} cannot be verified:[/red bold] {reason}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except EntryInvalid as failure:
        errors.print(
            f"[red bold]✗ summary {file} does NOT verify[/red bold]: {failure.reference} "
            f"([bold]{failure.check}[/bold] check failed)",
            highlight=False,
            soft_wrap=True,
        )
        errors.print(f"  {failure.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(
        f"[green bold]✓ summary {file} verifies: {len(result.entries)} resource(s) behind its "
        "lines, each exactly as the ledger committed to it[/green bold]",
        highlight=False,
    )
    console.print(_entries_table(result))
    console.print(_export_summary(result, policy))


def _run_model(model: bytes, document: PredictionDocument) -> float | None:
    """The model's score of the document's input row, by onnxruntime when it is installed
    (None when it is not): the CLI's own check, the verify library runs no model."""
    try:
        import numpy as np  # noqa: PLC0415
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    row = np.array([document.input_row], dtype=np.float32)
    (output,) = session.run([document.model.score_tensor], {document.model.input: row})
    return float(np.asarray(output, dtype=np.float64)[0, document.model.score_column])


def _prediction_summary(result: VerifiedPrediction, policy: TrustPolicy, model_check: str) -> Table:
    document = result.document
    checkpoint = result.receipt.checkpoint
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("prediction", document.prediction_id)
    table.add_row("made at", document.made_at)
    table.add_row("subject", document.subject)
    table.add_row(
        "model", f"{document.model.name} version {document.model.version} ({document.model.sha256})"
    )
    table.add_row("model file", model_check)
    table.add_row("score", f"{document.score!r} ({document.model.score_kind})")
    if document.label is not None:
        table.add_row("label", document.label)
    table.add_row("base score", repr(document.base_score))
    table.add_row(
        "contributions",
        f"add up in {document.contribution_space} to within {result.tolerance:.3g} "
        f"(residual {result.residual:.3g})",
    )
    table.add_row("basis", ", ".join(document.basis))
    table.add_row("ledgered", _describe_entry(result.entry.SerializeToString()))
    table.add_row("leaf index", str(result.leaf_index))
    table.add_row(
        "checkpoint",
        f"{checkpoint.checkpoint.origin}, tree size {checkpoint.size}, "
        f"root {checkpoint.root.hex()}",
    )
    table.add_row("signed by", checkpoint.log_key)
    witnesses = policy.describe_witnesses(checkpoint)
    if checkpoint.witnesses:
        witnesses += ": " + ", ".join(checkpoint.witnesses)
    table.add_row("witnesses", witnesses)
    return table


def _features_table(document: PredictionDocument) -> Table:
    table = Table()
    for column in ("feature", "value", "unit", "from", "model input", "contribution"):
        table.add_column(column, overflow="fold")
    for feature, scored, contribution in zip(
        document.features, document.input_row, document.contributions, strict=True
    ):
        value = feature.category.code if feature.category is not None else f"{feature.value:.6g}"
        origin = feature.derivation or ", ".join(feature.sources)
        if feature.transform != "identity":
            scored_text = f"{scored:.6g} ({feature.transform})"
        else:
            scored_text = f"{scored:.6g}"
        table.add_row(
            feature.name, value, feature.unit, origin, scored_text, f"{contribution:+.6g}"
        )
    return table


def _refuse_prediction(file: Path, failure: PredictionInvalid) -> NoReturn:
    errors.print(
        f"[red bold]✗ prediction {file} does NOT verify[/red bold] "
        f"([bold]{failure.check}[/bold] check failed)",
        highlight=False,
        soft_wrap=True,
    )
    errors.print(f"  {failure.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command("prediction")
def prediction_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="The prediction's opening (prediction.json, as Predict returns it).",
        ),
    ],
    *,
    vkey: VkeyOption,
    witness_vkey: WitnessOption = None,
    quorum: QuorumOption = 0,
    origin: OriginOption = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The ONNX file: checks its SHA-256 is the prediction's model, and, when "
            "onnxruntime is installed, that it scores the committed inputs as the prediction "
            "says.",
        ),
    ] = None,
) -> None:
    """Check a prediction: which model produced this score from which inputs.

    In order: the document opens the INFERENCE_MADE entry's commitment, the entry is that
    prediction's, the receipt proves the entry in a checkpoint signed by the log (and
    cosigned by the witnesses), each model input is its feature's value after the transform,
    and the contributions add up to the score; with --model, the file's digest and its score
    (docs/prediction-format.md). The first failure is named. Exit status: 0 every check
    passes; 1 one fails, or the file is not a prediction opening; 2 a usage error.
    """
    policy = trust_policy(vkey, witness_vkey, quorum, origin)
    try:
        result = verify_prediction(parse_opening(file.read_bytes()), policy)
    except PredictionFormatError as error:
        errors.print(
            f"[red bold]✗ {file}: not a prediction opening:[/red bold] {error}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except PredictionInvalid as failure:
        _refuse_prediction(file, failure)
    model_check = "not checked (no --model given)"
    if model is not None:
        data = model.read_bytes()
        try:
            check_model_file(result.document, data)
            reproduced = _run_model(data, result.document)
            if reproduced is None:
                model_check = (
                    f"SHA-256 {hashlib.sha256(data).hexdigest()} matches; the score was not "
                    "recomputed (onnxruntime is not installed)"
                )
            else:
                check_model_output(result.document, reproduced)
                model_check = (
                    f"SHA-256 matches; onnxruntime scores the committed inputs {reproduced!r}"
                )
        except PredictionInvalid as failure:
            _refuse_prediction(file, failure)
        except Exception as error:  # noqa: BLE001 - the file is not a model onnxruntime runs
            _refuse_prediction(
                file,
                PredictionInvalid(
                    CHECK_MODEL_OUTPUT, f"onnxruntime could not run {model}: {type(error).__name__}"
                ),
            )
    console.print(
        f"[green bold]✓ prediction {file} verifies: {result.document.model.name} version "
        f"{result.document.model.version} scored {result.document.score!r} from these "
        "inputs[/green bold]",
        highlight=False,
        soft_wrap=True,
    )
    console.print(_features_table(result.document))
    console.print(_prediction_summary(result, policy, model_check))
