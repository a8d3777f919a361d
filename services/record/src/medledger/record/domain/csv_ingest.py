"""IngestCsvLabResults: a CSV file of lab results in, one Observation per valid row.

The file is read as it arrives (:class:`~medledger.record.domain.csv_labs.LabCsvReader`); the
rows that pass their checks gather into chunks of :data:`CHUNK_ROWS`, and each chunk is
written by :meth:`BulkWrites.write_all`: one ledger AppendBatch, all of the chunk or none of
it. Before a chunk is written each of its patients is resolved once (a Patient id must name a
stored Patient; an identifier must name exactly one) and identity asked whether the caller
may write that patient's Observations; rows whose patient is unknown, ambiguous or refused
are reported, not written, and the rest of the chunk is.

Idempotency. Every chunk has its own key, derived from the request's key (scoped to the
caller) and the chunk's number, and the digest of the rows it was cut from: the same file
sent again with the same key cuts the same chunks, and each chunk's write returns the first
attempt's versions (BulkWrites finishes an attempt the ledger did not acknowledge), so a
retry writes nothing new. A chunk's digest is taken before its patients are resolved, so a
retry after a patient was created or a consent changed still finds the first attempt's
chunk; the issues it reports are those found again.

A request without a key gets a random one: nothing of it can be replayed.

Memory. The stream form holds at most :data:`CHUNKS_AT_ONCE` chunks (being written, or
written and not yet answered: a client that reads its answers slowly holds the reading back),
the rows of one message, the record being read, and at most :data:`MAX_HELD_ISSUES` issues
before it reports them; the unary form holds its text (at most
:data:`MAX_UNARY_CSV_CHARS`) and answers for at most :data:`MAX_UNARY_ROWS` rows, so that its
single answer (a receipt of about a kilobyte per row written) stays well within a gRPC
message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from medledger.common.errors import Aborted, FieldViolation, InvalidArgument, NotFound
from medledger.common.metrics import ingest_rejected
from medledger.record.domain.bulk_writes import BulkWrites, NewResource
from medledger.record.domain.csv_labs import (
    IssueCode,
    LabCsvReader,
    LabMapping,
    LabRow,
    ReadRow,
    RejectedRow,
    RowIssue,
    observation,
)
from medledger.record.domain.fhir_validation import validate_resource
from medledger.record.domain.peers import AccessChecks, AccessQuery, Action, Requester
from medledger.record.domain.ports import RecordStorage, StoredVersion
from medledger.record.domain.resource_issues import ResourceInvalid
from medledger.record.domain.resources import scoped_key

CHUNK_ROWS: Final = 500
"""Rows a chunk (one ledger AppendBatch, at most 1,000 entries) holds."""
CHUNKS_AT_ONCE: Final = 4
"""Chunks of one request being written, or written and not yet answered, at once: their
writes overlap (each waits on MongoDB most of its time), and no more are held."""
MAX_UNARY_CSV_CHARS: Final = 4 * 1024 * 1024
MAX_UNARY_ROWS: Final = 2000
MAX_PIECE_BYTES: Final = 1024 * 1024
"""The CSV bytes one stream message may carry."""
MAX_HELD_ISSUES: Final = 1000
"""Issues of rejected rows held before they are reported without waiting for a chunk."""
MAX_REMEMBERED_PATIENTS: Final = 10_000
"""Patients whose resolution one request remembers across its chunks."""
PATIENT_LOOKUPS_AT_ONCE: Final = 16
_DIGEST_LABEL: Final = b"medledger.record csv chunk v1\x00"
T = TypeVar("T")


@dataclass(frozen=True)
class CsvProgress:
    """What happened since the previous progress: the issues of the rows settled and the
    versions written; ``rows_read`` and ``rows_accepted`` count from the start."""

    rows_read: int
    rows_accepted: int
    issues: Sequence[RowIssue] = ()
    written: Sequence[StoredVersion] = ()
    # The last progress of a file: everything read and settled.
    done: bool = False


@dataclass(frozen=True)
class _Patient:
    """A patient column's value, resolved: the Patient id, or why its rows are refused."""

    patient_id: str = ""
    refused: tuple[IssueCode, str] | None = None


