"""``medledger ingest csv|hl7``: load a lab results CSV file or a file of HL7 v2 messages
into the record service, with a progress bar and a table of what was refused.

``csv`` streams the file (IngestCsvLabResultsStream: any size, read by the server as it
arrives): valid rows become Observations, written in chunks of up to 500, each chunk in one
ledger step; each refused row is reported by row number and column. ``--mapping`` names the
columns (``patient=MRN,code=Test,value=Result,unit=Units,effective=Collected``; unnamed ones
keep their defaults ``patient_id``, ``loinc``, ``value``, ``unit``, ``effective``), and
``--identifier-system`` says the patient column holds identifiers of that system rather than
Patient ids. The idempotency key defaults to a digest of the mapping and the file, so running
the same command again (after a lost connection, say) writes nothing new.

``hl7`` reads one or more HL7 v2 messages (segments on their own lines, CR, LF or CRLF;
messages separated by blank lines or starting at each ``MSH``; no MLLP framing), or an HL7
batch file (FHS/BHS ... BTS/FTS, sent whole so the server checks its counts), and sends them
to IngestHl7V2Batch in file order, 100 messages a call (the server writes an admission
before the results that name its patient); each message is atomic and its resend (same
MSH-3/4/10) writes nothing new.

Neither prints a patient's data: issues say where (``row 12 / unit``, ``message 3 OBX[2]-5``)
and what is wrong, as the server does. Both exit 1 when anything was refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Final, TypeAlias, TypeVar

import typer
from google.protobuf import json_format
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.calls import CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.consent import TokenOption, purpose_value, require_token
from medledger.cli.record import DEFAULT_RECORD, PurposeOption, RecordOption

app = typer.Typer(
    help="Load lab results (CSV) or HL7 v2 messages into the record: each accepted row or "
    "message written with its ledger receipt, each refused one reported by where it is wrong.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")
# Only in the generated type stubs; the runtime stub class is not generic.
Stub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"

PIECE_BYTES: Final = 256 * 1024
"""CSV bytes a stream message carries (the server takes up to 1 MiB)."""
ISSUES_SHOWN: Final = 50
"""Issues listed in the summary table; ``--out`` keeps them all."""
MAPPING_FIELDS: Final = {
    "patient": "patient_column",
    "code": "code_column",
    "value": "value_column",
    "unit": "unit_column",
    "effective": "effective_column",
}
BLOCKING: Final = frozenset({record_pb2.ISSUE_SEVERITY_ERROR, record_pb2.ISSUE_SEVERITY_FATAL})
SEVERITY: Final = {
    record_pb2.ISSUE_SEVERITY_FATAL: "fatal",
    record_pb2.ISSUE_SEVERITY_ERROR: "error",
    record_pb2.ISSUE_SEVERITY_WARNING: "warning",
    record_pb2.ISSUE_SEVERITY_INFORMATION: "information",
}

FileArgument = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, metavar="FILE", help="The file to load."
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        metavar="KEY",
        help="Retry key (default: a digest of the file, so the same run again writes nothing new).",
    ),
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        dir_okay=False,
        metavar="FILE",
        help="Write every written resource (with its receipt) and every issue as JSON lines.",
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds the whole load may take.")
]


# --- what a load found --------------------------------------------------------------------------


@dataclass
class Found:
    """Issues (where, code, what) and written resources, as they come."""

    issues: list[tuple[str, record_pb2.Issue]] = field(default_factory=list)
    written: list[record_pb2.WrittenResource] = field(default_factory=list)

    def record(self, sink: IO[str] | None, place: str, reply: _Reply) -> None:
        for issue in reply.issues:
            self.issues.append((place, issue))
            if sink is not None:
                entry = json_format.MessageToDict(issue)
                sink.write(json.dumps({"issue": {"in": place, **entry}}) + "\n")
        for written in reply.written:
            self.written.append(written)
            if sink is not None:
                entry = json_format.MessageToDict(written)
                sink.write(json.dumps({"written": entry}, separators=(",", ":")) + "\n")


_Reply: TypeAlias = "record_pb2.IngestCsvLabResultsStreamResponse | record_pb2.IngestHl7V2Response"


def issues_table(title: str, issues: Sequence[tuple[str, record_pb2.Issue]]) -> Table:
    table = Table(title=title)
    for column in ("where", "severity", "code", "what is wrong"):
        table.add_column(column, overflow="fold")
    for place, issue in issues[:ISSUES_SHOWN]:
        where = f"{place} {issue.location}".strip()
        table.add_row(where, SEVERITY.get(issue.severity, "-"), issue.code, issue.diagnostics)
    if len(issues) > ISSUES_SHOWN:
        table.caption = f"and {len(issues) - ISSUES_SHOWN} more (--out FILE lists them all)"
    return table


def leaves_text(written: Sequence[record_pb2.WrittenResource]) -> str:
    if not written:
        return ""
    indexes = sorted(w.receipt.leaf_index for w in written)
    return (
        f"; ledger leaves {indexes[0]}-{indexes[-1]}"
        if len(indexes) > 1
        else (f"; ledger leaf {indexes[0]}")
    )


def _open_out(out: Path | None) -> IO[str] | None:
    if out is None:
        return None
    try:
        return out.open("w", encoding="utf-8")
    except OSError as error:
        raise typer.BadParameter(f"cannot write {out}: {error}", param_hint="--out") from None


def _run(record: str, token: str, work: Callable[[Stub, Metadata], Awaitable[T]]) -> T:
    """Runs ``work`` against the record service; a failed call exits 1 with the reason."""

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


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[refused]} refused"),
        TimeElapsedColumn(),
        console=errors,
        transient=False,
    )


# --- csv ----------------------------------------------------------------------------------------


def parse_mapping(items: Sequence[str], identifier_system: str | None) -> record_pb2.CsvLabMapping:
    """``--mapping`` items (``field=column``, comma-separated, repeatable) as the request's
    mapping; unknown fields are a usage error."""
    mapping = record_pb2.CsvLabMapping(patient_identifier_system=identifier_system or "")
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            name, equals, column = pair.partition("=")
            target = MAPPING_FIELDS.get(name.strip().lower())
            if not equals or target is None or not column.strip():
                raise typer.BadParameter(
                    f"{pair!r}: use FIELD=COLUMN with FIELD one of " + ", ".join(MAPPING_FIELDS),
                    param_hint="--mapping",
                )
            setattr(mapping, target, column.strip())
    return mapping


def default_csv_key(mapping: record_pb2.CsvLabMapping, path: Path) -> str:
    """A digest of the mapping and the file's bytes: the same load has the same key."""
    digest = hashlib.sha256(mapping.SerializeToString(deterministic=True) + b"\x00")
    with path.open("rb") as file:
        while piece := file.read(PIECE_BYTES):
            digest.update(piece)
    return "csv-" + digest.hexdigest()[:40]


