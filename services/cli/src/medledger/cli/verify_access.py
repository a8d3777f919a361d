"""``medledger verify access-report``: prove offline, with the ledger's public key (and the
witnesses'), that an access report lists all and only the ledger entries about its patient up
to its checkpoint (docs/access-report.md); registered on ``medledger verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medledger.cli.access_report_pdf import flag, what, who
from medledger.cli.verify import OriginOption, QuorumOption, WitnessOption, app, trust_policy
from medledger.verify.access_report import (
    AccessReport,
    AccessReportInvalid,
    VerifiedAccessReport,
    parse_access_report,
    verify_access_report,
)

console = Console()
errors = Console(stderr=True)

LedgerKeyOption = Annotated[
    list[str],
    typer.Option(
        "--vkey",
        "--ledger-key",
        metavar="VKEY",
        help="The ledger's C2SP verifier key (GetVerifierKey). Repeat it for keys from before "
        "a rotation.",
    ),
]


def _entries_table(report: AccessReport) -> Table:
    table = Table()
    for column in ("leaf", "when", "event", "who", "organisation", "purpose", "what", ""):
        table.add_column(column, overflow="fold")
    for entry in report.entries:
        table.add_row(
            str(entry.leaf_index),
            entry.time,
            entry.event,
            who(entry),
            entry.organization,
            entry.purpose,
            what(entry),
            f"[red bold]{flag(entry)}[/red bold]" if entry.break_glass else flag(entry),
        )
    return table


def _summary(result: VerifiedAccessReport, witnesses: str) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    report, checkpoint = result.report, result.checkpoint
    table.add_row("patient", f"Patient/{report.patient_id} (as the report names it)")
    table.add_row(
        "checkpoint",
        f"{checkpoint.checkpoint.origin}, tree size {checkpoint.size}, root "
        f"{checkpoint.root.hex()}",
    )
    table.add_row("signed by", checkpoint.log_key)
    table.add_row("witnesses", witnesses)
    if result.base is not None:
        table.add_row(
            "continues",
            f"the report up to size {result.base.size} (root {result.base.root.hex()}): "
            f"leaves {report.first_index} to {checkpoint.size - 1} checked",
        )
    else:
        table.add_row("leaves", f"all {checkpoint.size} checked")
    table.add_row(
        "not checkable",
        f"{result.untestable} entries from before nonces, about patients nobody can tell",
    )
    table.add_row(
        "legacy key",
        f"{result.legacy} of the entries found by the pseudonym's legacy scan key (written "
        "before the patient had a scan secret): erasure does not unlink these",
    )
    return table


@app.command("access-report")
def access_report_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="REPORT",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The access report, JSON (medledger report access --json).",
        ),
    ],
    *,
    vkey: LedgerKeyOption,
    witness_vkey: WitnessOption = None,
    quorum: QuorumOption = 0,
    origin: OriginOption = None,
    previous: Annotated[
        Path | None,
        typer.Option(
            "--previous",
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="EARLIER",
            help="For a report continuing an earlier one (--from-size): the earlier report, "
            "whose checkpoint this one must start from.",
        ),
    ] = None,
) -> None:
    """Check an access report: its checkpoint is signed (and cosigned), its leaves are every
    leaf of the ledger up to that checkpoint (the RFC 9162 root matches), and the entries it
    lists are exactly those its patient's pseudonym finds among them, each as the ledger
    records it. Exit status: 0 it verifies; 1 it does not (the failing check is named);
    2 a usage error."""
    policy = trust_policy(vkey, witness_vkey, quorum, origin)

    def refuse(what_failed: str, message: str) -> typer.Exit:
        errors.print(
            f"[red bold]✗ access report {file} does NOT verify[/red bold] "
            f"([bold]{what_failed}[/bold] check failed)",
            highlight=False,
            soft_wrap=True,
        )
        errors.print(f"  {message}", highlight=False, soft_wrap=True)
        return typer.Exit(1)

    try:
        result = verify_access_report(parse_access_report(file.read_bytes()), policy)
        if previous is not None:
            earlier = verify_access_report(parse_access_report(previous.read_bytes()), policy)
            _check_continues(result, earlier)
    except AccessReportInvalid as failure:
        raise refuse(failure.check, failure.message) from None
    if result.base is not None and previous is None:
        errors.print(
            f"[yellow]! this report covers leaves {result.report.first_index} on: it is "
            "complete only together with the earlier report up to size "
            f"{result.base.size} (give it with --previous)[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    entries = result.report.entries
    glass = sum(1 for e in entries if e.break_glass)
    console.print(
        f"[green bold]✓ access report {file} verifies: {len(entries)} entries about the "
        f"patient ({glass} break-glass), none left out, up to tree size {result.size}"
        "[/green bold]",
        highlight=False,
    )
    console.print(_entries_table(result.report))
    witnesses = policy.describe_witnesses(result.checkpoint)
    if result.checkpoint.witnesses:
        witnesses += ": " + ", ".join(result.checkpoint.witnesses)
    console.print(_summary(result, witnesses))


def _check_continues(result: VerifiedAccessReport, earlier: VerifiedAccessReport) -> None:
    """``result`` starts exactly where ``earlier`` ends, for the same patient."""
    if result.base is None:
        raise AccessReportInvalid("previous", "this report is not a continuing one")
    if (result.base.size, result.base.root) != (earlier.size, earlier.checkpoint.root):
        raise AccessReportInvalid(
            "previous",
            f"this report starts from the tree of size {result.base.size}, the earlier one "
            f"ends at size {earlier.size} (or another root)",
        )
    same = (result.report.pseudonym, result.report.scan_key) == (
        earlier.report.pseudonym,
        earlier.report.scan_key,
    )
    if not same:
        raise AccessReportInvalid("previous", "the earlier report is another patient's")