def _too_large(what: str) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("csv", f"{what}: send the file in pieces with IngestCsvLabResultsStream")],
        reason="CSV_TOO_LARGE",
    )


class CsvLabIngestion:
    def __init__(
        self,
        writes: BulkWrites,
        storage: RecordStorage,
        access: AccessChecks,
        *,
        chunk_rows: int = CHUNK_ROWS,
        chunks_at_once: int = CHUNKS_AT_ONCE,
    ) -> None:
        self._writes = writes
        self._storage = storage
        self._access = access
        self._chunk_rows = chunk_rows
        self._chunks_at_once = chunks_at_once

    def _run(self, requester: Requester, mapping: LabMapping, idempotency_key: str) -> _Run:
        return _Run(
            self._writes,
            self._storage,
            self._access,
            self._chunk_rows,
            self._chunks_at_once,
            requester,
            mapping,
            idempotency_key,
        )

    async def ingest_text(
        self, requester: Requester, mapping: LabMapping, text: str, idempotency_key: str = ""
    ) -> CsvProgress:
        """The unary form: a whole file of at most :data:`MAX_UNARY_ROWS` rows, read before
        anything is written (too many rows: INVALID_ARGUMENT, nothing written)."""
        if len(text) > MAX_UNARY_CSV_CHARS:
            raise _too_large(f"more than {MAX_UNARY_CSV_CHARS // (1024 * 1024)} MiB of CSV")
        reader = LabCsvReader(mapping)

        def read_all() -> list[ReadRow]:
            return reader.feed_text(text) + reader.finish()

        rows = await asyncio.to_thread(read_all)
        if reader.rows_read > MAX_UNARY_ROWS:
            raise _too_large(f"more than {MAX_UNARY_ROWS} rows")

        async def once() -> AsyncIterator[list[ReadRow]]:
            yield rows

        issues: list[RowIssue] = []
        written: list[StoredVersion] = []
        last = CsvProgress(reader.rows_read, 0)
        async for last in self._run(requester, mapping, idempotency_key).progress(once(), reader):
            issues += last.issues
            written += last.written
        return CsvProgress(reader.rows_read, last.rows_accepted, issues, written, done=True)

    async def ingest_stream(
        self,
        requester: Requester,
        mapping: LabMapping,
        pieces: AsyncIterable[bytes],
        idempotency_key: str = "",
    ) -> AsyncIterator[CsvProgress]:
        """The stream form: the file's bytes in pieces cut anywhere; a progress after each
        chunk written (and when issues pile up), the last one once the file is read."""
        reader = LabCsvReader(mapping)

        async def rows() -> AsyncIterator[list[ReadRow]]:
            async for piece in pieces:
                if len(piece) > MAX_PIECE_BYTES:
                    raise InvalidArgument(
                        [FieldViolation("csv", f"at most {MAX_PIECE_BYTES} bytes a message")],
                        reason="CSV_PIECE_TOO_LARGE",
                    )
                yield await asyncio.to_thread(reader.feed, piece)
            yield reader.finish()

        async for progress in self._run(requester, mapping, idempotency_key).progress(
            rows(), reader
        ):
            yield progress


@dataclass(frozen=True)
class _Settled:
    """A chunk written (or an issues-only step): its issues and versions."""

    issues: list[RowIssue]
    written: list[StoredVersion]


@dataclass(frozen=True)
class _Step:
    """What the reader hands the answering side, in file order: a chunk being written
    (``chunk``), issues to report now (neither), or the end (``final``, with the last chunk
    if there is one); ``error`` when reading failed."""

    chunk: asyncio.Task[_Settled] | None = None
    final: bool = False
    error: BaseException | None = None


