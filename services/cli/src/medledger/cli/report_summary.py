"""``medledger report summary``: a patient's summary (IPS-shaped) as a PDF, and as a FHIR
document Bundle with ``--bundle``.

Built here, in the client, from the patient's export (``ExportPatient``): the record service
decides what the caller may see, ledgers the export (RECORD_EXPORTED) and hands each resource
with its ledger proof. The summary keeps those proofs on its entries
(:mod:`medledger.cli.summary_document`), so the server needs no second way to read a record,
and a reader of the summary can check each line as they would check an export. Both files
hold the patient's data: they are written readable by their owner only.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from pydantic import ValidationError
from rich.console import Console

from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.calls import CallFailed, bearer, checked, open_channel
from medledger.cli.consent import TokenOption, purpose_value, require_token
from medledger.cli.record import (
    DEFAULT_RECORD,
    BreakGlassOption,
    PurposeOption,
    RecordOption,
    TimeoutOption,
)
from medledger.cli.report import report_app
from medledger.cli.summary_document import (
    SummaryError,
    build_summary,
    document_problems,
    summary_bundle,
)
from medledger.cli.summary_pdf import render_pdf

errors = Console(stderr=True)

PRIVATE_FILE_MODE: Final = 0o600


def write_private_bytes(path: Path, data: bytes) -> None:
    """Writes ``path`` atomically, readable by its owner only from the first byte."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, PRIVATE_FILE_MODE)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _export(
    record: str, token: str, request: record_pb2.ExportPatientRequest, timeout: float
) -> record_pb2.ExportPatientResponse:
    async def main() -> record_pb2.ExportPatientResponse:
        async with open_channel(record) as channel:
            stub = record_pb2_grpc.RecordServiceStub(channel)
            return await checked(
                "ExportPatient",
                record,
                stub.ExportPatient(request, metadata=bearer(token), timeout=timeout),
            )

    try:
        return asyncio.run(main())
    except ValidationError as error:
        raise typer.BadParameter(f"invalid MEDLEDGER_TLS_* settings: {error}") from None
    except CallFailed as failure:
        errors.print(
            f"[red bold]✗ no summary of Patient/{request.patient_id}: {failure}[/red bold]",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red bold]✗ {message}[/red bold]", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@report_app.command("summary")
def summary_command(
    *,
    patient: Annotated[
        str,
        typer.Option("--patient", metavar="ID", help="The patient's Patient id (or Patient/ID)."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", dir_okay=False, metavar="FILE", help="Where to write the PDF."),
    ],
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            dir_okay=False,
            metavar="FILE",
            help="Also write the summary as a FHIR document Bundle (JSON), each line's "
            "resource with its ledger proof.",
        ),
    ] = None,
    purpose: PurposeOption = "TREAT",
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    timeout: TimeoutOption = 30.0,
) -> None:
    """A patient's summary (problems, medications, allergies, latest results, vital signs,
    risk assessments) from their record as you may export it (ledgered as RECORD_EXPORTED):
    a PDF, and with --bundle a FHIR document Bundle."""
    bearer_token = require_token(token)
    patient_id = patient.strip().removeprefix("Patient/")
    request = record_pb2.ExportPatientRequest(
        patient_id=patient_id,
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
    )
    reply = _export(record, bearer_token, request, timeout)
    try:
        export: Any = json.loads(reply.bundle_json)
        summary = build_summary(export if isinstance(export, dict) else {})
    except ValueError as error:  # SummaryError, or JSON the server should never send
        reason = error if isinstance(error, SummaryError) else "the export is not JSON"
        raise _fail(f"cannot summarise the export of Patient/{patient_id}: {reason}") from None
    document = summary_bundle(summary)
    problems = document_problems(document)
    if problems:  # a defect of the builder, not of the record: say so rather than write it
        raise _fail("the summary is not a well-formed FHIR document: " + "; ".join(problems))
    pdf = render_pdf(summary)
    try:
        write_private_bytes(out, pdf)
        if bundle is not None:
            text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
            write_private_bytes(bundle, text.encode("utf-8"))
    except OSError as error:
        raise _fail(f"cannot write the summary: {error}") from None
    counts = ", ".join(
        f"{s.spec.title.split(' (')[0].lower()} {len(s.items)}" for s in summary.sections
    )
    written = f"{out}" + (f" and {bundle} (FHIR document)" if bundle is not None else "")
    errors.print(
        f"[green]•[/green] summary of Patient/{patient_id} written to {written}: {counts}; "
        f"built from the export ledgered at leaf index {reply.export_receipt.leaf_index}",
        highlight=False,
        soft_wrap=True,
    )
