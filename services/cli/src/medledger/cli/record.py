"""``medledger record create|get|update|history|search|export|erase|access-log|audit``: FHIR
resources in the record service, and the patient's rights over them.

Every call carries the caller's access token (``--token`` or ``$MEDLEDGER_TOKEN``) and a
purpose of use; the record service asks identity whether the token may do it for that purpose.
A write is ledgered before it is answered: its receipt comes with the answer (``--receipt-out``
saves it for ``medledger verify receipt``). The resource itself, FHIR JSON, goes to stdout;
what the CLI says about it goes to stderr, so ``> patient.json`` keeps only the resource.
``export`` writes a patient's whole record, a FHIR Bundle with the ledger proof of each
resource, to a file for ``medledger verify export``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Final, TypeAlias, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.calls import CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.consent import (
    PURPOSES,
    JsonOption,
    ReceiptOutOption,
    TokenOption,
    print_json,
    purpose_value,
    require_token,
    save_receipt,
    when_text,
)
from medledger.common.keyfiles import write_private

app = typer.Typer(
    help="Create, read, update, list the versions of and search FHIR resources; export, "
    "erase and list the access log of a patient's record; audit the store against the ledger.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")
# Only in the generated type stubs; the runtime stub class is not generic.
Stub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"

DEFAULT_RECORD: Final = "127.0.0.1:50052"
PAGE_SIZE: Final = 100
# FHIR R4: a resource type is a capitalised name; an id is 1-64 of [A-Za-z0-9-.].
RESOURCE_TYPE: Final = re.compile(r"[A-Z][A-Za-z]*")
REFERENCE: Final = re.compile(r"(?P<type>[A-Z][A-Za-z]*)/(?P<id>[A-Za-z0-9\-.]{1,64})")

RecordOption = Annotated[
    str,
    typer.Option(
        "--record",
        metavar="HOST:PORT",
        envvar="MEDLEDGER_RECORD_ADDR",
        help="The record service's gRPC address.",
    ),
]
PurposeOption = Annotated[
    str,
    typer.Option("--purpose", metavar="CODE", help=f"Why you access it ({', '.join(PURPOSES)})."),
]
BreakGlassOption = Annotated[
    str | None,
    typer.Option(
        "--break-glass-reason",
        help="With --purpose ETREAT: why it is an emergency, when no consent permits it "
        "(ledgered as BREAK_GLASS).",
    ),
]
IdempotencyKeyOption = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        metavar="KEY",
        help="A retry with the same key returns the first answer and writes nothing more "
        "(default: a fresh key, printed on stderr).",
    ),
]
VersionOption = Annotated[
    int, typer.Option("--version", min=0, help="The version to read (0: the latest).")
]
PageSizeOption = Annotated[
    int | None,
    typer.Option(
        "--page-size",
        min=1,
        metavar="N",
        help="Fetch one page of at most N (default: walk every page).",
    ),
]
PageTokenOption = Annotated[
    str | None,
    typer.Option(
        "--page-token",
        metavar="TOKEN",
        help="Fetch the page after a previous one (its next page token).",
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="Seconds each call to the record service may take."),
]


# --- input ------------------------------------------------------------------------------------


def read_resource(source: str) -> str:
    """The text of a FHIR JSON file (``-``: standard input), checked to be one JSON object."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise typer.BadParameter(f"cannot read {source}: {error}", param_hint="FILE") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        raise typer.BadParameter(f"{source} is not JSON: {error}", param_hint="FILE") from None
    if not isinstance(document, dict):
        raise typer.BadParameter(
            f"{source} is not a FHIR resource (a JSON object)", param_hint="FILE"
        )
    # Sent as written: the server validates and commits to exactly what it was given.
    return text


def parse_reference(text: str) -> tuple[str, str]:
    """The resource type and id of ``Type/id`` (``Patient/123``)."""
    match = REFERENCE.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(
            f"{text!r} is not Type/id (e.g. Patient/123)", param_hint="REFERENCE"
        )
    return match["type"], match["id"]