class _Run:
    """One request: a reader task cuts the rows into chunks and starts each chunk's write
    (at most ``chunks_at_once`` written or waiting to be answered: a client that reads its
    answers slowly holds the reading back), and :meth:`progress` answers them in file order
    as each finishes, whether or not more of the file has come."""

    def __init__(
        self,
        writes: BulkWrites,
        storage: RecordStorage,
        access: AccessChecks,
        chunk_rows: int,
        chunks_at_once: int,
        requester: Requester,
        mapping: LabMapping,
        idempotency_key: str,
    ) -> None:
        self._writes = writes
        self._storage = storage
        self._access = access
        self._chunk_rows = chunk_rows
        self._slots = asyncio.Semaphore(chunks_at_once)
        self._requester = requester
        self._mapping = mapping
        scoped = scoped_key(requester, "csv", idempotency_key) or secrets.token_hex(16)
        self._key_base = "csv-" + hashlib.sha256(scoped.encode()).hexdigest()[:40]
        self._chunks_started = 0
        self._held: list[RowIssue] = []
        self._patients: dict[str, _Patient] = {}
        self._steps: asyncio.Queue[_Step] = asyncio.Queue()
        self._accepted = 0

    async def progress(
        self, batches: AsyncIterator[list[ReadRow]], reader: LabCsvReader
    ) -> AsyncIterator[CsvProgress]:
        """A progress per chunk written and per pile of issues, in file order; the last one
        ``done``. A failed chunk or read ends it with that error, once the chunks already
        started have finished (each is all or nothing)."""
        reading = asyncio.create_task(self._read(batches))
        try:
            while True:
                step = await self._steps.get()
                if step.error is not None:
                    raise step.error
                written: list[StoredVersion] = []
                issues: list[RowIssue] = []
                if step.chunk is not None:
                    try:
                        settled = await step.chunk
                    finally:
                        self._slots.release()
                    written, issues = settled.written, settled.issues
                self._accepted += len(written)
                reported = sorted([*self._held, *issues], key=lambda i: i.row)
                self._held = []
                _count_rejects(reported)
                yield CsvProgress(reader.rows_read, self._accepted, reported, written, step.final)
                if step.final:
                    return
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await self._finish_started()

    async def _finish_started(self) -> None:
        """Lets the chunks already started finish (none is left half done either way)."""
        started = []
        while not self._steps.empty():
            step = self._steps.get_nowait()
            if step.chunk is not None:
                started.append(step.chunk)
        await asyncio.gather(*started, return_exceptions=True)

    async def _read(self, batches: AsyncIterator[list[ReadRow]]) -> None:
        chunk: list[LabRow] = []
        try:
            async for rows in batches:
                for row in rows:
                    if isinstance(row, RejectedRow):
                        self._held += row.issues
                    else:
                        chunk.append(row)
                    if len(chunk) >= self._chunk_rows:
                        await self._start(chunk, final=False)
                        chunk = []
                    elif len(self._held) >= MAX_HELD_ISSUES:
                        self._steps.put_nowait(_Step())
            if chunk:
                await self._start(chunk, final=True)
            else:
                self._steps.put_nowait(_Step(final=True))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - answered in turn, after the chunks before it
            self._steps.put_nowait(_Step(error=error))

    async def _start(self, chunk: list[LabRow], *, final: bool) -> None:
        await self._slots.acquire()
        index = self._chunks_started
        self._chunks_started += 1
        task = asyncio.create_task(self._write_chunk(chunk, index))
        self._steps.put_nowait(_Step(chunk=task, final=final))

    async def _write_chunk(self, chunk: list[LabRow], index: int) -> _Settled:
        digest = _chunk_digest(self._mapping, chunk)
        await self._resolve({row.patient for row in chunk})
        issues: list[RowIssue] = []
        accepted: list[tuple[LabRow, str]] = []
        for row in chunk:
            patient = self._patients[row.patient]
            if patient.refused is not None:
                code, diagnostics = patient.refused
                issues.append(RowIssue(row.row, self._mapping.patient_column, code, diagnostics))
            else:
                accepted.append((row, patient.patient_id))
        writes, invalid = await asyncio.to_thread(self._validated, accepted)
        issues += invalid
        written: list[StoredVersion] = []
        if writes:
            written = await self._writes.write_all(
                self._requester,
                writes,
                idempotency_key=f"{self._key_base}-{index}",
                request_digest=digest,
            )
        return _Settled(issues, written)

    def _validated(
        self, accepted: list[tuple[LabRow, str]]
    ) -> tuple[list[NewResource], list[RowIssue]]:
        """Each row's Observation, checked as every stored resource is (CPU-bound)."""
        ids = self._writes.new_ids(len(accepted))
        writes: list[NewResource] = []
        issues: list[RowIssue] = []
        for (row, patient_id), resource_id in zip(accepted, ids, strict=True):
            try:
                valid = validate_resource(
                    json.dumps(observation(row, patient_id)), expected_type="Observation"
                )
            except ResourceInvalid:  # the checks above admit only valid rows; never a 500
                issues.append(
                    RowIssue(row.row, "", IssueCode.VALUE, "the row makes no valid Observation")
                )
                continue
            writes.append(NewResource(valid, resource_id))
        return writes, issues

    async def _resolve(self, values: set[str]) -> None:
        """Resolves the patients not yet known (at most a few at once)."""
        unknown = sorted(values - self._patients.keys())
        if len(self._patients) + len(unknown) > MAX_REMEMBERED_PATIENTS:
            self._patients = {}
            unknown = sorted(values)
        resolved = await _bounded(self._patient(value) for value in unknown)
        self._patients.update(zip(unknown, resolved, strict=True))

    async def _patient(self, value: str) -> _Patient:
        system = self._mapping.patient_identifier_system
        if system:
            try:
                found = await self._writes.patient_by_identifier(system, value)
            except Aborted as error:
                if error.reason != "AMBIGUOUS_IDENTIFIER":
                    raise
                return _Patient(
                    refused=(
                        IssueCode.MULTIPLE_MATCHES,
                        "more than one Patient has this identifier",
                    )
                )
            if found is None:
                return _Patient(
                    refused=(IssueCode.NOT_FOUND, "no stored Patient has this identifier")
                )
            patient_id = found.ref.resource_id
        else:
            patient_id = value
        try:
            holder = await self._storage.patient_holder(patient_id)
        except NotFound:  # never stored, or erased
            return _Patient(refused=(IssueCode.NOT_FOUND, "names no stored Patient"))
        verdict = await self._access.check(
            AccessQuery(self._requester, patient_id, holder, "Observation", Action.WRITE)
        )
        if not verdict.permitted:
            return _Patient(
                refused=(
                    IssueCode.FORBIDDEN,
                    f"the caller may not write this patient's Observations ({verdict.reason})",
                )
            )
        return _Patient(patient_id)


def _count_rejects(issues: Sequence[RowIssue]) -> None:
    """Counts each refused row once (medledger.ingest.rejects, source csv) under its first
    issue's type (``code-invalid`` → ``CODE_INVALID``)."""
    first: dict[int, IssueCode] = {}
    for issue in issues:
        first.setdefault(issue.row, issue.code)
    for code, count in Counter(first.values()).items():
        ingest_rejected("csv", code.name, count)


def _chunk_digest(mapping: LabMapping, chunk: Sequence[LabRow]) -> bytes:
    """A digest of the rows a chunk was cut from, as read (before patients are resolved)."""
    rows = [
        [r.row, r.patient, r.code, repr(r.value), r.comparator, r.unit, r.effective] for r in chunk
    ]
    text = json.dumps([mapping.patient_identifier_system, rows], separators=(",", ":"))
    return hashlib.sha256(_DIGEST_LABEL + text.encode("utf-8", "surrogatepass")).digest()


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    limit = asyncio.Semaphore(PATIENT_LOOKUPS_AT_ONCE)

    async def one(call: Awaitable[T]) -> T:
        async with limit:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
