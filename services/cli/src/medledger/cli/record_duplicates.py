"""``medledger record duplicates|link``: likely duplicate patients, and linking a pair.

``duplicates`` asks the record service for pairs of Patients that are likely one person
(FindDuplicatePatients): each with its match probability and the FHIR elements that agreed,
highest first, among the patients the token may search; each patient listed is ledgered as a
read. Nothing is merged: ``link SOURCE TARGET`` is the explicit step, after a person has
looked at both records. It writes Patient.link on both (the source "replaced-by" the target
and inactive, the target "replaces" the source) as two new, ledgered versions, whose receipts
it prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.table import Table

from medledger.api.record.v1 import record_pb2
from medledger.cli.calls import Metadata, checked
from medledger.cli.consent import (
    JsonOption,
    TokenOption,
    print_json,
    purpose_value,
    require_token,
    save_receipt,
)
from medledger.cli.record import (
    DEFAULT_RECORD,
    PAGE_SIZE,
    REFERENCE,
    IdempotencyKeyOption,
    PageSizeOption,
    PageTokenOption,
    PurposeOption,
    RecordOption,
    Stub,
    TimeoutOption,
    _idempotency_key,
    _more,
    _run,
    app,
)

console = Console()
errors = Console(stderr=True)

# Pages walked at most when no --page-size is given (the listing recomputes every call).
MAX_PAGES: Final = 100


def _patient_id(text: str, name: str) -> str:
    """A Patient id, given bare or as Patient/id."""
    match = REFERENCE.fullmatch(text)
    if match is not None:
        if match["type"] != "Patient":
            raise typer.BadParameter(f"{name}: a Patient, not a {match['type']}")
        return match["id"]
    if not text or "/" in text:
        raise typer.BadParameter(f"{name}: a Patient id or Patient/id")
    return text


def duplicates_table(candidates: list[record_pb2.DuplicateCandidate]) -> Table:
    table = Table(title=f"likely duplicate patients ({len(candidates)})")
    table.add_column("#", justify="right")
    table.add_column("patient", overflow="fold")
    table.add_column("and patient", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("what matched", overflow="fold")
    for number, pair in enumerate(candidates, 1):
        table.add_row(
            str(number),
            f"Patient/{pair.first_patient_id}",
            f"Patient/{pair.second_patient_id}",
            f"{pair.score:.3f}",
            ", ".join(pair.matched_fields),
        )
    return table


@app.command("duplicates")
def duplicates_command(
    *,
    min_score: Annotated[
        float,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            metavar="P",
            help="Only pairs at least this likely to be one person (0: the service's default).",
        ),
    ] = 0.0,
    patient: Annotated[
        str,
        typer.Option(
            "--patient",
            metavar="ID",
            help="Only the pairs of this Patient (id or Patient/id): its blocks alone are "
            "compared, so it is fast.",
        ),
    ] = "",
    page_size: PageSizeOption = None,
    page_token: PageTokenOption = None,
    purpose: PurposeOption = "TREAT",
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 60.0,
) -> None:
    """List pairs of patients that are likely one person, highest score first."""
    bearer_token = require_token(token)
    code = purpose_value(purpose)
    patient_id = _patient_id(patient, "--patient") if patient else ""

    async def fetch(stub: Stub, metadata: Metadata) -> record_pb2.FindDuplicatePatientsResponse:
        async def page(size: int, after: str) -> record_pb2.FindDuplicatePatientsResponse:
            request = record_pb2.FindDuplicatePatientsRequest(
                min_score=min_score,
                page_size=size,
                page_token=after,
                purpose=code,
                patient_id=patient_id,
            )
            return await checked(
                "FindDuplicatePatients",
                record,
                stub.FindDuplicatePatients(request, metadata=metadata, timeout=timeout),
            )

        if page_size is not None or page_token is not None:
            return await page(page_size or 0, page_token or "")
        every = record_pb2.FindDuplicatePatientsResponse()
        after = ""
        for _ in range(MAX_PAGES):
            reply = await page(PAGE_SIZE, after)
            every.candidates.extend(reply.candidates)
            after = reply.next_page_token
            if not after:
                break
        every.next_page_token = after
        return every

    reply = _run(record, bearer_token, fetch)
    if as_json:
        print_json(reply)
        return
    console.print(duplicates_table(list(reply.candidates)))
    _more(reply.next_page_token)


@app.command("link")
def link_command(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE", help="The duplicate Patient (id or Patient/id): replaced, kept."
        ),
    ],
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="The Patient that stays (id or Patient/id).")
    ],
    *,
    source_version: Annotated[
        int,
        typer.Option("--source-version", min=1, help="The source's version you last read."),
    ],
    target_version: Annotated[
        int,
        typer.Option("--target-version", min=1, help="The target's version you last read."),
    ],
    purpose: PurposeOption = "TREAT",
    idempotency_key: IdempotencyKeyOption = None,
    source_receipt_out: Annotated[
        Path | None,
        typer.Option(
            "--source-receipt-out", dir_okay=False, metavar="FILE", help="Save its receipt."
        ),
    ] = None,
    target_receipt_out: Annotated[
        Path | None,
        typer.Option(
            "--target-receipt-out", dir_okay=False, metavar="FILE", help="Save its receipt."
        ),
    ] = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Record that SOURCE and TARGET are one person (Patient.link on both, ledgered)."""
    bearer_token = require_token(token)
    request = record_pb2.LinkPatientsRequest(
        source_patient_id=_patient_id(source, "SOURCE"),
        target_patient_id=_patient_id(target, "TARGET"),
        source_expected_version=source_version,
        target_expected_version=target_version,
        purpose=purpose_value(purpose),
    )
    request.idempotency_key = _idempotency_key(idempotency_key)

    async def link(stub: Stub, metadata: Metadata) -> record_pb2.LinkPatientsResponse:
        return await checked(
            "LinkPatients", record, stub.LinkPatients(request, metadata=metadata, timeout=timeout)
        )

    reply = _run(record, bearer_token, link)
    if as_json:
        print_json(reply)
    for role, stored, out in (
        ("replaced", reply.source, source_receipt_out),
        ("replaces it", reply.target, target_receipt_out),
    ):
        saved = save_receipt(stored.receipt, out)
        if not as_json:
            errors.print(
                f"[green]•[/green] Patient/{stored.id} ({role}) version {stored.version}, "
                f"ledgered at leaf index {stored.receipt.leaf_index}{saved}",
                highlight=False,
                soft_wrap=True,
            )