def parse_resource_type(text: str) -> str:
    if RESOURCE_TYPE.fullmatch(text) is None:
        raise typer.BadParameter(
            f"{text!r} is not a FHIR resource type (e.g. Observation)", param_hint="TYPE"
        )
    return text


def parse_params(pairs: Iterable[str]) -> list[record_pb2.SearchParam]:
    """``name=value`` pairs as search parameters (the value may hold ``=``)."""
    params = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value:
            raise typer.BadParameter(
                f"{pair!r} is not name=value (e.g. patient=Patient/123)", param_hint="-p"
            )
        params.append(record_pb2.SearchParam(name=name.strip(), value=value))
    return params


def _idempotency_key(given: str | None) -> str:
    if given:
        return given
    key = uuid.uuid4().hex
    errors.print(
        f"[dim]•[/dim] idempotency key {key} (retry with --idempotency-key {key} "
        "to be sure it is written once)",
        highlight=False,
        soft_wrap=True,
    )
    return key


# --- output -----------------------------------------------------------------------------------


def _reference(stored: record_pb2.StoredResource) -> str:
    return f"{stored.resource_type}/{stored.id}"


def _print_resource(stored: record_pb2.StoredResource) -> None:
    try:
        typer.echo(json.dumps(json.loads(stored.resource_json), indent=2, ensure_ascii=False))
    except ValueError:
        typer.echo(stored.resource_json)


def _summary(stored: record_pb2.StoredResource, receipt_out: Path | None) -> None:
    saved = save_receipt(stored.receipt, receipt_out)
    errors.print(
        f"[green]•[/green] {_reference(stored)} version {stored.version} "
        f"({when_text(stored.updated_time)}), ledgered at leaf index "
        f"{stored.receipt.leaf_index}{saved}",
        highlight=False,
        soft_wrap=True,
    )


def _answer(
    reply: record_pb2.CreateResourceResponse
    | record_pb2.GetResourceResponse
    | record_pb2.UpdateResourceResponse,
    receipt_out: Path | None,
    as_json: bool,
) -> None:
    if as_json:
        print_json(reply)
        save_receipt(reply.resource.receipt, receipt_out)
        return
    _print_resource(reply.resource)
    _summary(reply.resource, receipt_out)


def versions_table(title: str, found: list[record_pb2.StoredResource]) -> Table:
    table = Table(title=title)
    for column in ("resource", "version", "updated", "ledger leaf"):
        table.add_column(column, overflow="fold")
    for stored in found:
        table.add_row(
            _reference(stored),
            str(stored.version),
            when_text(stored.updated_time),
            str(stored.receipt.leaf_index),
        )
    return table


def _more(next_page_token: str) -> None:
    if next_page_token:
        errors.print(
            f"[dim]•[/dim] more: --page-token {next_page_token}", highlight=False, soft_wrap=True
        )


# --- calls ------------------------------------------------------------------------------------


