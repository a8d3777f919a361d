"""The record's ledger entries (the ``RecordLedger`` port), through the patient log: each
entry about a patient is blinded with its own salt (subject, resource id and version, and
the actor when the patient acts) and indexed first, sealed, under the patient in the record's
database (``record_patient_keys``/``record_patient_leaves``, data keys wrapped by
``record-patient-kek``), the subject keyed by the patient's scan secret, kept in the same key
row. Ids and salted commitments only: never PHI.

Whatever keeps the entry from being appended (the ledger down, or refusing this service's
credentials) is UNAVAILABLE: the caller's write or read fails closed.

Concurrent calls' entries are appended together: an entry that arrives while a batch is
being appended waits for it, then goes with every entry that came meanwhile in ONE step (their
index rows in one insert and one update, one AppendBatch), so many concurrent reads and writes
cost a few round trips, and a lone one goes at once. Each entry keeps its own caller's trace
id and time, and a write's its idempotency key and salt (the ledger answers a key it holds
with its first receipt, within a batch too). A batch the ledger refuses for a reason other
than being unavailable (a patient erased meanwhile, a key reused) is appended again one entry
at a time, so each call gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Final

import grpc

from medledger.common.errors import MedledgerError, Unavailable
from medledger.common.ledger_client import LedgerEvent
from medledger.common.paging import Page
from medledger.common.patient_log import PatientAppend, PatientLog
from medledger.common.telemetry import current_trace_id
from medledger.record.domain.peers import LoggedEntry, RecordEvent

# Entries appended in one step at most (one AppendBatch, one insert of their index rows).
MAX_BATCH: Final = 256


def _patient_append(patient_id: str, event: RecordEvent, idempotency_key: str) -> PatientAppend:
    return PatientAppend(
        patient_id=patient_id,
        event=LedgerEvent(
            kind=event.kind,
            actor=event.actor,
            organization=event.organization,
            resource_type=event.resource_type,
            resource_id=event.resource_id,
            resource_version=event.resource_version,
            content_commitment=event.content_commitment,
            purpose=event.purpose,
        ),
        patient_actor=event.patient_actor,
        idempotency_key=idempotency_key,
        salt=event.blinding_salt,
        entry_time=event.time,
        trace_id=event.trace_id,
    )


@contextlib.contextmanager
def _unavailable_when_refused() -> Iterator[None]:
    try:
        yield
    except MedledgerError as error:
        if error.code is grpc.StatusCode.INTERNAL:  # refused: no answer a client can use
            raise Unavailable("ledger", reason=error.reason) from error
        raise


class _Batcher:
    """Items submitted while a batch is in flight go together in the next one; a lone item
    goes at once (no waiting for company)."""

    def __init__(
        self,
        flush: Callable[[list[PatientAppend]], Awaitable[list[bytes]]],
        single: Callable[[PatientAppend], Awaitable[bytes]],
    ) -> None:
        self._flush = flush
        self._single = single
        self._waiting: list[tuple[PatientAppend, asyncio.Future[bytes]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, item: PatientAppend) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drain is None:
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                await self._settle(batch)
        finally:
            self._drain = None
            for _, future in self._waiting:  # only if this task was cancelled (shutdown)
                if not future.done():
                    future.set_exception(Unavailable("ledger", reason="SHUTTING_DOWN"))

    async def _settle(self, batch: list[tuple[PatientAppend, asyncio.Future[bytes]]]) -> None:
        try:
            await self._append(batch)
        except asyncio.CancelledError:  # shutting down: nobody waits forever
            for _, future in batch:
                _fail(future, Unavailable("ledger", reason="SHUTTING_DOWN"))
            raise

    async def _append(self, batch: list[tuple[PatientAppend, asyncio.Future[bytes]]]) -> None:
        items = [item for item, _ in batch]
        try:
            receipts = await (self._flush(items) if len(items) > 1 else self._one(items[0]))
        except Exception as error:  # noqa: BLE001 - each waiting caller gets an answer
            if isinstance(error, Unavailable) or not isinstance(error, MedledgerError):
                for _, future in batch:
                    _fail(future, error)
                return
            # One entry's trouble (its patient erased meanwhile) must not fail the others.
            for item, future in batch:
                try:
                    _succeed(future, await self._single(item))
                except Exception as single_error:  # noqa: BLE001 - that caller's answer
                    _fail(future, single_error)
            return
        for (_, future), receipt in zip(batch, receipts, strict=True):
            _succeed(future, receipt)

    async def _one(self, item: PatientAppend) -> list[bytes]:
        return [await self._single(item)]


def _succeed(future: asyncio.Future[bytes], receipt: bytes) -> None:
    if not future.done():
        future.set_result(receipt)


def _fail(future: asyncio.Future[bytes], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class PatientLogLedger:
    def __init__(self, patients: PatientLog, *, timeout: float = 10.0) -> None:
        self._patients = patients
        self._timeout = timeout
        self._batches = _Batcher(self._append_batch, self._append_single)

    async def append(
        self, patient_id: str, event: RecordEvent, *, idempotency_key: str = ""
    ) -> bytes:
        item = _patient_append(patient_id, event, idempotency_key)
        # Fixed now, in the caller's context: the batch is appended from another task.
        item = dataclasses.replace(
            item,
            trace_id=item.trace_id or current_trace_id(),
            entry_time=item.entry_time or datetime.now(UTC),
        )
        return await self._batches.submit(item)

    async def append_many(self, events: Sequence[tuple[str, RecordEvent, str]]) -> list[bytes]:
        items = [_patient_append(*each) for each in events]
        if len(items) == 1:
            return [await self._append_single(items[0])]
        return await self._append_batch(items, timeout=self._timeout * 3)

    async def _append_batch(
        self, items: list[PatientAppend], *, timeout: float | None = None
    ) -> list[bytes]:
        with _unavailable_when_refused():
            receipts = await self._patients.append_many(items, timeout=timeout or self._timeout)
        return [r.SerializeToString() for r in receipts]

    async def _append_single(self, item: PatientAppend) -> bytes:
        with _unavailable_when_refused():
            receipt = await self._patients.append(
                item.patient_id,
                item.event,
                patient_actor=item.patient_actor,
                idempotency_key=item.idempotency_key,
                timeout=self._timeout,
                salt=item.salt,
                entry_time=item.entry_time,
                trace_id=item.trace_id,
            )
        return receipt.SerializeToString()

    async def logged(
        self, patient_id: str, *, page_size: int, page_token: str
    ) -> Page[LoggedEntry]:
        found = await self._patients.leaves(
            patient_id, requested_size=page_size, page_token=page_token
        )
        return Page(
            [
                LoggedEntry(
                    leaf_hash=leaf.leaf_hash,
                    leaf_index=leaf.leaf_index,
                    salt=leaf.opening.salt,
                    pseudonym=leaf.opening.pseudonym,
                    resource_type=leaf.opening.resource_type,
                    resource_id=leaf.opening.resource_id,
                    resource_version=leaf.opening.resource_version,
                    patient_actor=leaf.opening.patient_actor,
                    subject_salt=leaf.opening.subject_salt(),
                )
                for leaf in found.items
            ],
            found.next_page_token,
        )

    async def new_scan_secret(self, patient_id: str) -> bytes:
        return await self._patients.new_scan_secret(patient_id)

    async def scan_key(self, patient_id: str) -> bytes | None:
        return await self._patients.scan_key(patient_id)

    async def forget(self, patient_id: str) -> int:
        return await self._patients.erase(patient_id)
