"""IngestHl7V2: one HL7 v2 message in, its FHIR resources stored atomically (one ledger step).

- ADT^A01 / ADT^A04: the Patient named by PID-3 is created unless a stored Patient has one
  of its identifiers; an Encounter (PV1) is created for it.
- ADT^A08: the stored Patient is updated (identifiers, name, birth date, sex, address,
  phone from PID; everything else it holds is kept). An unknown patient is an error.
- ORU^R01: per OBR a DiagnosticReport whose results are the Observations of its OBX
  segments; the patient must be stored.

A message with any error writes nothing (the issues say where). A retry with the same key
(default: derived from the sending application and facility and MSH-10, so an interface
engine's resend is recognised) returns the first result and writes nothing new; the same
key with another message is ABORTED (IDEMPOTENCY_KEY_REUSED), as for single writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medledger.common.errors import Aborted
from medledger.common.metrics import ingest_rejected
from medledger.record.domain.bulk_writes import BulkWrite, BulkWrites, ChangedResource, NewResource
from medledger.record.domain.fhir_validation import validate_resource
from medledger.record.domain.hl7_v2 import Hl7Issue, Hl7Message, normalise_segments, parse_message
from medledger.record.domain.peers import Requester
from medledger.record.domain.ports import StoredVersion
from medledger.record.domain.resource_issues import ResourceInvalid

# Patient elements an A08 replaces; all others of the stored Patient are kept.
_DEMOGRAPHICS = ("name", "birthDate", "gender", "address", "telecom")


@dataclass(frozen=True)
class Hl7Outcome:
    message_type: str
    issues: Sequence[Hl7Issue]
    written: Sequence[StoredVersion]  # empty when refused


def default_key(message: Hl7Message) -> str:
    """The idempotency key of a message: its sender and control id (MSH-3, MSH-4, MSH-10),
    digested (control ids may hold any character)."""
    sender = json.dumps(
        [message.sending_application, message.sending_facility, message.control_id]
    ).encode()
    return "hl7-" + hashlib.sha256(sender).hexdigest()[:48]


def _refused(message: Hl7Message, *issues: Hl7Issue) -> Hl7Outcome:
    """The outcome of a refused message, counted as an ingest reject (medledger.ingest.rejects)
    under its first error's FHIR issue-type code (``code-invalid`` → ``CODE_INVALID``)."""
    found = [*message.issues, *issues]
    errors = [i.code for i in found if i.severity in {"error", "fatal"}]
    reason = re.sub(r"[^A-Z0-9]+", "_", (errors[0] if errors else "invalid").upper()).strip("_")
    ingest_rejected("hl7", reason if re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", reason) else "INVALID")
    return Hl7Outcome(message.message_type, found, [])


def _reference(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id}"}


class Hl7Ingestion:
    def __init__(self, writes: BulkWrites) -> None:
        self._writes = writes

    async def ingest(
        self, requester: Requester, text: str, idempotency_key: str = ""
    ) -> Hl7Outcome:
        message = await asyncio.to_thread(parse_message, text)
        if message.refused:
            return _refused(message)
        key = idempotency_key or default_key(message)
        digest = hashlib.sha256(normalise_segments(text).encode("utf-8", "surrogatepass")).digest()
        first = await self._writes.replay(requester, key, digest)
        if first is not None:
            return Hl7Outcome(message.message_type, message.issues, first)
        try:
            found = await self._stored_patient(message)
        except Aborted as error:
            if error.reason != "AMBIGUOUS_IDENTIFIER":
                raise
            return _refused(
                message,
                Hl7Issue(
                    "error",
                    "multiple-matches",
                    "PID-3",
                    "more than one stored Patient has this identifier",
                ),
            )
        event = message.message_type.split("^")[1]
        if found is None and event in {"A08", "R01"}:
            return _refused(
                message,
                Hl7Issue(
                    "error",
                    "not-found",
                    "PID-3",
                    "names no stored Patient (send an A01 or A04 first)",
                ),
            )
        planned = self._plan(message, event, found)
        writes: list[BulkWrite] = []
        problems: list[Hl7Issue] = []
        for location, make in planned:
            try:
                writes.append(await asyncio.to_thread(make))
            except ResourceInvalid as error:
                problems += [
                    Hl7Issue(
                        "error",
                        issue.code,
                        location,
                        f"as FHIR {issue.location}: {issue.diagnostics}",
                    )
                    for issue in error.issues
                ]
        if problems:
            return _refused(message, *problems)
        written = await self._writes.write_unreplayed(
            requester, writes, idempotency_key=key, request_digest=digest
        )
        return Hl7Outcome(message.message_type, message.issues, written)

    async def _stored_patient(self, message: Hl7Message) -> StoredVersion | None:
        assert message.patient is not None  # not refused: PID was read
        for identifier in message.patient.identifiers:
            found = await self._writes.patient_by_identifier(identifier.system, identifier.value)
            if found is not None:
                return found
        return None

    def _plan(
        self, message: Hl7Message, event: str, found: StoredVersion | None
    ) -> list[tuple[str, Callable[[], BulkWrite]]]:
        """(HL7 location, a callable validating one write) for each resource to store."""
        assert message.patient is not None
        plan: list[tuple[str, Callable[[], BulkWrite]]] = []
        if found is None:
            patient_id = self._writes.new_ids(1)[0]
            patient_json = json.dumps(message.patient.resource)
            plan.append(("PID", _new(patient_json, patient_id)))
        else:
            patient_id = found.ref.resource_id
            if event == "A08":
                merged = _merged_patient(found, message.patient.resource)
                plan.append(("PID", _changed(merged, found.ref.version)))
        subject = _reference("Patient", patient_id)
        if message.encounter is not None:
            encounter = json.dumps({**message.encounter, "subject": subject})
            encounter_id = self._writes.new_ids(1)[0]
            plan.append(("PV1", _new(encounter, encounter_id)))
        for order in message.orders:
            ids = self._writes.new_ids(len(order.observations) + 1)
            for (location, observation), observation_id in zip(
                order.observations, ids, strict=False
            ):
                body = json.dumps({**observation, "subject": subject})
                plan.append((location, _new(body, observation_id)))
            report = {
                **order.report,
                "subject": subject,
                "result": [_reference("Observation", i) for i in ids[:-1]],
            }
            plan.append((order.location, _new(json.dumps(report), ids[-1])))
        return plan


def _new(body: str, resource_id: str) -> Callable[[], BulkWrite]:
    return lambda: NewResource(validate_resource(body), resource_id)


def _changed(body: str, expected_version: int) -> Callable[[], BulkWrite]:
    return lambda: ChangedResource(validate_resource(body), expected_version)


def _merged_patient(found: StoredVersion, update: dict[str, Any]) -> str:
    """The stored Patient with the message's demographics and identifiers (others kept)."""
    stored = json.loads(found.resource_json)
    merged = {k: v for k, v in stored.items() if k not in {"meta", "text"}}
    for element in _DEMOGRAPHICS:
        if element in update:
            merged[element] = update[element]
    identifiers = list(stored.get("identifier", []))
    known = {(i.get("system"), i.get("value")) for i in identifiers if isinstance(i, dict)}
    identifiers += [
        i for i in update.get("identifier", []) if (i.get("system"), i.get("value")) not in known
    ]
    if identifiers:
        merged["identifier"] = identifiers
    return json.dumps(merged)
