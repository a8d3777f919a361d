"""``medledger report access``: who accessed a patient's record, from the ledger, as a PDF and
as JSON that ``medledger verify access-report`` proves complete up to a signed checkpoint
(docs/access-report.md).

The record service streams the report (``GetAccessReport``: the checkpoint, every ledger leaf
up to it, the patient's pseudonym, scan key and entries); this command assembles it, checks
that it hangs together (its leaves hash to the checkpoint's root, and the listed entries are
exactly those the scan key and pseudonym find), and writes it. The signature is checked by
whoever verifies the JSON with the ledger's key: this command need not be trusted. Both files
name the patient's id, and the JSON holds their pseudonym and scan key (which find their
entries in the ledger): they are written readable by their owner only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import grpc
import typer
from pydantic import ValidationError
from rich.console import Console

from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.access_report_pdf import render_pdf
from medledger.cli.calls import CallFailed, bearer, call_failed, open_channel
from medledger.cli.consent import TokenOption, purpose_value, require_token
from medledger.cli.record import DEFAULT_RECORD, PurposeOption, RecordOption, TimeoutOption
from medledger.cli.report import report_app
from medledger.cli.report_summary import write_private_bytes
from medledger.tlog import CompactRange, leaf_hash
from medledger.verify.access_report import (
    AccessReport,
    ReportAssembly,
    count_untestable,
    scan_report,
    unverified_checkpoint,
)

errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red bold]✗ {message}[/red bold]", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def fetch_report(
    record: str,
    token: str,
    request: record_pb2.GetAccessReportRequest,
    timeout: float,
    generated_at: str,
) -> AccessReport:
    """The report the record service streams, assembled; :class:`CallFailed` when refused."""

    async def main() -> AccessReport:
        assembly = ReportAssembly(request.patient_id, generated_at)
        async with open_channel(record) as channel:
            stub = record_pb2_grpc.RecordServiceStub(channel)
            stream = stub.GetAccessReport(request, metadata=bearer(token), timeout=timeout)
            try:
                async for part in stream:
                    assembly.add(part)
            except grpc.aio.AioRpcError as error:
                raise call_failed("GetAccessReport", record, error) from None
        return assembly.report()

    return asyncio.run(main())


def self_check(report: AccessReport) -> None:
    """What this command can check without the ledger's key: the leaves hash to the
    checkpoint's root, and the entries listed are the ones the scan keys find. ValueError
    saying what differs."""
    checkpoint = unverified_checkpoint(report.checkpoint)
    if checkpoint.size - report.first_index != len(report.leaves):
        raise ValueError(
            f"{len(report.leaves)} leaves from {report.first_index}, the checkpoint has "
            f"{checkpoint.size}"
        )
    tree = CompactRange()
    if report.base is not None:
        tree = CompactRange.from_border(report.first_index, report.base.border)
    tree.extend(leaf_hash(leaf) for leaf in report.leaves)
    if tree.root() != checkpoint.root_hash:
        raise ValueError("the leaves do not hash to the checkpoint's root")
    found = scan_report(report)
    listed = {e.leaf_index: e.found_by for e in report.entries if e.found_by != "opening"}
    if found != listed:
        raise ValueError(
            f"the service listed {len(listed)} entries found by nonce; the scan keys find "
            f"{len(found)}"
        )


@report_app.command("access")
def access_command(
    *,
    patient: Annotated[
        str,
        typer.Option("--patient", metavar="ID", help="The patient's Patient id (or Patient/ID)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", dir_okay=False, metavar="FILE", help="Where to write the PDF."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            dir_okay=False,
            metavar="FILE",
            help="Where to write the report as JSON, for medledger verify access-report.",
        ),
    ] = None,
    from_size: Annotated[
        int,
        typer.Option(
            "--from-size",
            min=0,
            metavar="N",
            help="Continue an earlier report: only the ledger's leaves from its checkpoint's "
            "size N on (verify it with --previous EARLIER.json).",
        ),
    ] = 0,
    purpose: PurposeOption = "PATRQT",
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    timeout: TimeoutOption = 120.0,
) -> None:
    """Who accessed a patient's record: every ledger entry about them (when, what, who,
    which organisation, why, break-glass flagged) up to a signed checkpoint, as a PDF (--out)
    and as JSON (--json) that medledger verify access-report proves complete offline.
    The patient asks with their own token (purpose PATRQT); their holder or an auditor the
    patient's consent covers as for the access log. Ledgered as a read."""
    if out is None and json_out is None:
        raise typer.BadParameter("give --out FILE.pdf, --json FILE.json, or both")
    bearer_token = require_token(token)
    patient_id = patient.strip().removeprefix("Patient/")
    request = record_pb2.GetAccessReportRequest(
        patient_id=patient_id, purpose=purpose_value(purpose), from_size=from_size
    )
    generated_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        report = fetch_report(record, bearer_token, request, timeout, generated_at)
    except ValidationError as error:
        raise typer.BadParameter(f"invalid MEDLEDGER_TLS_* settings: {error}") from None
    except CallFailed as failure:
        raise _fail(f"no access report of Patient/{patient_id}: {failure}") from None
    except ValueError as error:
        raise _fail(f"the record service sent a malformed report: {error}") from None
    try:
        self_check(report)
    except ValueError as error:
        raise _fail(f"the record service's report does not hang together: {error}") from None
    hint = (
        f"medledger verify access-report {json_out.name if json_out else 'REPORT.json'} "
        "--vkey LEDGER_VKEY (and --witness-vkey/--quorum for the witnesses)"
    )
    try:
        if json_out is not None:
            write_private_bytes(json_out, report.to_json())
        if out is not None:
            pdf = render_pdf(report, untestable=count_untestable(report), verify_hint=hint)
            write_private_bytes(out, pdf)
    except OSError as error:
        raise _fail(f"cannot write the access report: {error}") from None
    checkpoint = unverified_checkpoint(report.checkpoint)
    written = " and ".join(str(p) for p in (out, json_out) if p is not None)
    glass = sum(1 for e in report.entries if e.break_glass)
    errors.print(
        f"[green]•[/green] access report of Patient/{patient_id} written to {written}: "
        f"{len(report.entries)} entries ({glass} break-glass) among {len(report.leaves)} "
        f"ledger leaves, complete up to the checkpoint of size {checkpoint.size}",
        highlight=False,
        soft_wrap=True,
    )
