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
from dataclasses import dataclass, field
from typing import Any, Final

from medledger.common.errors import (
    Aborted,
    FailedPrecondition,
    MedledgerError,
    NotFound,
    PermissionDenied,
)
from medledger.common.metrics import ingest_rejected
from medledger.record.domain.bulk_writes import (
    MAX_BULK_WRITES,
    BulkRequest,
    BulkWrite,
    BulkWrites,
    ChangedResource,
    NewResource,
)
from medledger.record.domain.fhir_validation import validate_resource
from medledger.record.domain.hl7_batch import split_batch
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
    control_id: str = ""  # MSH-10, when it could be read


@dataclass(frozen=True)
class Hl7BatchOutcome:
    issues: Sequence[Hl7Issue]  # the batch's envelope (nothing written when any blocks)
    messages: Sequence[Hl7Outcome]  # each message's, in file order


def default_key(message: Hl7Message) -> str:
    """The idempotency key of a message: its sender and control id (MSH-3, MSH-4, MSH-10),
    digested (control ids may hold any character)."""
    sender = json.dumps(
        [message.sending_application, message.sending_facility, message.control_id]
    ).encode()
    return "hl7-" + hashlib.sha256(sender).hexdigest()[:48]


def _refused(message: Hl7Message, *issues: Hl7Issue) -> Hl7Outcome:
    """The outcome of a refused message, counted as an ingest reject."""
    found = [*message.issues, *issues]
    _count_refusal(found)
    return Hl7Outcome(message.message_type, found, [], message.control_id)


