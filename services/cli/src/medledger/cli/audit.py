"""``medledger ledger audit|receipt``: check the whole log through its API; fetch receipts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.cli.calls import CallFailed, bearer, call_failed, checked, open_channel
from medledger.cli.verify import OriginOption, QuorumOption, VkeyOption, WitnessOption, trust_policy
from medledger.tlog.hashing import leaf_hash
from medledger.verify.audit import AuditFailed, AuditReport, LedgerAuditor
from medledger.verify.ledger_client import LedgerApi, LedgerCallFailed, LedgerProtocolError
from medledger.verify.receipts import write_receipt
from medledger.verify.trust import TrustPolicy

app = typer.Typer(help="Audit the ledger through its API, or fetch a receipt from it.")
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")

LedgerOption = Annotated[
    str,
    typer.Option(
        "--ledger",
        metavar="HOST:PORT",
        envvar="MEDLEDGER_LEDGER_ADDR",
        help="The ledger's gRPC address.",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MEDLEDGER_TOKEN",
        help="Bearer access token, sent as authorization metadata.",
        show_envvar=True,
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds each call to the ledger may take.")
]


def _run(
    address: str, token: str | None, timeout: float, work: Callable[[LedgerApi], Awaitable[T]]
) -> T:
    """Runs ``work`` against the ledger; a failed call or a broken answer exits 1."""

    async def main() -> T:
        async with open_channel(address) as channel:
            return await work(LedgerApi(channel, token=token, timeout=timeout))

    try:
        return asyncio.run(main())
    except ValidationError as error:
        raise typer.BadParameter(f"invalid MEDLEDGER_TLS_* settings: {error}") from None
    except LedgerCallFailed as failed:
        refusal = call_failed(failed.call, address, failed.error)
        errors.print(f"[red bold]✗[/red bold] {refusal}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except LedgerProtocolError as error:
        errors.print(
            f"[red bold]✗ ledger at {address}:[/red bold] {error}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


def _report_table(report: AuditReport, policy: TrustPolicy) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("origin", report.origin)
    table.add_row("entries", f"{report.size} (every leaf hash recomputed)")
    table.add_row("root hash", report.root.hex())
    table.add_row(
        "checkpoints",
        f"{report.checkpoints} signed and matching the recomputed roots, "
        f"{report.consistency_proofs} consistency proofs verified",
    )
    table.add_row("signed by", ", ".join(sorted(report.log_keys)) or "-")
    table.add_row("inclusion", f"{report.inclusion_proofs} inclusion proofs verified")
    if not policy.quorum:
        table.add_row("witnesses", "no quorum required")
    elif report.witnessed is not None:
        witnessed = report.witnessed
        note = "" if witnessed.size == report.size else " (later ones not cosigned yet)"
        table.add_row(
            "witnesses",
            f"checkpoint {witnessed.size}{note}: {policy.describe_witnesses(witnessed)}",
        )
    return table


@app.command("audit")
def audit_command(
    *,
    ledger: LedgerOption,
    vkey: VkeyOption,
    witness_vkey: WitnessOption = None,
    quorum: QuorumOption = 0,
    origin: OriginOption = None,
    token: TokenOption = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            min=1,
            metavar="N",
            help="Check the inclusion proofs of N random leaves instead of every leaf.",
        ),
    ] = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Walk the whole log: recompute every leaf hash and root, check every checkpoint's
    signature and consistency, and the inclusion proof of every leaf (or --sample N).

    With --quorum K, some checkpoint must carry K cosignatures (witnesses lag a little behind).

    Exit status: 0 the log is sound; 1 the first mismatch, named; 2 a usage error.
    """
    policy = trust_policy(vkey, witness_vkey, quorum, origin)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
        disable=not errors.is_terminal,
    ) as progress:
        task = progress.add_task("auditing leaves", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        async def audit(api: LedgerApi) -> AuditReport | Exception:
            try:
                return await LedgerAuditor(api, policy, sample=sample, progress=advance).run()
            except (AuditFailed, LedgerProtocolError) as failure:
                return failure

        outcome = _run(ledger, token, timeout, audit)
    if isinstance(outcome, Exception):
        errors.print(f"[red bold]✗ ledger audit FAILED[/red bold] ({ledger})", highlight=False)
        errors.print(f"  {outcome}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green bold]✓ ledger audit passed[/green bold] ({ledger})", highlight=False)
    console.print(_report_table(outcome, policy))


@app.command("receipt")
def receipt_command(
    *,
    ledger: LedgerOption,
    index: Annotated[int, typer.Option("--index", min=0, help="The entry's leaf index.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Where to write the receipt.")],
    entry_out: Annotated[
        Path | None,
        typer.Option("--entry-out", dir_okay=False, help="Also save the exact entry bytes."),
    ] = None,
    tree_size: Annotated[
        int,
        typer.Option(
            "--tree-size", min=0, help="Prove against this checkpoint's size (0: the latest)."
        ),
    ] = 0,
    binary: Annotated[
        bool, typer.Option("--binary", help="Write binary protobuf instead of JSON.")
    ] = False,
    token: TokenOption = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Fetch the receipt of an entry (the format `medledger verify receipt` reads).

    Nothing is trusted here: verify the saved receipt offline with the log's public key.
    """

    async def fetch(api: LedgerApi) -> tuple[ledger_pb2.Receipt, bytes]:
        entry = await api.entry(index)
        proof = await api.inclusion_proof(index, tree_size)
        receipt = ledger_pb2.Receipt(
            leaf_index=index,
            leaf_hash=leaf_hash(entry),
            checkpoint=proof.checkpoint,
            inclusion_proof=proof.hashes,
        )
        return receipt, entry

    receipt, entry = _run(ledger, token, timeout, fetch)
    try:
        write_receipt(out, receipt, binary=binary)
        if entry_out is not None:
            entry_out.write_bytes(entry)
    except OSError as error:
        errors.print(f"[red bold]✗ cannot save:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    saved = f" and the entry to {entry_out}" if entry_out is not None else ""
    console.print(
        f"[green]•[/green] receipt of leaf {index} saved to {out}{saved}", highlight=False
    )


@app.command("vkey")
def vkey_command(
    *,
    ledger: Annotated[
        str | None,
        typer.Option(
            "--ledger",
            metavar="HOST:PORT",
            envvar="MEDLEDGER_LEDGER_ADDR",
            help="Print this ledger's checkpoint verifier key.",
        ),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness",
            metavar="HOST:PORT",
            help="Print this witness's cosignature verifier key (repeatable).",
        ),
    ] = None,
    previous: Annotated[
        bool,
        typer.Option("--previous", help="Also print the ledger's keys from before each rotation."),
    ] = False,
    token: TokenOption = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Print C2SP verifier keys, one per line: the ledger's (then, with --previous, its
    older ones), then each witness's, in the order given.

    For trying things out: a partner pins the keys its operators publish out of band.
    """
    if ledger is None and not witness:
        raise typer.BadParameter("give --ledger, --witness or both")

    async def fetch() -> list[str]:
        keys: list[str] = []
        if ledger is not None:
            async with open_channel(ledger) as channel:
                keys.extend(await LedgerApi(channel, token=token, timeout=timeout).verifier_keys())
            keys = keys if previous else keys[:1]
        for address in witness or ():
            async with open_channel(address) as channel:
                stub: witness_pb2_grpc.WitnessServiceAsyncStub = (
                    witness_pb2_grpc.WitnessServiceStub(channel)
                )
                reply = await checked(
                    "GetWitnessInfo",
                    address,
                    stub.GetWitnessInfo(
                        witness_pb2.GetWitnessInfoRequest(), metadata=bearer(token), timeout=timeout
                    ),
                )
                keys.append(reply.vkey)
        return keys

    try:
        keys = asyncio.run(fetch())
    except ValidationError as error:
        raise typer.BadParameter(f"invalid MEDLEDGER_TLS_* settings: {error}") from None
    except LedgerCallFailed as failed:
        refusal = call_failed(failed.call, ledger or "", failed.error)
        errors.print(f"[red bold]✗[/red bold] {refusal}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except CallFailed as refusal:
        errors.print(f"[red bold]✗[/red bold] {refusal}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for key in keys:
        print(key)  # plain stdout, one key a line, for shell substitution