def _run(record: str, token: str, work: Callable[[Stub, Metadata], Awaitable[T]]) -> T:
    """Runs ``work`` against the record service; a refused call exits 1 with the reason."""

    async def main() -> T:
        async with open_channel(record) as channel:
            return await work(record_pb2_grpc.RecordServiceStub(channel), bearer(token))

    try:
        return asyncio.run(main())
    except ValidationError as error:
        raise typer.BadParameter(f"invalid MEDLEDGER_TLS_* settings: {error}") from None
    except CallFailed as failure:
        errors.print(f"[red bold]✗ {failure}[/red bold]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


Page = tuple[list[record_pb2.StoredResource], str]


async def _pages(
    fetch: Callable[[int, str], Awaitable[Page]], page_size: int | None, page_token: str | None
) -> Page:
    """One page when ``page_size`` or ``page_token`` is given, else every page."""
    if page_size is not None or page_token is not None:
        return await fetch(page_size or 0, page_token or "")
    found: list[record_pb2.StoredResource] = []
    token, seen = "", set()
    while True:
        items, token = await fetch(PAGE_SIZE, token)
        found.extend(items)
        if not token:
            return found, ""
        if token in seen:  # a server that loops would keep the CLI walking forever
            errors.print("[red bold]✗ the server repeated a page token[/red bold]")
            raise typer.Exit(1)
        seen.add(token)


@app.command("create")
def create_command(
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="The FHIR R4 resource, JSON ('-': stdin).")
    ],
    *,
    purpose: PurposeOption = "TREAT",
    idempotency_key: IdempotencyKeyOption = None,
    receipt_out: ReceiptOutOption = None,
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Store a new resource (version 1, a server-assigned id; ledgered) and print it."""
    bearer_token = require_token(token)
    request = record_pb2.CreateResourceRequest(
        resource_json=read_resource(source),
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
    )
    request.idempotency_key = _idempotency_key(idempotency_key)

    async def create(stub: Stub, metadata: Metadata) -> record_pb2.CreateResourceResponse:
        return await checked(
            "CreateResource",
            record,
            stub.CreateResource(request, metadata=metadata, timeout=timeout),
        )

    _answer(_run(record, bearer_token, create), receipt_out, as_json)


@app.command("bundle")
def bundle_command(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="A FHIR R4 transaction Bundle of POST and PUT entries, JSON ('-': stdin).",
        ),
    ],
    *,
    purpose: PurposeOption = "TREAT",
    idempotency_key: IdempotencyKeyOption = None,
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Write every resource of a transaction Bundle (creates and If-Match updates), all or none,
    in one ledger step (entries may name each other by their urn:uuid fullUrls), and list what
    was stored."""
    bearer_token = require_token(token)
    request = record_pb2.ExecuteBundleRequest(
        bundle_json=read_resource(source),
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
    )
    request.idempotency_key = _idempotency_key(idempotency_key)

    async def execute(stub: Stub, metadata: Metadata) -> record_pb2.ExecuteBundleResponse:
        return await checked(
            "ExecuteBundle",
            record,
            stub.ExecuteBundle(request, metadata=metadata, timeout=timeout),
        )

    reply = _run(record, bearer_token, execute)
    if as_json:
        print_json(reply)
        return
    console.print(versions_table("written in one transaction", list(reply.resources)))