def _count_refusal(issues: Sequence[Hl7Issue]) -> None:
    """Counts a refused message or batch as an ingest reject (medledger.ingest.rejects)
    under its first error's FHIR issue-type code (``code-invalid`` → ``CODE_INVALID``)."""
    errors = [i.code for i in issues if i.severity in {"error", "fatal"}]
    reason = re.sub(r"[^A-Z0-9]+", "_", (errors[0] if errors else "invalid").upper()).strip("_")
    ingest_rejected("hl7", reason if re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", reason) else "INVALID")


def _outcome(message: Hl7Message, written: Sequence[StoredVersion]) -> Hl7Outcome:
    return Hl7Outcome(message.message_type, message.issues, written, message.control_id)


def _digest(text: str) -> bytes:
    """The message as the sender meant it (segment separators aside)."""
    return hashlib.sha256(normalise_segments(text).encode("utf-8", "surrogatepass")).digest()


# A message's own refusals, reported as its issue in a batch (an outage fails the call).
_ONE_MESSAGES: Final = (Aborted, FailedPrecondition, NotFound, PermissionDenied)


def _issue_of(error: MedledgerError) -> Hl7Issue:
    """One message's refusal in a batch as an issue: what a single IngestHl7V2 would
    have answered as its status (never a value of the message)."""
    if isinstance(error, PermissionDenied):
        return Hl7Issue("error", "forbidden", "MSH", f"{error.message} ({error.reason})")
    if error.reason == "IDEMPOTENCY_KEY_REUSED":
        return Hl7Issue(
            "error",
            "duplicate",
            "MSH-10",
            "this sender sent another message under this control id before",
        )
    code = "not-found" if isinstance(error, NotFound) else "conflict"
    return Hl7Issue("error", code, "MSH", f"{error.message} ({error.reason})")


def _identifiers(message: Hl7Message) -> set[tuple[str, str]]:
    assert message.patient is not None  # not refused: PID was read
    return {(i.system, i.value) for i in message.patient.identifiers}


def _is_adt(message: Hl7Message) -> bool:
    return message.message_type.startswith("ADT")


@dataclass
class _Step:
    """The messages of a batch to write in one ledger step (by their place in the batch),
    and the stored Patients found by identifier so far (forgotten once a step with an ADT
    message, which may change them, is written)."""

    known: dict[tuple[str, str], StoredVersion] = field(default_factory=dict)
    entries: list[tuple[int, Hl7Message, BulkRequest]] = field(default_factory=list)

    @property
    def resources(self) -> int:
        return sum(len(request.writes) for _, _, request in self.entries)

    @property
    def has_adt(self) -> bool:
        return any(_is_adt(message) for _, message, _ in self.entries)

    def builds_on(self, key: str, message: Hl7Message) -> bool:
        """Whether ``message`` must see this step stored first: its control id is one of
        the step's, or its patient is one an ADT message of the step admits or updates (for
        an ADT message: any message of the step is about)."""
        if any(request.idempotency_key == key for _, _, request in self.entries):
            return True
        others = [m for _, m, _ in self.entries if _is_adt(message) or _is_adt(m)]
        return any(_identifiers(message) & _identifiers(m) for m in others)


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
        digest = _digest(text)
        first = await self._writes.replay(requester, key, digest)
        if first is not None:
            return _outcome(message, first)
        planned = await self._writes_of(message)
        if isinstance(planned, Hl7Outcome):
            return planned
        written = await self._writes.write_unreplayed(
            requester, planned, idempotency_key=key, request_digest=digest
        )
        return _outcome(message, written)

    async def ingest_batch(self, requester: Requester, text: str) -> Hl7BatchOutcome:
        """Every message of an HL7 batch (:mod:`.hl7_batch`), each atomic and idempotent
        under its own key as if sent alone, in file order; the messages that are ready are
        written together, up to :data:`MAX_BULK_WRITES` resources in one ledger step. A
        message that builds on one before it in the same step (its patient admitted or
        updated there, or the same control id resent) starts the next step, so each is
        planned against what is stored. A message refused (its issues, CheckAccess, a
        control id reused for another message) does not stop the others. A step that fails
        (the ledger or storage not answering) fails the call: the steps before it are
        written, and sending the batch again writes only what is missing."""
        batch = await asyncio.to_thread(split_batch, text)
        if batch.refused:
            _count_refusal(batch.issues)
            return Hl7BatchOutcome(batch.issues, [])
        texts = batch.messages
        messages = await asyncio.to_thread(lambda: [parse_message(t) for t in texts])
        results: list[Hl7Outcome | None] = [None] * len(messages)
        step = _Step()
        for number, (message_text, message) in enumerate(zip(texts, messages, strict=True)):
            if message.refused:
                results[number] = _refused(message)
                continue
            key, digest = default_key(message), _digest(message_text)
            if step.builds_on(key, message):
                await self._write_step(requester, step, results)
            try:
                first = await self._writes.replay(requester, key, digest)
            except _ONE_MESSAGES as error:
                results[number] = _refused(message, _issue_of(error))
                continue
            if first is not None:
                results[number] = _outcome(message, first)
                continue
            planned = await self._writes_of(message, step.known)
            if isinstance(planned, Hl7Outcome):
                results[number] = planned
                continue
            if step.resources + len(planned) > MAX_BULK_WRITES:
                await self._write_step(requester, step, results)
            step.entries.append((number, message, BulkRequest(planned, key, digest)))
        await self._write_step(requester, step, results)
        return Hl7BatchOutcome(batch.issues, [r for r in results if r is not None])

    async def _write_step(
        self, requester: Requester, step: _Step, results: list[Hl7Outcome | None]
    ) -> None:
        if not step.entries:
            return
        outcomes = await self._writes.write_requests(requester, [r for _, _, r in step.entries])
        for (number, message, _), outcome in zip(step.entries, outcomes, strict=True):
            if isinstance(outcome, MedledgerError):
                results[number] = _refused(message, _issue_of(outcome))
            else:
                results[number] = _outcome(message, outcome)
        if step.has_adt:
            step.known.clear()
        step.entries.clear()

    async def _writes_of(
        self, message: Hl7Message, known: dict[tuple[str, str], StoredVersion] | None = None
    ) -> list[BulkWrite] | Hl7Outcome:
        """The message's writes, validated, planned against what is stored (and ``known``,
        see :meth:`_stored_patient`); or its refusal (no stored patient where one is needed,
        a resource FHIR refuses)."""
        try:
            found = await self._stored_patient(message, known)
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
        return writes

    async def _stored_patient(
        self, message: Hl7Message, known: dict[tuple[str, str], StoredVersion] | None = None
    ) -> StoredVersion | None:
        """The stored Patient one of the message's identifiers names; ``known`` keeps those
        found for the messages of a batch (a patient's messages look it up once)."""
        assert message.patient is not None  # not refused: PID was read
        known = {} if known is None else known
        for identifier in message.patient.identifiers:
            pair = (identifier.system, identifier.value)
            found = known.get(pair) or await self._writes.patient_by_identifier(*pair)
            if found is not None:
                known[pair] = found
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
