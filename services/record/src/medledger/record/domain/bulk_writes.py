"""Bulk writes: the resources of one request (an HL7 v2 message, a chunk of CSV rows) stored
in ONE durable ledger step, all or none.

Each write goes the way a single create or update goes (CheckAccess for its patient and
type, a pending version sealed under the patient's key, a RECORD_CREATED or RECORD_UPDATED
entry, the commit with its receipt), except that every version is prepared first and all
entries are appended together (ledger AppendBatch). If the ledger refuses or does not
answer, nothing is visible.

Idempotency works per request, not per resource, because planning a request depends on
what is stored (an ADT message creates its Patient only when no Patient has the identifier;
a retry would find the one the first attempt created and plan differently). So once an
attempt has prepared all its versions it records itself (key, keyed request fingerprint,
attempt id, count): a retry with the same key finishes exactly that attempt's versions
(committed ones are returned as they are, pending ones appended again with the same
entries, then committed) and plans nothing. An attempt that stopped before recording
itself left only pending versions nobody sees; they expire and are swept, and the retry
plans afresh.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from medledger.common.errors import (
    Aborted,
    FailedPrecondition,
    MedledgerError,
    NotFound,
    PermissionDenied,
)
from medledger.common.telemetry import current_trace_id
from medledger.record.domain.fhir_validation import ValidResource
from medledger.record.domain.peers import (
    AccessChecks,
    AccessQuery,
    AccessVerdict,
    Action,
    PatientDirectory,
    RecordLedger,
    Requester,
)
from medledger.record.domain.ports import (
    BatchAttempt,
    PendingWrite,
    RecordStorage,
    ResourceWrite,
    StoredVersion,
    first_attempt,
)
from medledger.record.domain.resources import (
    denied,
    ledger_idempotency_key,
    request_fingerprint,
    scoped_key,
    stored_document,
    write_event,
)
from medledger.record.domain.search_params import parse_search

# One ledger AppendBatch carries at most this many entries.
MAX_BULK_WRITES: Final = 1000


@dataclass(frozen=True)
class NewResource:
    """A resource to create under ``resource_id`` (from :meth:`BulkWrites.new_ids`, so that
    resources of the same request can name each other)."""

    valid: ValidResource
    resource_id: str


@dataclass(frozen=True)
class ChangedResource:
    """The next version of a stored resource (``valid.id``), if ``expected_version`` is
    still its latest."""

    valid: ValidResource
    expected_version: int


BulkWrite = NewResource | ChangedResource


@dataclass(frozen=True)
class BulkRequest:
    """One request's writes (all or none) and its idempotency: the caller's key and a
    digest of the request as the client sent it."""

    writes: Sequence[BulkWrite]
    idempotency_key: str = ""
    request_digest: bytes = b""


@dataclass(frozen=True)
class _Planned:
    write: BulkWrite
    resource_id: str
    patient_id: str
    holder: str


def _now() -> datetime:
    return datetime.now(UTC)


class BulkWrites:
    def __init__(
        self,
        storage: RecordStorage,
        access: AccessChecks,
        ledger: RecordLedger,
        *,
        directory: PatientDirectory,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._storage = storage
        self._access = access
        self._ledger = ledger
        self._directory = directory
        self._clock = clock

    @staticmethod
    def new_ids(count: int) -> list[str]:
        return [str(uuid.uuid4()) for _ in range(count)]

    async def patient_by_identifier(self, system: str, value: str) -> StoredVersion | None:
        """The latest version of the one Patient with this identifier; None when there is
        none; FAILED_PRECONDITION (AMBIGUOUS_IDENTIFIER) when several share it. A lookup
        for a write: the write that follows is checked and ledgered, not the lookup."""
        params = parse_search("Patient", {"identifier": f"{system}|{value}"})
        page = await self._storage.search("Patient", params, page_size=2, page_token="")
        if len(page.items) > 1:
            raise Aborted(
                "more than one Patient has this identifier", reason="AMBIGUOUS_IDENTIFIER"
            )
        return page.items[0] if page.items else None

    async def write_all(
        self,
        requester: Requester,
        writes: Sequence[BulkWrite],
        *,
        idempotency_key: str = "",
        request_digest: bytes = b"",
        members_checked: bool = False,
    ) -> list[StoredVersion]:
        """Stores every write, all or none, in one ledger step; the stored versions in
        order. With ``idempotency_key``, a retry (same key, same ``request_digest``: a
        digest of the request as the client sent it) returns the first attempt's versions.
        Writes with compartment members (a Provenance's other targets) only when the caller
        checked them (``members_checked``): they may lie in this very request."""
        if (first := await self.replay(requester, idempotency_key, request_digest)) is not None:
            return first
        return await self.write_unreplayed(
            requester,
            writes,
            idempotency_key=idempotency_key,
            request_digest=request_digest,
            members_checked=members_checked,
        )

    async def write_unreplayed(
        self,
        requester: Requester,
        writes: Sequence[BulkWrite],
        *,
        idempotency_key: str = "",
        request_digest: bytes = b"",
        members_checked: bool = False,
    ) -> list[StoredVersion]:
        """:meth:`write_all` for a caller that asked :meth:`replay` already (and got None):
        the first attempt is not looked up again. A concurrent attempt with the same key is
        still found (its versions are returned, as they are recorded first)."""
        (outcome,) = await self.write_requests(
            requester,
            [BulkRequest(writes, idempotency_key, request_digest)],
            members_checked=members_checked,
        )
        if isinstance(outcome, MedledgerError):
            raise outcome
        return outcome

    async def write_requests(
        self,
        requester: Requester,
        requests: Sequence[BulkRequest],
        *,
        members_checked: bool = False,
    ) -> list[list[StoredVersion] | MedledgerError]:
        """Several requests (the messages of an HL7 batch) stored in ONE ledger step and
        one commit, each all or none, each under its own idempotency key (a retry of any one
        of them alone finds exactly its versions). Callers asked :meth:`replay` for each.
        A request that may not be written (CheckAccess denies it, its patient is gone) gets
        its error in its place and the others are written; a failure of the step itself
        (the ledger or storage not answering, a concurrent write) raises, and then no
        request of the step is visible."""
        total = sum(len(r.writes) for r in requests)
        if not requests or any(not r.writes for r in requests) or total > MAX_BULK_WRITES:
            raise ValueError(f"a bulk write holds 1 to {MAX_BULK_WRITES} resources")
        keys = [_request_key(requester, r.idempotency_key, r.request_digest) for r in requests]
        outcomes: list[list[StoredVersion] | MedledgerError | None] = [None] * len(requests)
        holders: dict[str, str] = {}
        plans: dict[int, list[_Planned]] = {}
        for number, request in enumerate(requests):
            try:
                plans[number] = await self._plan(
                    requester, request.writes, members_checked=members_checked, holders=holders
                )
            except (NotFound, PermissionDenied, FailedPrecondition) as error:
                outcomes[number] = error
        verdicts = await self._checked(requester, plans, outcomes)
        if not plans:
            return [o for o in outcomes if o is not None]
        await self._register_new_patients([p for planned in plans.values() for p in planned])
        pending, resumed = await self._prepare_requests(plans, keys)
        ordered = sorted(pending)
        if ordered:
            stored = await self._ledger_and_commit(
                requester,
                verdicts,
                [p for number in ordered for p in pending[number]],
                drop=[p for number in ordered if not keys[number][0] for p in pending[number]],
            )
            start = 0
            for number in ordered:
                outcomes[number] = stored[start : start + len(pending[number])]
                start += len(pending[number])
        for number, recorded in resumed.items():
            key, fingerprint = keys[number]
            outcomes[number] = await self._resume(
                requester, key, fingerprint, recorded.attempt, recorded.count
            )
        return [o for o in outcomes if o is not None]

    async def _register_new_patients(self, planned: Sequence[_Planned]) -> None:
        """As for a single create: identity learns each new Patient's holder (and the
        patient's scan secret) before anything is written."""
        for each in planned:
            write = each.write
            if isinstance(write, NewResource) and write.valid.resource_type == "Patient":
                secret = await self._ledger.new_scan_secret(each.patient_id)
                await self._directory.register_holder(each.patient_id, each.holder, secret)

    async def _prepare_requests(
        self, plans: dict[int, list[_Planned]], keys: Sequence[tuple[str, bytes]]
    ) -> tuple[dict[int, list[PendingWrite]], dict[int, BatchAttempt]]:
        """Every request's versions prepared together, then each keyed request's attempt
        recorded: the pending versions of each request whose attempt is this one, and the
        recorded attempt of each request a concurrent attempt recorded first (its versions
        here are dropped: that one is finished instead)."""
        attempts = {number: secrets.token_hex(8) for number in plans}
        resource_writes = await asyncio.to_thread(
            lambda: [
                w
                for number, planned in plans.items()
                for w in self._resource_writes(
                    planned, keys[number][0], attempts[number], keys[number][1]
                )
            ]
        )
        # Every version prepared in a few storage steps; on a failure none stays.
        prepared = await self._storage.prepare_writes(resource_writes)
        pending: dict[int, list[PendingWrite]] = {}
        for number, planned in plans.items():
            pending[number], prepared = prepared[: len(planned)], prepared[len(planned) :]
        resumed: dict[int, BatchAttempt] = {}
        try:
            for number, planned in plans.items():
                key, fingerprint = keys[number]
                if key:
                    recorded = await self._storage.record_batch_attempt(
                        key, fingerprint, attempts[number], len(planned)
                    )
                    if recorded.attempt != attempts[number]:  # a concurrent attempt was first
                        resumed[number] = recorded
        except BaseException:
            await self._storage.abort_writes([p for each in pending.values() for p in each])
            raise
        for number in resumed:
            await self._storage.abort_writes(pending.pop(number))
        return pending, resumed

    async def _checked(
        self,
        requester: Requester,
        plans: dict[int, list[_Planned]],
        outcomes: list[list[StoredVersion] | MedledgerError | None],
    ) -> dict[tuple[str, str], AccessVerdict]:
        """:meth:`_decided` for every planned request; a request with any write denied
        leaves ``plans`` with its error in ``outcomes``."""
        verdicts = await self._decided(
            requester,
            {
                (p.patient_id, p.write.valid.resource_type, p.holder)
                for planned in plans.values()
                for p in planned
            },
        )
        for number in list(plans):
            refusal = next(
                (
                    verdicts[(p.patient_id, p.write.valid.resource_type)]
                    for p in plans[number]
                    if not verdicts[(p.patient_id, p.write.valid.resource_type)].permitted
                ),
                None,
            )
            if refusal is not None:
                outcomes[number] = denied(refusal)
                del plans[number]
        return verdicts

    async def replay(
        self, requester: Requester, idempotency_key: str, request_digest: bytes
    ) -> list[StoredVersion] | None:
        """The first attempt's versions when a request with this key was written (or all
        its versions prepared) before; None otherwise. Callers that plan from what is
        stored ask this first (a retry must not be planned again), then write with
        :meth:`write_unreplayed`."""
        key, fingerprint = _request_key(requester, idempotency_key, request_digest)
        return await self._replay(requester, key, fingerprint)

    async def _replay(
        self, requester: Requester, key: str, fingerprint: bytes
    ) -> list[StoredVersion] | None:
        if not key:
            return None
        attempt = await self._storage.batch_attempt(key, fingerprint)
        if attempt is None:
            return None
        return await self._resume(requester, key, fingerprint, attempt.attempt, attempt.count)

    async def _plan(
        self,
        requester: Requester,
        writes: Sequence[BulkWrite],
        *,
        members_checked: bool,
        holders: dict[str, str] | None = None,
    ) -> list[_Planned]:
        """Each write's id, patient and the organisation holding that patient (the
        requester's for a Patient this request creates); ``holders`` keeps the holders
        looked up, across the requests of one step."""
        holders = {} if holders is None else holders
        for write in writes:
            if isinstance(write, NewResource) and write.valid.resource_type == "Patient":
                holders[write.resource_id] = requester.principal.organization
        planned: list[_Planned] = []
        for write in writes:
            valid = write.valid
            if valid.compartment_members and not members_checked:
                raise ValueError("bulk writes do not check compartment members (Provenance)")
            if isinstance(write, NewResource):
                resource_id = write.resource_id
                patient_id = resource_id if valid.resource_type == "Patient" else valid.patient_id
            else:
                resource_id, patient_id = valid.id or "", valid.patient_id
            if not resource_id or patient_id is None:
                raise ValueError("a bulk write names its resource and its patient")
            if patient_id not in holders:
                holders[patient_id] = await self._storage.patient_holder(patient_id)
            planned.append(_Planned(write, resource_id, patient_id, holders[patient_id]))
        return planned

    async def _decided(
        self, requester: Requester, wanted: set[tuple[str, str, str]]
    ) -> dict[tuple[str, str], AccessVerdict]:
        """CheckAccess once per (patient, type, holder), all at once: each verdict by
        (patient, type)."""
        ordered = sorted(wanted)
        verdicts = await asyncio.gather(
            *(
                self._access.check(AccessQuery(requester, patient, holder, kind, Action.WRITE))
                for patient, kind, holder in ordered
            )
        )
        return {
            (patient, kind): verdict
            for (patient, kind, _), verdict in zip(ordered, verdicts, strict=True)
        }

    async def _verdicts(
        self, requester: Requester, wanted: set[tuple[str, str, str]]
    ) -> dict[tuple[str, str], AccessVerdict]:
        """:meth:`_decided`, where every one must permit the write."""
        decided = await self._decided(requester, wanted)
        for verdict in decided.values():
            if not verdict.permitted:
                raise denied(verdict)
        return decided

    def _resource_writes(
        self, planned: Sequence[_Planned], key: str, attempt: str, fingerprint: bytes
    ) -> list[ResourceWrite]:
        """What to store of each planned write (its canonical JSON and search values:
        CPU-bound, for a worker thread)."""
        when = self._clock().astimezone(UTC)
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        trace_id = current_trace_id()
        writes: list[ResourceWrite] = []
        for position, each in enumerate(planned):
            write = each.write
            expected = write.expected_version if isinstance(write, ChangedResource) else 0
            canonical, search = stored_document(write.valid, each.resource_id, expected + 1, when)
            writes.append(
                ResourceWrite(
                    resource_type=write.valid.resource_type,
                    resource_id=each.resource_id,
                    patient_id=each.patient_id,
                    resource_json=canonical.decode(),
                    search_values=search,
                    expected_version=expected,
                    idempotency_key=_write_key(key, attempt, position),
                    request_fingerprint=fingerprint,
                    holder_organization=each.holder,
                    updated_time=when,
                    trace_id=trace_id,
                )
            )
        return writes

    async def _ledger_and_commit(
        self,
        requester: Requester,
        verdicts: dict[tuple[str, str], AccessVerdict],
        pending: Sequence[PendingWrite],
        *,
        drop: Sequence[PendingWrite],
    ) -> list[StoredVersion]:
        events = [
            (
                p.patient_id,
                write_event(requester, verdicts[(p.patient_id, p.ref.resource_type)], p),
                ledger_idempotency_key(p.salt),
            )
            for p in pending
        ]
        try:
            receipts = await self._ledger.append_many(events)
        except BaseException:
            # Not acknowledged, so never visible. A keyed attempt keeps its versions for the
            # retry to finish (the ledger may hold the entries after all); the others
            # (``drop``) are dropped.
            if drop:
                await self._storage.abort_writes(drop)
            raise
        # Shielded: the entries are ledgered, so the versions must become visible even if
        # the caller goes away (a cancelled stream); a transaction abandoned midway would also
        # hold its locks until the server expires it, stalling every later commit.
        return await asyncio.shield(self._storage.commit_writes(pending, receipts))

    async def _resume(
        self, requester: Requester, key: str, fingerprint: bytes, attempt: str, count: int
    ) -> list[StoredVersion]:
        """Finishes a recorded attempt: its committed versions as they are, its pending ones
        ledgered (again) and committed."""
        done: dict[int, StoredVersion] = {}
        pending: dict[int, PendingWrite] = {}
        for position in range(count):
            found = await first_attempt(
                self._storage, _write_key(key, attempt, position), fingerprint
            )
            if found is None:
                raise Aborted(
                    "the first attempt with this idempotency key expired; send it again "
                    "under a new key",
                    reason="WRITE_EXPIRED",
                )
            if isinstance(found, PendingWrite):
                pending[position] = found
            else:
                done[position] = found
        # The caller must still be allowed to write (or to see the answer of) each one.
        targets = {(v.patient_id, v.ref.resource_type) for v in done.values()}
        targets |= {(p.patient_id, p.ref.resource_type) for p in pending.values()}
        holders: dict[str, str] = {}
        for patient in sorted({patient for patient, _ in targets}):  # once per patient
            try:
                holders[patient] = await self._storage.patient_holder(patient)
            except NotFound:
                holders[patient] = requester.principal.organization
        verdicts = await self._verdicts(
            requester, {(patient, kind, holders[patient]) for patient, kind in targets}
        )
        if pending:
            positions = sorted(pending)
            stored = await self._ledger_and_commit(
                requester, verdicts, [pending[i] for i in positions], drop=()
            )
            done.update(zip(positions, stored, strict=True))
        return [done[i] for i in range(count)]


def _request_key(
    requester: Requester, idempotency_key: str, request_digest: bytes
) -> tuple[str, bytes]:
    """The request's key as stored (the caller's own) and its fingerprint."""
    key = scoped_key(requester, "bulk", idempotency_key)
    return key, request_fingerprint("bulk", request_digest.hex(), 0, requester.purpose)


def _write_key(key: str, attempt: str, position: int) -> str:
    """The idempotency key of one write of an attempt ("" without a request key)."""
    return f"{key}#{attempt}/{position}" if key else ""