@app.command("get")
def get_command(
    reference: Annotated[
        str, typer.Argument(metavar="REFERENCE", help="Type/id, e.g. Patient/123.")
    ],
    *,
    version: VersionOption = 0,
    purpose: PurposeOption = "TREAT",
    receipt_out: ReceiptOutOption = None,
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Print one version of a resource (the latest unless --version)."""
    bearer_token = require_token(token)
    resource_type, resource_id = parse_reference(reference)
    request = record_pb2.GetResourceRequest(
        resource_type=resource_type,
        id=resource_id,
        version=version,
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
    )

    async def get(stub: Stub, metadata: Metadata) -> record_pb2.GetResourceResponse:
        return await checked(
            "GetResource", record, stub.GetResource(request, metadata=metadata, timeout=timeout)
        )

    _answer(_run(record, bearer_token, get), receipt_out, as_json)


@app.command("update")
def update_command(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="The new FHIR R4 resource, JSON ('-': stdin); its resourceType and id "
            "name the resource.",
        ),
    ],
    *,
    expected_version: Annotated[
        int,
        typer.Option(
            "--expected-version",
            min=1,
            help="The version you last read; a later one makes the update fail (ABORTED).",
        ),
    ],
    purpose: PurposeOption = "TREAT",
    idempotency_key: IdempotencyKeyOption = None,
    receipt_out: ReceiptOutOption = None,
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Store a new version of a resource (ledgered) and print it."""
    bearer_token = require_token(token)
    request = record_pb2.UpdateResourceRequest(
        resource_json=read_resource(source),
        expected_version=expected_version,
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
    )
    request.idempotency_key = _idempotency_key(idempotency_key)

    async def update(stub: Stub, metadata: Metadata) -> record_pb2.UpdateResourceResponse:
        return await checked(
            "UpdateResource",
            record,
            stub.UpdateResource(request, metadata=metadata, timeout=timeout),
        )

    _answer(_run(record, bearer_token, update), receipt_out, as_json)


@app.command("history")
def history_command(
    reference: Annotated[
        str, typer.Argument(metavar="REFERENCE", help="Type/id, e.g. Patient/123.")
    ],
    *,
    page_size: PageSizeOption = None,
    page_token: PageTokenOption = None,
    purpose: PurposeOption = "TREAT",
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List every version of a resource, newest first."""
    bearer_token = require_token(token)
    resource_type, resource_id = parse_reference(reference)
    purpose_code = purpose_value(purpose)

    async def history(stub: Stub, metadata: Metadata) -> Page:
        async def fetch(size: int, cursor: str) -> Page:
            request = record_pb2.ListResourceHistoryRequest(
                resource_type=resource_type,
                id=resource_id,
                page_size=size,
                page_token=cursor,
                purpose=purpose_code,
                break_glass_reason=break_glass_reason or "",
            )
            reply = await checked(
                "ListResourceHistory",
                record,
                stub.ListResourceHistory(request, metadata=metadata, timeout=timeout),
            )
            return list(reply.versions), reply.next_page_token

        return await _pages(fetch, page_size, page_token)

    versions, next_page_token = _run(record, bearer_token, history)
    if as_json:
        print_json(
            record_pb2.ListResourceHistoryResponse(
                versions=versions, next_page_token=next_page_token
            )
        )
        return
    console.print(
        versions_table(f"{resource_type}/{resource_id}: {len(versions)} version(s)", versions)
    )
    _more(next_page_token)


@app.command("search")
def search_command(
    resource_type: Annotated[
        str, typer.Argument(metavar="TYPE", help="The FHIR resource type, e.g. Observation.")
    ],
    *,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--param",
            metavar="NAME=VALUE",
            help="A search parameter that must match (e.g. patient=Patient/123, "
            "code=http://loinc.org|2345-7); repeat for more.",
        ),
    ] = None,
    page_size: PageSizeOption = None,
    page_token: PageTokenOption = None,
    purpose: PurposeOption = "TREAT",
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Find the latest versions of resources of TYPE whose parameters all match."""
    bearer_token = require_token(token)
    wanted_type = parse_resource_type(resource_type)
    params = parse_params(param or ())
    purpose_code = purpose_value(purpose)

    async def search(stub: Stub, metadata: Metadata) -> Page:
        async def fetch(size: int, cursor: str) -> Page:
            request = record_pb2.SearchResourcesRequest(
                resource_type=wanted_type,
                params=params,
                page_size=size,
                page_token=cursor,
                purpose=purpose_code,
                break_glass_reason=break_glass_reason or "",
            )
            reply = await checked(
                "SearchResources",
                record,
                stub.SearchResources(request, metadata=metadata, timeout=timeout),
            )
            return list(reply.resources), reply.next_page_token

        return await _pages(fetch, page_size, page_token)

    found, next_page_token = _run(record, bearer_token, search)
    if as_json:
        print_json(
            record_pb2.SearchResourcesResponse(resources=found, next_page_token=next_page_token)
        )
        return
    console.print(versions_table(f"{len(found)} {wanted_type} resource(s)", found))
    _more(next_page_token)


@app.command("export")
def export_command(
    patient_id: Annotated[
        str, typer.Argument(metavar="PATIENT_ID", help="The id of the patient's Patient resource.")
    ],
    *,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            dir_okay=False,
            metavar="FILE",
            help="Where to write the Bundle (FHIR JSON, exactly as the server returns it; "
            "readable by you only: it holds the patient's record).",
        ),
    ],
    pseudonymise: Annotated[
        bool,
        typer.Option(
            "--pseudonymise",
            help="Replace direct identifiers with pseudonyms (the Bundle then carries no "
            "ledger proofs: it differs from what was ledgered).",
        ),
    ] = False,
    purpose: PurposeOption = "TREAT",
    receipt_out: Annotated[
        Path | None,
        typer.Option(
            "--receipt-out",
            dir_okay=False,
            metavar="FILE",
            help="Save the receipt of the export's own ledger entry, RECORD_EXPORTED (for "
            "medledger verify receipt).",
        ),
    ] = None,
    break_glass_reason: BreakGlassOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Export every current resource of a patient that you may export (ledgered as
    RECORD_EXPORTED), each with its ledger proof, for medledger verify export."""
    bearer_token = require_token(token)
    request = record_pb2.ExportPatientRequest(
        patient_id=patient_id,
        purpose=purpose_value(purpose),
        pseudonymise=pseudonymise,
        break_glass_reason=break_glass_reason or "",
    )

    async def export(stub: Stub, metadata: Metadata) -> record_pb2.ExportPatientResponse:
        return await checked(
            "ExportPatient", record, stub.ExportPatient(request, metadata=metadata, timeout=timeout)
        )

    reply = _run(record, bearer_token, export)
    try:
        write_private(out, reply.bundle_json)
    except OSError as error:
        errors.print(f"[red bold]✗ cannot write the export:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    saved = save_receipt(reply.export_receipt, receipt_out)
    try:
        count = f"{len(json.loads(reply.bundle_json).get('entry', []))} resource(s)"
    except (ValueError, AttributeError):
        count = "the Bundle"
    proofs = (
        "pseudonymised, without ledger proofs"
        if pseudonymise
        else f"check it with: medledger verify export {out} --vkey ..."
    )
    errors.print(
        f"[green]•[/green] {count} of Patient/{patient_id} written to {out} ({proofs}); "
        f"the export is ledgered at leaf index {reply.export_receipt.leaf_index}{saved}",
        highlight=False,
        soft_wrap=True,
    )


ERASURE_REASONS: Final = {
    "PATIENT_REQUEST": record_pb2.ERASURE_REASON_PATIENT_REQUEST,
    "CONSENT_WITHDRAWN": record_pb2.ERASURE_REASON_CONSENT_WITHDRAWN,
    "UNLAWFUL_PROCESSING": record_pb2.ERASURE_REASON_UNLAWFUL_PROCESSING,
    "LEGAL_OBLIGATION": record_pb2.ERASURE_REASON_LEGAL_OBLIGATION,
    "RETENTION_EXPIRED": record_pb2.ERASURE_REASON_RETENTION_EXPIRED,
}


@app.command("erase")
def erase_command(
    patient_id: Annotated[
        str, typer.Argument(metavar="PATIENT_ID", help="The id of the patient's Patient resource.")
    ],
    *,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            metavar="GROUND",
            help=f"The legal ground (GDPR Art. 17(1)): {', '.join(ERASURE_REASONS)}.",
        ),
    ],
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Do it: erasure cannot be undone (no backup can reopen it)."),
    ] = False,
    purpose: PurposeOption = "PATRQT",
    receipt_out: ReceiptOutOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Erase a patient (crypto-shredding): their data key, commitment salts, search index
    entries and consents are destroyed; every later read answers NOT_FOUND (ERASED). The
    RECORD_ERASED ledger entry stays, no longer linkable to the patient."""
    ground = ERASURE_REASONS.get(reason.upper())
    if ground is None:
        raise typer.BadParameter(f"one of {', '.join(ERASURE_REASONS)}", param_hint="'--reason'")
    if not yes:
        raise typer.BadParameter(
            "erasure cannot be undone; add --yes to erase the patient", param_hint="'--yes'"
        )
    bearer_token = require_token(token)
    request = record_pb2.ErasePatientRequest(
        patient_id=patient_id, reason=ground, purpose=purpose_value(purpose)
    )

    async def erase(stub: Stub, metadata: Metadata) -> record_pb2.ErasePatientResponse:
        return await checked(
            "ErasePatient", record, stub.ErasePatient(request, metadata=metadata, timeout=timeout)
        )

    reply = _run(record, bearer_token, erase)
    saved = save_receipt(reply.receipt, receipt_out)
    if as_json:
        print_json(reply)
        return
    errors.print(
        f"[green]•[/green] Patient/{patient_id} erased: {reply.erased_versions} resource "
        f"version(s) made unreadable; RECORD_ERASED ledgered at leaf index "
        f"{reply.receipt.leaf_index}{saved}",
        highlight=False,
        soft_wrap=True,
    )


def _event(entry: ledger_pb2.LedgerEntry) -> str:
    return ledger_pb2.EventKind.Name(entry.kind).removeprefix("EVENT_KIND_")


@app.command("access-log")
def access_log_command(
    patient_id: Annotated[
        str, typer.Argument(metavar="PATIENT_ID", help="The id of the patient's Patient resource.")
    ],
    *,
    purpose: PurposeOption = "TREAT",
    page_size: PageSizeOption = None,
    page_token: PageTokenOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Who wrote, read or exported a patient's record, from the ledger: each entry with its
    leaf index (check it with medledger ledger proof) and what it was about. A patient reads
    their own with their own token and --purpose PATRQT. Reading the log is ledgered too."""
    bearer_token = require_token(token)

    async def read(stub: Stub, metadata: Metadata) -> record_pb2.GetAccessLogResponse:
        async def fetch(size: int, cursor: str) -> record_pb2.GetAccessLogResponse:
            return await checked(
                "GetAccessLog",
                record,
                stub.GetAccessLog(
                    record_pb2.GetAccessLogRequest(
                        patient_id=patient_id,
                        purpose=purpose_value(purpose),
                        page_size=size,
                        page_token=cursor,
                    ),
                    metadata=metadata,
                    timeout=timeout,
                ),
            )

        if page_size is not None or page_token is not None:
            return await fetch(page_size or 0, page_token or "")
        whole = record_pb2.GetAccessLogResponse()
        cursor = ""
        while True:
            page = await fetch(PAGE_SIZE, cursor)
            whole.entries.extend(page.entries)
            whole.openings.extend(page.openings)
            cursor = page.next_page_token
            if not cursor:
                return whole

    reply = _run(record, bearer_token, read)
    if as_json:
        print_json(reply)
        return
    table = Table(title=f"Access log of Patient/{patient_id}")
    for column in ("leaf", "when", "event", "resource", "by", "organisation", "purpose"):
        table.add_column(column, overflow="fold")
    for indexed, opening in zip(reply.entries, reply.openings, strict=False):
        entry = indexed.entry
        resource = opening.resource_type
        if opening.resource_id and opening.resource_id != patient_id:
            resource += f"/{opening.resource_id}"
        if opening.resource_version:
            resource += f" v{opening.resource_version}"
        actor = "the patient" if opening.patient_actor else entry.actor
        table.add_row(
            str(indexed.leaf_index),
            when_text(entry.time),
            _event(entry),
            resource,
            actor,
            entry.organization,
            purpose_pb2.PurposeOfUse.Name(entry.purpose).removeprefix("PURPOSE_OF_USE_"),
        )
    console.print(table)
    _more(reply.next_page_token)


@app.command("audit")
def audit_command(
    *,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=1000, help="Versions checked per call.")
    ] = 500,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Check every stored resource version against its ledger entry (the record service
    opens each and compares it with the commitment, kind and blinded id its write
    ledgered); needs a token with audit.read. Exit status: 0 all match; 1 the first
    mismatch, named; 2 a usage error."""
    bearer_token = require_token(token)

    async def audit(stub: Stub, metadata: Metadata) -> tuple[int, record_pb2.AuditFinding | None]:
        checked_versions, cursor = 0, ""
        while True:
            page = await checked(
                "AuditRecords",
                record,
                stub.AuditRecords(
                    record_pb2.AuditRecordsRequest(page_size=page_size, page_token=cursor),
                    metadata=metadata,
                    timeout=timeout,
                ),
            )
            checked_versions += page.checked_versions
            if page.findings:
                return checked_versions, page.findings[0]
            cursor = page.next_page_token
            if not cursor:
                return checked_versions, None

    checked_versions, finding = _run(record, bearer_token, audit)
    if finding is None:
        console.print(
            f"[green]✓[/green] {checked_versions} stored version(s) match their ledger entries",
            highlight=False,
        )
        return
    where = (
        f"{finding.resource_type}/{finding.id} version {finding.version}"
        if finding.resource_type
        else f"the stored version {finding.id}"
    )
    errors.print(
        f"[red bold]✗ {where}: {finding.check} check failed: {finding.detail}[/red bold] "
        f"(after {checked_versions} version(s) checked)",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)
