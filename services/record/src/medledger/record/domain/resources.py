"""The record service's work on FHIR resources: create, read, update, history and search,
each decided by identity's CheckAccess and ledgered.

Writes. The resource is validated (in a worker thread: up to 0.6 s of CPU for the largest),
its patient found (a Patient is its own; any other resource names a Patient stored here),
access asked for, then stored as its RFC 8785 canonical JSON with the server's id and
``meta.versionId``/``meta.lastUpdated``, in two phases: the version is prepared (stored,
invisible), its RECORD_CREATED or RECORD_UPDATED entry appended with a salted commitment to
exactly that JSON, then the version is committed with the entry's receipt. When the ledger
or Vault does not answer, the prepared version is dropped and nothing is visible.

The first write of a patient is a Patient's create: the writer's organisation becomes the
holder of the patient's record, which CheckAccess treats as the patient's own organisation;
identity is told first (RegisterPatientHolder), so the holder may record the patient's
consents without the patient having an account.

Idempotency. A key is scoped by the caller (organisation, principal, operation); a retry
with the same key and request returns the first result, with its receipt, and appends
nothing. Everything in a write's ledger entry is fixed when its version is prepared: the
commitment salt, the blinding salt (derived from it), the time (the version's lastUpdated),
the trace id, and the ledger's idempotency key (derived from the salt). When the ledger
does not answer, a keyed write leaves its version pending (invisible) instead of dropping
it, and the retry resumes that version: the same entry under the same ledger key, so the
ledger keeps one entry whether or not it had appended the first attempt's. A retry after
the pending timeout starts afresh.

Reads. Every read (get, history, search) is checked, then ledgered as RECORD_READ, one entry
per patient per call, before anything is returned; a ledger that does not answer fails the
read. A search decides each patient of its results on its own and leaves the others out
without a word: no count, no sign of what was left out beyond fewer results on a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    MedledgerError,
    NotFound,
    PermissionDenied,
)
from medledger.common.paging import Page
from medledger.common.paging import page_size as page_size_rule
from medledger.common.scopes import resource_scope
from medledger.common.telemetry import current_trace_id
from medledger.record.domain.compartment import PATIENT_ELEMENT, SUPPORTED_TYPES
from medledger.record.domain.fhir_references import is_fhir_id, parse_relative
from medledger.record.domain.fhir_validation import ValidResource, validate_resource
from medledger.record.domain.peers import (
    AccessChecks,
    AccessQuery,
    AccessVerdict,
    Action,
    PatientDirectory,
    RecordEvent,
    RecordLedger,
    Requester,
)
from medledger.record.domain.ports import (
    PendingWrite,
    RecordStorage,
    ResourceKey,
    ResourceWrite,
    StoredVersion,
    first_attempt,
)
from medledger.record.domain.resource_issues import (
    DOCUMENT,
    SEARCH_INVALID,
    ResourceInvalid,
    ResourceIssue,
    child,
    item,
)
from medledger.record.domain.search_params import SearchTerm, parse_search, search_values
from medledger.record.domain.versions import (
    CONCURRENT_WRITE,
    concurrent_write,
    resource_not_found,
)
from medledger.verify.blinding import record_blinding_salt
from medledger.verify.commitment import NotCanonicalizable, canonical_json, commit

MAX_IDEMPOTENCY_KEY: Final = 128
_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,128}")
# A search fetches at most this many pages of matches to fill one page of permitted ones.
MAX_SEARCH_ROUNDS: Final = 8
# CheckAccess calls and ledger appends one search makes at once.
PEER_CALLS_AT_ONCE: Final = 16
# identity's reason when the token's scopes do not cover the type and action.
SCOPE_MISSING: Final = "SCOPE_MISSING"
_LEDGER_KEY_LABEL: Final = b"medledger.record ledger idempotency key v1\x00"
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _instant(when: datetime) -> str:
    """A FHIR instant, in UTC, to the millisecond."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def denied(verdict: AccessVerdict) -> PermissionDenied:
    return PermissionDenied(f"access denied ({verdict.reason})", reason=verdict.reason)


