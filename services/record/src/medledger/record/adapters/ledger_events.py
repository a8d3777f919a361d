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
cost a few round trips, and a lone one goes at once. A bulk write's entries (an HL7 message, a
CSV chunk, a transaction Bundle) stay together in one step, joined by other bulk writes' that
arrive meanwhile. Each entry keeps its own caller's trace id and time, and a write's its
idempotency key and salt (the ledger answers a key it holds with its first receipt, within a
batch too). A batch the ledger refuses for a reason other than being unavailable (a patient
erased meanwhile, a key reused) is appended again one entry (or one bulk write) at a time, so
each call gets its own answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Final

import grpc

from medledger.common.batching import Batcher
from medledger.common.errors import Aborted, MedledgerError, Unavailable
from medledger.common.ledger_client import LedgerEvent
from medledger.common.paging import Page
from medledger.common.patient_log import PatientAppend, PatientLog
from medledger.common.telemetry import current_trace_id
from medledger.record.domain.peers import LoggedEntry, RecordEvent


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


def _one_entrys_trouble(error: Exception) -> bool:
    """A refusal that is not an outage (a patient erased meanwhile, a key reused) may be one
    entry's: the batch's entries are appended again one at a time."""
    return isinstance(error, MedledgerError) and not isinstance(error, Unavailable)


# The ledger's AppendBatch takes at most this many entries.
MAX_APPEND_BATCH: Final = 1000


def _fixed_now(item: PatientAppend) -> PatientAppend:
    """The item's trace id and time fixed in the caller's context (a batch is appended from
    another task)."""
    return dataclasses.replace(
        item,
        trace_id=item.trace_id or current_trace_id(),
        entry_time=item.entry_time or datetime.now(UTC),
    )


def _once_per_key(items: Sequence[PatientAppend]) -> tuple[list[PatientAppend], list[int]]:
    """The items to append, each idempotency key once, and where each item's receipt is
    among theirs. The same entry can come twice in one batch: a write and a resend of it
    finishing it concurrently (the ledger refuses a batch repeating a key). A key that
    comes with another entry fails the batch, whose entries then go one at a time (the
    ledger answers that one)."""
    sent: list[PatientAppend] = []
    where: list[int] = []
    first: dict[str, int] = {}
    for item in items:
        key = item.idempotency_key
        if key and key in first:
            if sent[first[key]] != item:
                raise Aborted(
                    "a concurrent change was recorded first; retry", reason="CONCURRENT_CHANGE"
                )
            where.append(first[key])
            continue
        if key:
            first[key] = len(sent)
        where.append(len(sent))
        sent.append(item)
    return sent, where


class PatientLogLedger:
    def __init__(self, patients: PatientLog, *, timeout: float = 10.0) -> None:
        self._patients = patients
        self._timeout = timeout
        self._batches: Batcher[PatientAppend, bytes] = Batcher(
            self._append_batch,
            self._append_single,
            alone=_one_entrys_trouble,
            dependency="ledger",
        )
        # Bulk writes' entries: each request's in one step, never split; concurrent requests'
        # together in one AppendBatch.
        self._groups: Batcher[list[PatientAppend], list[bytes]] = Batcher(
            self._append_groups,
            self._append_group,
            alone=_one_entrys_trouble,
            dependency="ledger",
            max_batch=MAX_APPEND_BATCH,
            size=len,
        )

    async def append(
        self, patient_id: str, event: RecordEvent, *, idempotency_key: str = ""
    ) -> bytes:
        return await self._batches.submit(
            _fixed_now(_patient_append(patient_id, event, idempotency_key))
        )

    async def append_many(self, events: Sequence[tuple[str, RecordEvent, str]]) -> list[bytes]:
        items = [_fixed_now(_patient_append(*each)) for each in events]
        if len(items) == 1:
            return [await self._append_single(items[0])]
        return await self._groups.submit(items)

    async def _append_group(self, items: list[PatientAppend]) -> list[bytes]:
        return await self._append_batch(items, timeout=self._timeout * 3)

    async def _append_groups(self, groups: list[list[PatientAppend]]) -> list[list[bytes]]:
        receipts = await self._append_group([item for group in groups for item in group])
        answers, start = [], 0
        for group in groups:
            answers.append(receipts[start : start + len(group)])
            start += len(group)
        return answers

    async def _append_batch(
        self, items: list[PatientAppend], *, timeout: float | None = None
    ) -> list[bytes]:
        sent, where = _once_per_key(items)
        with _unavailable_when_refused():
            receipts = await self._patients.append_many(sent, timeout=timeout or self._timeout)
        return [receipts[i].SerializeToString() for i in where]

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