def _approximate_rows(path: Path) -> int:
    """Lines after the header (a quoted line break would count twice: the bar's total is
    corrected from the server's count at the end)."""
    lines = 0
    with path.open("rb") as file:
        while piece := file.read(PIECE_BYTES):
            lines += piece.count(b"\n")
    return max(lines, 1)


async def csv_requests(
    path: Path,
    mapping: record_pb2.CsvLabMapping,
    key: str,
    purpose: purpose_pb2.PurposeOfUse.ValueType,
) -> AsyncIterator[record_pb2.IngestCsvLabResultsStreamRequest]:
    """The first message names the mapping, key and purpose; then the file a piece at a
    time (it is never read whole)."""
    yield record_pb2.IngestCsvLabResultsStreamRequest(
        mapping=mapping,
        idempotency_key=key,
        purpose=purpose,
    )
    with path.open("rb") as file:
        while piece := await asyncio.to_thread(file.read, PIECE_BYTES):
            yield record_pb2.IngestCsvLabResultsStreamRequest(csv=piece)


@app.command("csv")
def csv_command(
    file: FileArgument,
    *,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--mapping",
            metavar="FIELD=COLUMN,...",
            help="Header names of the columns: patient, code (LOINC), value, unit (UCUM), "
            "effective (ISO 8601 with zone). Default: patient_id, loinc, value, unit, effective.",
        ),
    ] = None,
    identifier_system: Annotated[
        str | None,
        typer.Option(
            "--identifier-system",
            metavar="URI",
            help="The patient column holds identifiers of this system (e.g. an MRN system), "
            "not Patient ids.",
        ),
    ] = None,
    idempotency_key: KeyOption = None,
    purpose: PurposeOption = "TREAT",
    out: OutOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    timeout: TimeoutOption = 3600.0,
) -> None:
    """Load a CSV file of lab results: each valid row becomes an Observation with its ledger
    receipt; each refused row is reported by row and column. Exits 1 when a row was refused."""
    request_mapping = parse_mapping(mapping or [], identifier_system)
    bearer_token = require_token(token)
    purpose_code = purpose_value(purpose)
    key = idempotency_key or default_csv_key(request_mapping, file)
    expected = _approximate_rows(file)
    found = Found()
    last = record_pb2.IngestCsvLabResultsStreamResponse()
    sink = _open_out(out)

    async def stream(stub: Stub, metadata: Metadata) -> None:
        nonlocal last
        with _progress() as progress:
            task = progress.add_task(f"{file.name} ", total=expected, refused=0)
            call = stub.IngestCsvLabResultsStream(
                csv_requests(file, request_mapping, key, purpose_code),
                metadata=metadata,
                timeout=timeout,
            )

            async def consume() -> None:
                nonlocal last
                async for reply in call:
                    last = reply
                    found.record(sink, "", reply)
                    refused = reply.rows_read - reply.rows_accepted
                    total = reply.rows_read if reply.done else max(expected, reply.rows_read)
                    progress.update(task, completed=reply.rows_read, total=total, refused=refused)

            await checked("IngestCsvLabResultsStream", record, consume())

    try:
        _run(record, bearer_token, stream)
    finally:
        if sink is not None:
            sink.close()
    if found.issues:
        console.print(issues_table(f"{file.name}: refused rows", found.issues))
    refused = last.rows_read - last.rows_accepted
    colour = "red" if refused else "green"
    saved = f"; written resources and issues in {out}" if out is not None else ""
    console.print(
        f"[{colour}]•[/{colour}] {last.rows_accepted} of {last.rows_read} row(s) written as "
        f"Observations, {refused} refused{leaves_text(found.written)} (idempotency key "
        f"{key}){saved}",
        highlight=False,
        soft_wrap=True,
    )
    if refused or not last.done:
        raise typer.Exit(1)