def scoped_key(requester: Requester, operation: str, key: str) -> str:
    """The idempotency key as stored: the caller's own (another caller's equal key is
    another key)."""
    if not key:
        return ""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument(
            [
                FieldViolation(
                    "idempotency_key",
                    f"1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no spaces",
                )
            ]
        )
    who = requester.principal
    return json.dumps([who.organization, who.subject, operation, key], separators=(",", ":"))


def request_fingerprint(
    operation: str, resource_json: str, expected_version: int, purpose: int
) -> bytes:
    request = json.dumps(
        [operation, resource_json, expected_version, purpose], separators=(",", ":")
    )
    return hashlib.sha256(request.encode("utf-8", errors="surrogatepass")).digest()


def _derived(label: bytes, salt: bytes) -> bytes:
    return hashlib.sha256(label + salt).digest()


def ledger_idempotency_key(salt: bytes) -> str:
    """The ledger's idempotency key of a write: one per commitment salt, so every attempt
    at one pending version sends the same key with the same entry."""
    return "record:write:" + _derived(_LEDGER_KEY_LABEL, salt).hex()


def _check_names(resource_type: str, resource_id: str, version: int = 0) -> None:
    problems = []
    if resource_type not in SUPPORTED_TYPES:
        problems.append(
            FieldViolation("resource_type", "one of " + ", ".join(sorted(SUPPORTED_TYPES)))
        )
    if not is_fhir_id(resource_id):
        problems.append(FieldViolation("id", "a FHIR id: 1 to 64 of A-Z a-z 0-9 - ."))
    if version < 0:
        problems.append(FieldViolation("version", "must not be negative (0: the latest)"))
    if problems:
        raise InvalidArgument(problems)


def patient_reference(valid: ValidResource) -> str:
    """The FHIR path of the reference naming the resource's patient."""
    element = PATIENT_ELEMENT.get(valid.resource_type)
    if element is not None:
        return child(element, "reference")
    targets = valid.resource.get("target")
    for index, target in enumerate(targets if isinstance(targets, list) else []):
        parsed = parse_relative(str(target.get("reference", "")))
        if parsed is not None and parsed.resource_type == "Patient":
            return child(item("target", index), "reference")
    return "target"


def member_paths(valid: ValidResource) -> dict[ResourceKey, str]:
    """A Provenance's targets other than its patient, with the path of the first naming each."""
    paths: dict[ResourceKey, str] = {}
    targets = valid.resource.get("target")
    for index, target in enumerate(targets if isinstance(targets, list) else []):
        parsed = parse_relative(str(target.get("reference", "")))
        if parsed is not None and parsed.resource_type != "Patient":
            key = ResourceKey(parsed.resource_type, parsed.id)
            paths.setdefault(key, child(item("target", index), "reference"))
    return paths


def stored_document(
    valid: ValidResource, resource_id: str, version: int, when: datetime
) -> tuple[bytes, dict[str, set[str]]]:
    """The canonical JSON to store (the server's id, versionId and lastUpdated) and its
    search values; CPU-bound, for a worker thread."""
    document: dict[str, Any] = dict(valid.resource)
    document["id"] = resource_id
    meta = document.get("meta")
    document["meta"] = {
        **(meta if isinstance(meta, dict) else {}),
        "versionId": str(version),
        "lastUpdated": _instant(when),
    }
    try:
        canonical = canonical_json(document)
    except NotCanonicalizable:  # validation refuses these first; never an INTERNAL
        raise ResourceInvalid(
            [ResourceIssue("value", DOCUMENT, "holds a value JSON's canonical form cannot carry")]
        ) from None
    return canonical, search_values(valid)


