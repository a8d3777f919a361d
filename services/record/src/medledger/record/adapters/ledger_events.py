"""The record's ledger entries (the ``RecordLedger`` port), through the patient log: each
entry about a patient is blinded with its own salt (subject, resource id and version, and
the actor when the patient acts) and indexed first, sealed, under the patient in the record's
database (``record_patient_keys``/``record_patient_leaves``, data keys wrapped by
``record-patient-kek``), the subject keyed by the patient's scan secret, kept in the same key
row. Ids and salted commitments only: never PHI.

Whatever keeps the entry from being appended (the ledger down, or refusing this service's
credentials) is UNAVAILABLE: the caller's write or read fails closed.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import MedledgerError, Unavailable
from medledger.common.ledger_client import LedgerEvent
from medledger.common.paging import Page
from medledger.common.patient_log import PatientAppend, PatientLog
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


class PatientLogLedger:
    def __init__(self, patients: PatientLog, *, timeout: float = 10.0) -> None:
        self._patients = patients
        self._timeout = timeout

    async def append(
        self, patient_id: str, event: RecordEvent, *, idempotency_key: str = ""
    ) -> bytes:
        (receipt,) = await self.append_many([(patient_id, event, idempotency_key)])
        return receipt

    async def append_many(self, events: Sequence[tuple[str, RecordEvent, str]]) -> list[bytes]:
        items = [_patient_append(*each) for each in events]
        try:
            if len(items) == 1:
                receipts = [await self._append_one(items[0])]
            else:
                receipts = await self._patients.append_many(items, timeout=self._timeout * 3)
        except MedledgerError as error:
            if error.code is grpc.StatusCode.INTERNAL:  # refused: no answer a client can use
                raise Unavailable("ledger", reason=error.reason) from error
            raise
        return [r.SerializeToString() for r in receipts]

    async def _append_one(self, item: PatientAppend) -> ledger_pb2.Receipt:
        return await self._patients.append(
            item.patient_id,
            item.event,
            patient_actor=item.patient_actor,
            idempotency_key=item.idempotency_key,
            timeout=self._timeout,
            salt=item.salt,
            entry_time=item.entry_time,
            trace_id=item.trace_id,
        )

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