# --- hl7 ----------------------------------------------------------------------------------------

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
# Segments of an HL7 batch file's envelope, at the start of a line.
_ENVELOPE: Final = re.compile(r"(?:^|[\r\n])[\x0b]?(?:FHS|BHS|BTS|FTS)\|")
# Messages of a file without an envelope sent in one IngestHl7V2Batch call.
MESSAGES_PER_CALL: Final = 100


def hl7_messages(text: str) -> Iterator[str]:
    """The messages of a file: segments on their own lines (CR, LF or CRLF), a message
    ending at a blank line or where the next ``MSH`` segment starts; MLLP framing bytes
    (0x0b, 0x1c) are dropped. Each message comes out with CR between its segments."""
    segments: list[str] = []
    for line in _LINE_BREAK.split(text.replace("\x0b", "").replace("\x1c", "")):
        segment = line.strip()
        if segment[:3] in {"FHS", "BHS", "BTS", "FTS"}:  # a batch file's envelope
            if segments:
                yield "\r".join(segments)
                segments = []
            continue
        if segment.startswith("MSH") and segments:
            yield "\r".join(segments)
            segments = []
        if segment:
            segments.append(segment)
        elif segments:
            yield "\r".join(segments)
            segments = []
    if segments:
        yield "\r".join(segments)


@app.command("hl7")
def hl7_command(
    file: FileArgument,
    *,
    purpose: PurposeOption = "TREAT",
    out: OutOption = None,
    token: TokenOption = None,
    record: RecordOption = DEFAULT_RECORD,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds each message may take.")
    ] = 30.0,
) -> None:
    """Load a file of HL7 v2 messages (ADT^A01/A04/A08, ORU^R01) or an HL7 batch file, in
    file order, many messages a call; a message with an error writes nothing. Exits 1 when a
    message was refused."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        try:
            text = file.read_text(encoding="latin-1")  # HL7 v2's traditional default
        except OSError as error:
            raise typer.BadParameter(f"cannot read {file}: {error}") from None
    except OSError as error:
        raise typer.BadParameter(f"cannot read {file}: {error}") from None
    messages = list(hl7_messages(text))
    if not messages:
        raise typer.BadParameter(f"{file} holds no HL7 v2 message", param_hint="FILE")
    bearer_token = require_token(token)
    purpose_code = purpose_value(purpose)
    found = Found()
    refused: list[int] = []
    sink = _open_out(out)
    # A batch file (FHS/BHS ... BTS/FTS) goes whole, so that the server checks its trailers'
    # counts; plain messages go MESSAGES_PER_CALL at a time.
    chunks = [
        messages[i : i + MESSAGES_PER_CALL] for i in range(0, len(messages), MESSAGES_PER_CALL)
    ]
    calls = (
        [(text, len(messages))]
        if _ENVELOPE.search(text)
        else [("\r".join(chunk), len(chunk)) for chunk in chunks]
    )

    async def send_all(stub: Stub, metadata: Metadata) -> None:
        with _progress() as progress:
            task = progress.add_task(f"{file.name} ", total=len(messages), refused=0)
            number = 0
            for batch, count in calls:
                reply = await checked(
                    f"IngestHl7V2Batch (messages {number + 1}-{number + count})",
                    record,
                    stub.IngestHl7V2Batch(
                        record_pb2.IngestHl7V2BatchRequest(batch=batch, purpose=purpose_code),
                        metadata=metadata,
                        timeout=timeout * count,
                    ),
                )
                if reply.issues:  # the envelope does not add up: nothing of it was written
                    found.record(sink, "batch", record_pb2.IngestHl7V2Response(issues=reply.issues))
                    refused.extend(range(number + 1, number + count + 1))
                    number += count
                for answer in reply.messages:
                    number += 1
                    found.record(sink, f"message {number}", answer)
                    if not answer.written or any(i.severity in BLOCKING for i in answer.issues):
                        refused.append(number)
                progress.update(task, completed=number, refused=len(refused))

    try:
        _run(record, bearer_token, send_all)
    finally:
        if sink is not None:
            sink.close()
    if found.issues:
        console.print(issues_table(f"{file.name}: issues", found.issues))
    colour = "red" if refused else "green"
    saved = f"; written resources and issues in {out}" if out is not None else ""
    console.print(
        f"[{colour}]•[/{colour}] {len(messages) - len(refused)} of {len(messages)} message(s) "
        f"written ({len(found.written)} resources), {len(refused)} refused"
        f"{leaves_text(found.written)}{saved}",
        highlight=False,
        soft_wrap=True,
    )
    if refused:
        raise typer.Exit(1)