def write_event(requester: Requester, verdict: AccessVerdict, pending: PendingWrite) -> RecordEvent:
    """The ledger entry of a prepared version: the same for every attempt at ``pending``
    (salts, time and trace id all come from it)."""
    who = requester.principal
    ref = pending.ref
    return RecordEvent(
        kind=ledger_pb2.EVENT_KIND_RECORD_CREATED
        if ref.version == 1
        else ledger_pb2.EVENT_KIND_RECORD_UPDATED,
        actor=who.subject,
        organization=who.organization,
        purpose=requester.purpose,
        resource_type=ref.resource_type,
        resource_id=ref.resource_id,
        resource_version=ref.version,
        content_commitment=commit(pending.salt, pending.resource_json.encode()),
        patient_actor=who.subject if verdict.patient_self else "",
        blinding_salt=record_blinding_salt(pending.salt),
        time=pending.updated_time,
        trace_id=pending.trace_id,
    )


class ResourceService:
    def __init__(
        self,
        storage: RecordStorage,
        access: AccessChecks,
        ledger: RecordLedger,
        *,
        directory: PatientDirectory,
        clock: Callable[[], datetime] = _now,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._storage = storage
        self._access = access
        self._ledger = ledger
        self._directory = directory
        self._clock = clock
        self._new_id = new_id

    # -- access ----------------------------------------------------------------------------

    async def _decide(
        self,
        requester: Requester,
        patient_id: str,
        resource_type: str,
        action: Action,
        *,
        holder: str | None = None,
    ) -> AccessVerdict:
        """``holder``: the patient's record holder when the caller read it already (a
        version read with the patient's row), else it is looked up."""
        if holder is None:
            holder = await self._storage.patient_holder(patient_id) if patient_id else ""
        return await self._decide_for(requester, patient_id, holder, resource_type, action)

    async def _decide_for(
        self,
        requester: Requester,
        patient_id: str,
        holder: str,
        resource_type: str,
        action: Action,
    ) -> AccessVerdict:
        return await self._access.check(
            AccessQuery(requester, patient_id, holder, resource_type, action)
        )

    async def _permit(
        self,
        requester: Requester,
        patient_id: str,
        resource_type: str,
        action: Action,
        *,
        holder: str | None = None,
    ) -> AccessVerdict:
        verdict = await self._decide(requester, patient_id, resource_type, action, holder=holder)
        if not verdict.permitted:
            raise denied(verdict)
        return verdict

    async def _ledger_read(
        self,
        requester: Requester,
        verdict: AccessVerdict,
        patient_id: str,
        resource_type: str,
        resource_id: str = "",
        version: int = 0,
    ) -> None:
        who = requester.principal
        await self._ledger.append(
            patient_id,
            RecordEvent(
                kind=ledger_pb2.EVENT_KIND_RECORD_READ,
                actor=who.subject,
                organization=who.organization,
                purpose=requester.purpose,
                resource_type=resource_type,
                resource_id=resource_id,
                resource_version=version,
                patient_actor=who.subject if verdict.patient_self else "",
            ),
        )

    # -- writes ----------------------------------------------------------------------------

    async def create(
        self, requester: Requester, resource_json: str, idempotency_key: str = ""
    ) -> StoredVersion:
        """Stores a new resource (version 1) under a server-assigned id."""
        valid = await asyncio.to_thread(validate_resource, resource_json)
        key = scoped_key(requester, "create", idempotency_key)
        fingerprint = request_fingerprint("create", resource_json, 0, requester.purpose)
        if (first := await self._replay(requester, key, fingerprint)) is not None:
            return first
        resource_id = self._new_id()
        if valid.resource_type == "Patient":
            patient_id, holder = resource_id, requester.principal.organization
        else:
            assert valid.patient_id is not None  # validated: every other type names one
            patient_id = valid.patient_id
            holder = await self._holder_named_by(valid, patient_id)
        verdict = await self._decide_for(
            requester, patient_id, holder, valid.resource_type, Action.WRITE
        )
        if not verdict.permitted:
            raise denied(verdict)
        await self._check_members(valid, patient_id)
        if valid.resource_type == "Patient":
            # identity learns who holds the new patient (consents, break-glass) first: a
            # registration whose write then fails names an id nobody will ever use. With it
            # the patient's scan secret, made before any entry about them, so that every
            # entry (the record's and identity's) is keyed by it.
            secret = await self._ledger.new_scan_secret(patient_id)
            await self._directory.register_holder(patient_id, holder, secret)
        return await self._write(
            requester, verdict, valid, resource_id, patient_id, holder, 0, key, fingerprint
        )

    async def update(
        self,
        requester: Requester,
        resource_json: str,
        expected_version: int,
        idempotency_key: str = "",
    ) -> StoredVersion:
        """Stores the next version of the resource its type and id name; ABORTED when
        ``expected_version`` is not the latest."""
        if expected_version < 1:
            raise InvalidArgument(
                [FieldViolation("expected_version", "required: the version last read (1 or more)")]
            )
        valid = await asyncio.to_thread(validate_resource, resource_json)
        if valid.id is None:
            raise ResourceInvalid(
                [ResourceIssue("required", "id", "the id of the resource to update is required")]
            )
        assert valid.patient_id is not None  # a Patient with an id is its own patient
        key = scoped_key(requester, "update", idempotency_key)
        fingerprint = request_fingerprint(
            "update", resource_json, expected_version, requester.purpose
        )
        if (first := await self._replay(requester, key, fingerprint)) is not None:
            return first
        if valid.resource_type == "Patient":
            try:
                holder = await self._storage.patient_holder(valid.patient_id)
            except NotFound as error:
                if error.reason == "PATIENT_NOT_FOUND":
                    raise resource_not_found() from None
                raise
        else:
            holder = await self._holder_named_by(valid, valid.patient_id)
        verdict = await self._decide_for(
            requester, valid.patient_id, holder, valid.resource_type, Action.WRITE
        )
        if not verdict.permitted:
            raise denied(verdict)
        await self._check_members(valid, valid.patient_id)
        return await self._write(
            requester,
            verdict,
            valid,
            valid.id,
            valid.patient_id,
            holder,
            expected_version,
            key,
            fingerprint,
        )

    async def _replay(
        self, requester: Requester, key: str, fingerprint: bytes
    ) -> StoredVersion | None:
        """The result of an earlier attempt with this key, if the caller may still write to
        its patient: the first result once committed, or the attempt completed now (its
        pending version resumed: the same entry ledgered again, then committed)."""
        if not key:
            return None
        found = await first_attempt(self._storage, key, fingerprint)
        if found is None:
            return None
        verdict = await self._permit(
            requester, found.patient_id, found.ref.resource_type, Action.WRITE
        )
        if not isinstance(found, PendingWrite):
            return found
        return await self._ledger_and_commit(requester, verdict, found)

    async def _holder_named_by(self, valid: ValidResource, patient_id: str) -> str:
        """The holder of the patient a resource names; INVALID_ARGUMENT at the reference
        when no such Patient is stored."""
        try:
            return await self._storage.patient_holder(patient_id)
        except NotFound as error:
            if error.reason != "PATIENT_NOT_FOUND":
                raise
        raise ResourceInvalid(
            [
                ResourceIssue(
                    "not-found",
                    patient_reference(valid),
                    "names a Patient that is not stored here (create the Patient first)",
                )
            ]
        )

    async def _check_members(self, valid: ValidResource, patient_id: str) -> None:
        """A Provenance's other targets must lie in its patient's compartment."""
        paths = member_paths(valid) if valid.compartment_members else {}
        if not paths:
            return
        outside = await self._storage.outside_compartment(patient_id, list(paths))
        if outside:
            raise ResourceInvalid(
                [
                    ResourceIssue(
                        "not-found",
                        paths[member],
                        "must name a resource stored in the same patient's compartment",
                    )
                    for member in outside
                ]
            )

    async def _write(
        self,
        requester: Requester,
        verdict: AccessVerdict,
        valid: ValidResource,
        resource_id: str,
        patient_id: str,
        holder: str,
        expected_version: int,
        key: str,
        fingerprint: bytes,
    ) -> StoredVersion:
        version = expected_version + 1
        when = self._clock().astimezone(UTC)
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        canonical, search = await asyncio.to_thread(
            stored_document, valid, resource_id, version, when
        )
        write = ResourceWrite(
            resource_type=valid.resource_type,
            resource_id=resource_id,
            patient_id=patient_id,
            resource_json=canonical.decode(),
            search_values=search,
            expected_version=expected_version,
            idempotency_key=key,
            request_fingerprint=fingerprint,
            holder_organization=holder,
            updated_time=when,
            trace_id=current_trace_id(),
        )
        # A request with this key may be in flight (the client resent while its first
        # request was being written): this one then finishes that one, as a retry would,
        # rather than ledger a second entry about a version that would never be stored. An
        # update finds that attempt's version in its slot; a create finds the key claimed.
        try:
            pending = await self._storage.prepare_write(write)
        except Aborted as error:
            if not key or error.reason != CONCURRENT_WRITE:
                raise
            return await self._finish_first(requester, key, fingerprint)
        if key and not await self._claimed(pending, key, fingerprint):
            await self._storage.abort_write(pending)
            return await self._finish_first(requester, key, fingerprint)
        return await self._ledger_and_commit(requester, verdict, pending)

    async def _finish_first(
        self, requester: Requester, key: str, fingerprint: bytes
    ) -> StoredVersion:
        """The result of the attempt in flight with this key, finished here if need be."""
        if (first := await self._replay(requester, key, fingerprint)) is None:
            raise concurrent_write()
        return first

    async def _claimed(self, pending: PendingWrite, key: str, fingerprint: bytes) -> bool:
        try:
            return await self._storage.claim_write(key, fingerprint, pending)
        except BaseException:
            # Nothing ledgered yet: the version goes (if storage is gone too, it is swept).
            with contextlib.suppress(MedledgerError):
                await self._storage.abort_write(pending)
            raise

    async def _ledger_and_commit(
        self, requester: Requester, verdict: AccessVerdict, pending: PendingWrite
    ) -> StoredVersion:
        """Appends the version's entry (the same entry for every attempt at ``pending``:
        key, salts, time and trace id all come from it), then commits the version with its
        receipt."""
        event = write_event(requester, verdict, pending)
        try:
            receipt = await self._ledger.append(
                pending.patient_id, event, idempotency_key=ledger_idempotency_key(pending.salt)
            )
        except BaseException:
            # Not acknowledged, so never visible. Without an idempotency key the version is
            # dropped (if that fails too, Mongo gone, it expires and is swept); with one it
            # stays, invisible, for the client's retry to resume: the ledger may hold this
            # entry after all, and must then be given the same entry again.
            if pending.idempotency is None:
                with contextlib.suppress(MedledgerError):
                    await self._storage.abort_write(pending)
            raise
        # A concurrent retry of the same keyed write may commit it first: commit_write
        # answers with that result.
        return await self._storage.commit_write(pending, receipt)

    # -- reads -----------------------------------------------------------------------------

    async def get(
        self, requester: Requester, resource_type: str, resource_id: str, version: int = 0
    ) -> StoredVersion:
        """One version (0: the latest)."""
        _check_names(resource_type, resource_id, version)
        stored = await self._storage.read(resource_type, resource_id, version)
        verdict = await self._permit(
            requester, stored.patient_id, resource_type, Action.READ, holder=stored.holder
        )
        await self._ledger_read(
            requester, verdict, stored.patient_id, resource_type, resource_id, stored.ref.version
        )
        return stored

    async def history(
        self,
        requester: Requester,
        resource_type: str,
        resource_id: str,
        *,
        page_size: int,
        page_token: str,
    ) -> Page[StoredVersion]:
        """Every version, newest first."""
        _check_names(resource_type, resource_id)
        page = await self._storage.history(
            resource_type, resource_id, page_size=page_size, page_token=page_token
        )
        if page.items:  # one patient: versions never move between patients
            first = page.items[0]
            patient_id = first.patient_id
            verdict = await self._permit(
                requester, patient_id, resource_type, Action.READ, holder=first.holder
            )
            await self._ledger_read(requester, verdict, patient_id, resource_type, resource_id)
        return page

    async def search(
        self,
        requester: Requester,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        page_size: int,
        page_token: str,
    ) -> Page[StoredVersion]:
        """The latest versions of ``resource_type`` matching every parameter, of the
        patients the requester may search; the others' are left out."""
        pairs = _parse_params(resource_type, params)
        size = page_size_rule(page_size)
        # The token's scopes and purposes for this type, whoever the patients are: a refusal
        # here says nothing about what matches. A patient's own scopes count only for their
        # own record, so for them the patients' checks below decide alone.
        overall = await self._decide_for(requester, "", "", resource_type, Action.SEARCH)
        if not overall.permitted and not (
            overall.reason == SCOPE_MISSING and _holds_patient_scopes(requester)
        ):
            raise denied(overall)
        verdicts: dict[str, AccessVerdict] = {}
        found: list[StoredVersion] = []
        token = page_token
        for _ in range(MAX_SEARCH_ROUNDS):
            page = await self._storage.search(
                resource_type, pairs, page_size=size - len(found), page_token=token
            )
            new = sorted({v.patient_id for v in page.items} - verdicts.keys())
            # The holders the patients' rows named when their versions were opened.
            holders = {v.patient_id: v.holder for v in page.items}
            decided = await _bounded(
                self._search_verdict(requester, p, resource_type, holders[p]) for p in new
            )
            verdicts.update(zip(new, decided, strict=True))
            found += [v for v in page.items if verdicts[v.patient_id].permitted]
            token = page.next_page_token
            if not token or len(found) >= size:
                break
        patients = sorted({v.patient_id for v in found})
        await _bounded(
            self._ledger_read(requester, verdicts[p], p, resource_type) for p in patients
        )
        return Page(found, token)

    async def _search_verdict(
        self, requester: Requester, patient_id: str, resource_type: str, holder: str | None
    ) -> AccessVerdict:
        try:
            return await self._decide(
                requester, patient_id, resource_type, Action.SEARCH, holder=holder
            )
        except NotFound:  # erased meanwhile
            return AccessVerdict(permitted=False, reason="PATIENT_NOT_FOUND")


def _holds_patient_scopes(requester: Requester) -> bool:
    scopes = (resource_scope(text) for text in requester.principal.scopes)
    return any(scope is not None and scope.context == "patient" for scope in scopes)


def _parse_params(resource_type: str, params: Sequence[tuple[str, str]]) -> list[SearchTerm]:
    """Each (name, value) parsed on its own (a name may repeat: all must match); every
    problem reported at once."""
    if resource_type not in SUPPORTED_TYPES:
        raise ResourceInvalid(
            [
                ResourceIssue(
                    "not-supported", "resource_type", "this resource type is not stored here"
                )
            ],
            reason=SEARCH_INVALID,
        )
    if not params:
        raise ResourceInvalid(
            [ResourceIssue("required", "params", "at least one search parameter is required")],
            reason=SEARCH_INVALID,
        )
    pairs: list[SearchTerm] = []
    issues: list[ResourceIssue] = []
    for name, value in params:
        try:
            pairs += parse_search(resource_type, {name: value})
        except ResourceInvalid as error:
            issues += error.issues
    if issues:
        raise ResourceInvalid(issues, reason=SEARCH_INVALID)
    return pairs


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Awaits each, at most :data:`PEER_CALLS_AT_ONCE` at a time; results in order."""
    limit = asyncio.Semaphore(PEER_CALLS_AT_ONCE)

    async def one(call: Awaitable[T]) -> T:
        async with limit:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
