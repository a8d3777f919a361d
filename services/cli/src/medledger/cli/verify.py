"""``medledger verify receipt|export``: check a ledger receipt, or a patient export and the
ledger proof of each of its resources, offline, with public keys only."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.table import Table

from medledger.api.ledger.v1 import ledger_pb2
from medledger.verify.export import (
    EntryInvalid,
    ExportFormatError,
    ExportNotVerifiable,
    VerifiedExport,
    parse_bundle,
    verify_export,
)
from medledger.verify.receipt import ReceiptInvalid, VerifiedReceipt, verify_receipt
from medledger.verify.receipts import ReceiptFormatError, read_receipt
from medledger.verify.trust import TrustPolicy

app = typer.Typer(
    help="Verify ledger receipts and patient exports offline, with public keys only (no network)."
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
