"""The record's storage: FHIR resources encrypted per patient, versioned, searchable by
blind indexes, erasable by crypto-shredding. Implements :class:`RecordStorage`.

Envelope encryption: each patient has one data key, made by Vault transit (``datakey``
under the patient KEK) and stored only wrapped. Unwrapped keys live in
:class:`DataKeyCache`; every operation still reads the patient's row, so an erasure done
by any replica takes effect at once.

What the database sees: the patient as a keyed pseudonym, each resource as a keyed digest
of its type and id, search values as keyed tokens (:mod:`blind_index`), and content and
receipts sealed under the patient's key (:mod:`envelope`). Reads check everything they
use (:mod:`versions`).

The patient's row also names the organisation holding the patient's record (its first
write's, a Patient's create), under a keyed tag: access decisions rest on it, so a changed
holder is damage, not a new owner.

Updates cannot move a resource to another patient: its history would then span two
patients' keys and erasures (the client creates the resource under the right patient and
marks the old one ``entered-in-error``).

Erasure tombstones the patient's row and removes its wrapped key in one step (the
crypto-shredding; commitment salts are sealed under that key too), then removes the
patient's versions, blind-index entries and idempotency records, and strips the patient
from its resources' pointers, which stay as per-resource tombstones so a read by id says
ERASED. Every resource in the patient's compartment is covered, RiskAssessments and
Provenance included: the compartment chooses the key. Writes to an erased patient are
refused (NOT_FOUND, ERASED).

A write is prepared (its version stored pending), ledgered, then committed in a transaction.
Commits are one transaction at a time in a process; commits that arrive while one is in
flight go together in the next (group commit, :mod:`medledger.common.batching`): single
writes' with single writes', bulk writes' (each whole) with bulk writes'. A group that fails
is done again one write at a time, so each write gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import secrets
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from medledger.common.batching import Batcher
from medledger.common.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MedledgerError,
    NotFound,
    Unavailable,
)
from medledger.common.key_cache import DataKeyCache
from medledger.common.paging import Listing, Page
from medledger.common.paging import page_size as page_size_rule
from medledger.record.domain.blind_index import BlindIndex
from medledger.record.domain.envelope import (
    VersionContent,
    associated_data,
    damaged,
    decode_content,
    encode_content,
    seal,
    unseal,
)
from medledger.record.domain.patient_matching import patient_blocking_keys
from medledger.record.domain.ports import (
    AuditedVersion,
    BatchAttempt,
    CurrentPointer,
    IdempotencyEntry,
    IdempotencyTaken,
    PatientBlocks,
    PatientErased,
    PatientKey,
    PatientKeyService,
    PendingInsert,
    PendingLost,
    PendingWrite,
    RecordDocuments,
    ResourceKey,
    ResourceWrite,
    SealedVersion,
    StaleCurrent,
    StoredVersion,
    VersionCommit,
    VersionRef,
    VersionSlot,
    VersionTaken,
)
from medledger.record.domain.search_params import SearchTerm, any_of_tokens, selectivity_rank
from medledger.record.domain.versions import (
    concurrent_write,
    erased,
    first_result,
    key_reused,
    live_pointer,
    open_version,
    stale,
    version_not_found,
)
from medledger.verify.commitment import SALT_SIZE

# Longer than a ledger append may take (its deadline), so only a crashed writer's pending
# version is ever replaced.
DEFAULT_PENDING_TIMEOUT: Final = timedelta(minutes=2)
DEFAULT_IDEMPOTENCY_RETENTION: Final = timedelta(hours=24)
# Versions committed in one transaction at most, when bulk writes' commits go together.
MAX_BULK_COMMIT: Final = 1000
HISTORY_LISTING: Final = "record.ListResourceHistory"
SEARCH_LISTING: Final = "record.SearchResources"
PATIENT_LISTING: Final = "record.PatientResources"
AUDIT_LISTING: Final = "record.AuditRecords"


def _now() -> datetime:
    return datetime.now(UTC)


# What a commit transaction raises when one of its commits conflicts (nothing is written):
# a stale pointer, a lost pending version, an erased patient, a taken idempotency key.
_CONFLICTS: Final = (PatientErased, PendingLost, StaleCurrent, IdempotencyTaken)
# ... and, for bulk commits, a transaction that gave up (its time ran out on a loaded
# server): smaller, it may go through.
_BULK_TROUBLE: Final = (*_CONFLICTS, Unavailable)


def _one_commits_trouble(error: Exception) -> bool:
    """Nothing of a failed group commit is written. A conflict may be one write's: each
    commit is then done alone and answered as its own transaction is. An outage is
    everyone's (done alone, each would wait for it again)."""
    return isinstance(error, _CONFLICTS)


def _one_groups_trouble(error: Exception) -> bool:
    """A failed transaction of several bulk writes' commits: each write's is tried alone
    (and then, if it fails, one version at a time)."""
    return isinstance(error, _BULK_TROUBLE)


_CLAIM_PREFIX: Final = "write:"


def _claim_name(slot: VersionSlot, write_id: bytes) -> str:
    """A single write's claim on its idempotency key: its version's slot and write id."""
    return f"{_CLAIM_PREFIX}{slot.resource.hex()}:{slot.version}:{write_id.hex()}"


def _claimant(name: str) -> tuple[VersionSlot, bytes] | None:
    """The slot and write id a claim names; None for anything else (a bulk attempt)."""
    if not name.startswith(_CLAIM_PREFIX):
        return None
    try:
        resource, version, write_id = name[len(_CLAIM_PREFIX) :].split(":")
        return VersionSlot(bytes.fromhex(resource), int(version)), bytes.fromhex(write_id)
    except ValueError:
        return None


def _digest_cursor(listing: Listing, token: str) -> bytes | None:
    cursor = listing.cursor(token)
    if cursor is None:
        return None
    try:
        return bytes.fromhex(cursor)
    except ValueError:  # a token built by hand
        raise InvalidArgument(
            [FieldViolation("page_token", "is not a token issued for this listing and filters")]
        ) from None


class EncryptedRecords:
    def __init__(
        self,
        documents: RecordDocuments,
        keys: PatientKeyService,
        *,
        cache: DataKeyCache | None = None,
        pending_timeout: timedelta = DEFAULT_PENDING_TIMEOUT,
        idempotency_retention: timedelta = DEFAULT_IDEMPOTENCY_RETENTION,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._documents = documents
        self._keys = keys
        self._cache = cache if cache is not None else DataKeyCache()
        self._pending_timeout = pending_timeout
        self._idempotency_retention = idempotency_retention
        self._clock = clock
        self._index: BlindIndex | None = None
        self._index_lock = asyncio.Lock()
        # One commit transaction at a time in this process: they bump the rows of the same
        # patients, and concurrent ones would abort each other over and over. Concurrent
        # single writes' commits go together in one transaction (group commit).
        self._one_transaction = asyncio.Lock()
        self._commits: Batcher[VersionCommit, None] = Batcher(
            self._commit_together,
            self._commit_alone,
            alone=_one_commits_trouble,
            dependency="mongodb",
        )
        # Bulk writes' commits: each request's in one transaction, never split; concurrent
        # requests' together (a group that fails is tried alone, then one by one).
        self._bulk_commits: Batcher[list[VersionCommit], None] = Batcher(
            self._commit_groups,
            self._commit_group,
            alone=_one_groups_trouble,
            dependency="mongodb",
            max_batch=MAX_BULK_COMMIT,
            size=len,
        )

    async def _blind_index(self) -> BlindIndex:
        if self._index is None:
            async with self._index_lock:
                if self._index is None:
                    self._index = BlindIndex(await self._keys.index_key())
        return self._index

    # -- keys ------------------------------------------------------------------------------

    async def _unwrapped(self, row: PatientKey | None) -> bytes:
        """The data key of a patient whose versions exist."""
        if row is not None and row.erased:
            raise erased()
        if row is None or row.wrapped is None:
            raise damaged()  # versions without their key
        key = self._cache.get(row.patient, row.wrapped)
        if key is None:
            key = await self._keys.unwrap(row.wrapped)
            self._cache.put(row.patient, row.wrapped, key)
        return key

    async def _key_for_writing(self, patient: bytes, holder: str) -> bytes:
        row = await self._documents.patient_key(patient)
        if row is None:
            fresh = await self._keys.new_data_key()
            index = await self._blind_index()
            row = await self._documents.insert_patient_key(
                patient, fresh.wrapped, self._clock(), holder, index.holder_tag(patient, holder)
            )
            if row.wrapped == fresh.wrapped:
                self._cache.put(patient, fresh.wrapped, fresh.plaintext)
                return fresh.plaintext
            # Another writer made this patient's key first: use theirs.
        return await self._unwrapped(row)

    # -- writes ----------------------------------------------------------------------------

    async def prepare_write(self, write: ResourceWrite) -> PendingWrite:
        index = await self._blind_index()
        resource = index.resource_digest(ResourceKey(write.resource_type, write.resource_id))
        pending, insert = await self._sealed_write(
            index, write, await self._documents.current(resource)
        )
        try:
            await self._documents.insert_pendings([insert])
        except VersionTaken:
            raise concurrent_write() from None
        return pending

    async def prepare_writes(self, writes: Sequence[ResourceWrite]) -> list[PendingWrite]:
        index = await self._blind_index()
        resources = [
            index.resource_digest(ResourceKey(w.resource_type, w.resource_id)) for w in writes
        ]
        currents = await self._documents.currents(resources)
        keys: dict[bytes, bytes] = {}  # each patient's data key, looked up once
        sealed = [
            await self._sealed_write(index, write, currents.get(resource), keys)
            for write, resource in zip(writes, resources, strict=True)
        ]
        try:
            # Not while a commit transaction runs: it would conflict with these
            # writes to the same collection and start again.
            async with self._one_transaction:
                await self._documents.insert_pendings([insert for _, insert in sealed])
        except VersionTaken:
            await self.abort_writes([pending for pending, _ in sealed])
            raise concurrent_write() from None
        except BaseException:
            await self.abort_writes([pending for pending, _ in sealed])
            raise
        return [pending for pending, _ in sealed]

    async def abort_writes(self, pending: Sequence[PendingWrite]) -> None:
        """Drops each pending version, as far as storage answers (best effort: one left
        behind is swept once stale, and never visible)."""
        for each in pending:
            with contextlib.suppress(MedledgerError):
                await self._documents.abort(each.slot, each.write_id)

    async def _sealed_write(
        self,
        index: BlindIndex,
        write: ResourceWrite,
        current: CurrentPointer | None,
        keys: dict[bytes, bytes] | None = None,
    ) -> tuple[PendingWrite, PendingInsert]:
        """The pending version of ``write`` (checked against the resource's ``current``
        pointer), sealed under its patient's key (taken from, or added to, ``keys``), and
        the document to store."""
        if write.expected_version < 0:
            raise InvalidArgument([FieldViolation("expected_version", "must not be negative")])
        patient = index.pseudonym(write.patient_id)
        resource = index.resource_digest(ResourceKey(write.resource_type, write.resource_id))
        if write.expected_version == 0:
            if current is not None and current.erased:
                raise erased()
            if current is not None:
                raise AlreadyExists("the resource already exists", reason="RESOURCE_EXISTS")
        else:
            live = live_pointer(current, index)
            if live.patient != patient:
                raise FailedPrecondition(
                    "an update cannot move a resource to another patient",
                    reason="PATIENT_CHANGED",
                )
            if live.version != write.expected_version:
                raise stale(live.version)
        data_key = keys.get(patient) if keys is not None else None
        if data_key is None:
            data_key = await self._key_for_writing(patient, write.holder_organization)
            if keys is not None:
                keys[patient] = data_key
        ref = VersionRef(write.resource_type, write.resource_id, write.expected_version + 1)
        slot = VersionSlot(resource, ref.version)
        now = write.updated_time or self._clock()
        salt = secrets.token_bytes(SALT_SIZE)
        tokens = tuple(
            sorted(
                {
                    index.search_token(write.resource_type, param, value)
                    for param, values in write.search_values.items()
                    for value in values
                }
            )
        )
        content = VersionContent(
            write.resource_type,
            write.resource_id,
            write.patient_id,
            write.resource_json,
            salt,
            now,
            tokens,
        )
        sealed = seal(data_key, encode_content(content), associated_data("content", slot, patient))
        write_id = secrets.token_bytes(16)
        idempotency = None
        if write.idempotency_key:
            key_id = index.idempotency_id(write.idempotency_key)
            fingerprint = index.fingerprint(write.request_fingerprint)
            idempotency = self._idempotency_entry(index, key_id, fingerprint, patient, slot)
        prepared_at = self._clock()
        insert = PendingInsert(
            SealedVersion(slot, patient, sealed, None),
            write_id=write_id,
            prepared_at=prepared_at,
            stale_before=prepared_at - self._pending_timeout,
            # A retry of a write whose commit failed takes its place at once.
            retry_of=idempotency.key_id if idempotency else None,
            retry_fingerprint=idempotency.fingerprint if idempotency else b"",
            trace_id=write.trace_id,
        )
        pending = PendingWrite(
            ref=ref,
            patient_id=write.patient_id,
            resource_json=write.resource_json,
            salt=salt,
            updated_time=now,
            slot=slot,
            patient=patient,
            write_id=write_id,
            index_tokens=tokens,
            idempotency=idempotency,
            data_key=data_key,
            trace_id=write.trace_id,
            blocking_tokens=_blocking_tokens(index, write.resource_type, write.resource_json),
        )
        return pending, insert

    def _idempotency_entry(
        self,
        index: BlindIndex,
        key_id: bytes,
        fingerprint: bytes,
        patient: bytes,
        slot: VersionSlot,
    ) -> IdempotencyEntry:
        return IdempotencyEntry(
            key_id=key_id,
            fingerprint=fingerprint,
            patient=patient,
            expires=self._clock() + self._idempotency_retention,
            tag=index.idempotent_result_tag(key_id, fingerprint, slot),
        )

    async def claim_write(self, key: str, fingerprint: bytes, pending: PendingWrite) -> bool:
        # The claim is a bulk-write attempt record of one write (its own key space: keys are
        # scoped by operation), naming the claimant's version by slot and write id.
        index = await self._blind_index()
        ours = BatchAttempt(
            key_id=index.idempotency_id(key),
            fingerprint=index.fingerprint(fingerprint),
            attempt=_claim_name(pending.slot, pending.write_id),
            count=1,
            expires=self._clock() + self._idempotency_retention,
        )
        held = await self._documents.insert_batch_attempt(ours)
        if not hmac.compare_digest(held.fingerprint, ours.fingerprint):
            raise key_reused()
        if held.attempt == ours.attempt:
            return True
        holder = _claimant(held.attempt)
        if holder is not None and (
            await self._documents.pending_at(*holder, self._clock() - self._pending_timeout)
            is not None
        ):
            return False
        # In this order: a commit ends the pending version and records the result at once.
        if await self._documents.idempotent(ours.key_id) is not None:
            return False  # committed: the caller answers with it
        # The holder left nothing (it expired and was swept, or stopped before preparing):
        # this attempt takes the key over, unless a concurrent one just did.
        return await self._documents.replace_batch_attempt(held, ours)

    async def resume_write(self, key: str, fingerprint: bytes) -> PendingWrite | None:
        index = await self._blind_index()
        key_id = index.idempotency_id(key)
        after = self._clock() - self._pending_timeout
        # The attempt holding the key's claim when there is one (other attempts racing it
        # may have versions pending too: never theirs), else the latest one.
        claim = await self._documents.batch_attempt(key_id)
        holder = _claimant(claim.attempt) if claim is not None else None
        if holder is not None:
            attempt = await self._documents.pending_at(*holder, after)
        else:
            attempt = await self._documents.pending_retry(key_id, after)
        if attempt is None:
            return None
        keyed = index.fingerprint(fingerprint)
        if not hmac.compare_digest(attempt.fingerprint, keyed):
            raise key_reused()
        version = attempt.version
        slot, patient = version.slot, version.patient
        data_key = await self._unwrapped(await self._documents.patient_key(patient))
        content = decode_content(
            unseal(data_key, version.content, associated_data("content", slot, patient))
        )
        resource = ResourceKey(content.resource_type, content.resource_id)
        if not hmac.compare_digest(index.resource_digest(resource), slot.resource):
            raise damaged()
        return PendingWrite(
            ref=VersionRef(content.resource_type, content.resource_id, slot.version),
            patient_id=content.patient_id,
            resource_json=content.resource_json,
            salt=content.salt,
            updated_time=content.updated_time,
            slot=slot,
            patient=patient,
            write_id=attempt.write_id,
            index_tokens=content.index_tokens,
            idempotency=self._idempotency_entry(index, key_id, keyed, patient, slot),
            data_key=data_key,
            trace_id=attempt.trace_id,
            blocking_tokens=_blocking_tokens(index, content.resource_type, content.resource_json),
        )

    @staticmethod
    def _version_commit(index: BlindIndex, pending: PendingWrite, receipt: bytes) -> VersionCommit:
        slot = pending.slot
        return VersionCommit(
            slot=slot,
            patient=pending.patient,
            write_id=pending.write_id,
            receipt=seal(
                pending.data_key, receipt, associated_data("receipt", slot, pending.patient)
            ),
            tag=index.pointer_tag(slot, pending.patient),
            index_tokens=pending.index_tokens,
            idempotency=pending.idempotency,
            blocking_tokens=pending.blocking_tokens,
        )

    @staticmethod
    def _stored(pending: PendingWrite, receipt: bytes) -> StoredVersion:
        return StoredVersion(
            ref=pending.ref,
            patient_id=pending.patient_id,
            resource_json=pending.resource_json,
            updated_time=pending.updated_time,
            receipt=receipt,
            salt=pending.salt,
        )

    async def commit_writes(
        self, pending: Sequence[PendingWrite], receipts: Sequence[bytes]
    ) -> list[StoredVersion]:
        index = await self._blind_index()
        commits = [
            self._version_commit(index, p, r) for p, r in zip(pending, receipts, strict=True)
        ]
        try:
            await self._bulk_commits.submit(commits)
        except _BULK_TROUBLE:
            # Nothing of the transaction is written (a conflict, or the transaction gave up,
            # e.g. its time ran out on a loaded server): each one alone, as commit_write
            # decides. The entries are ledgered already: every version that can become
            # visible must, even after one fails; then the first failure is the answer.
            stored: list[StoredVersion] = []
            failure: MedledgerError | None = None
            for p, r in zip(pending, receipts, strict=True):
                try:
                    stored.append(await self.commit_write(p, r))
                except MedledgerError as error:
                    failure = failure or error
            if failure is not None:
                raise failure from None
            return stored
        return [self._stored(p, r) for p, r in zip(pending, receipts, strict=True)]

    async def commit_write(self, pending: PendingWrite, receipt: bytes) -> StoredVersion:
        index = await self._blind_index()
        slot = pending.slot
        commit = self._version_commit(index, pending, receipt)
        try:
            await self._commits.submit(commit)
        except PatientErased:
            await self._documents.abort(slot, pending.write_id)
            raise erased() from None
        except PendingLost:
            # A keyed write another request finished first (a resend resuming this very
            # attempt, concurrently): its result, as a retry would get it.
            if pending.idempotency is not None:
                first = await self._documents.idempotent(pending.idempotency.key_id)
                if first is not None:
                    return await self._read_slot(
                        first_result(index, first, pending.idempotency.fingerprint)
                    )
            raise Aborted(
                "the write expired before it was committed; retry", reason="WRITE_EXPIRED"
            ) from None
        except StaleCurrent:
            await self._documents.abort(slot, pending.write_id)
            raise stale(None) from None
        except IdempotencyTaken as taken:
            await self._documents.abort(slot, pending.write_id)
            if taken.first is None or pending.idempotency is None:
                raise concurrent_write() from None  # recorded, then erased or expired
            return await self._read_slot(
                first_result(index, taken.first, pending.idempotency.fingerprint)
            )
        return self._stored(pending, receipt)

    async def _commit_together(self, commits: Sequence[VersionCommit]) -> list[None]:
        async with self._one_transaction:
            await self._documents.commit_many(commits, grouped=True)
        return [None] * len(commits)

    async def _commit_group(self, commits: list[VersionCommit]) -> None:
        async with self._one_transaction:
            await self._documents.commit_many(commits)

    async def _commit_groups(self, groups: list[list[VersionCommit]]) -> list[None]:
        await self._commit_group([commit for group in groups for commit in group])
        return [None] * len(groups)

    async def _commit_alone(self, commit: VersionCommit) -> None:
        async with self._one_transaction:
            await self._documents.commit(commit)

    async def abort_write(self, pending: PendingWrite) -> None:
        await self._documents.abort(pending.slot, pending.write_id)

    async def idempotent_result(self, key: str, fingerprint: bytes) -> StoredVersion | None:
        index = await self._blind_index()
        first = await self._documents.idempotent(index.idempotency_id(key))
        if first is None:
            return None
        return await self._read_slot(first_result(index, first, index.fingerprint(fingerprint)))

    async def batch_attempt(self, key: str, fingerprint: bytes) -> BatchAttempt | None:
        index = await self._blind_index()
        found = await self._documents.batch_attempt(index.idempotency_id(key))
        if found is not None and not hmac.compare_digest(
            found.fingerprint, index.fingerprint(fingerprint)
        ):
            raise key_reused()
        return found

    async def record_batch_attempt(
        self, key: str, fingerprint: bytes, attempt: str, count: int
    ) -> BatchAttempt:
        index = await self._blind_index()
        stored = await self._documents.insert_batch_attempt(
            BatchAttempt(
                key_id=index.idempotency_id(key),
                fingerprint=index.fingerprint(fingerprint),
                attempt=attempt,
                count=count,
                expires=self._clock() + self._idempotency_retention,
            )
        )
        if not hmac.compare_digest(stored.fingerprint, index.fingerprint(fingerprint)):
            raise key_reused()
        return stored

    async def patient_holder(self, patient_id: str) -> str:
        index = await self._blind_index()
        row = await self._documents.patient_key(index.pseudonym(patient_id))
        if row is not None and row.erased:
            raise erased()
        digest = index.resource_digest(ResourceKey("Patient", patient_id))
        current = await self._documents.current(digest)
        if current is None or row is None:
            raise NotFound("the patient does not exist", reason="PATIENT_NOT_FOUND")
        live_pointer(current, index)
        if not index.holder_is_authentic(row.patient, row.holder, row.holder_tag):
            raise damaged()
        return row.holder

    async def outside_compartment(
        self, patient_id: str, members: Sequence[ResourceKey]
    ) -> list[ResourceKey]:
        index = await self._blind_index()
        patient = index.pseudonym(patient_id)
        digests = {member: index.resource_digest(member) for member in members}
        currents = await self._documents.currents(digests.values())
        outside = []
        for member, digest in digests.items():
            current = currents.get(digest)
            if current is None or current.erased or current.patient != patient:
                outside.append(member)
            else:
                live_pointer(current, index)
        return outside

    async def sweep_pending(self) -> int:
        """Removes pending versions older than the pending timeout (crashed writers')."""
        return await self._documents.sweep_pending(self._clock() - self._pending_timeout)

    # -- reads -----------------------------------------------------------------------------

    async def _current(self, resource_type: str, resource_id: str) -> CurrentPointer:
        index = await self._blind_index()
        digest = index.resource_digest(ResourceKey(resource_type, resource_id))
        return live_pointer(await self._documents.current(digest), index)

    async def _read_slot(self, slot: VersionSlot) -> StoredVersion:
        """A version known to be committed (an idempotency record names it)."""
        index = await self._blind_index()
        current = live_pointer(await self._documents.current(slot.resource), index)
        if slot.version > current.version:
            raise damaged()
        (opened,) = await self._open([(current, slot)])
        return opened

    async def read(self, resource_type: str, resource_id: str, version: int = 0) -> StoredVersion:
        """``version`` 0 is the latest."""
        current = await self._current(resource_type, resource_id)
        if version < 0 or version > current.version:
            raise version_not_found()
        (opened,) = await self._open(
            [(current, VersionSlot(current.resource, version or current.version))]
        )
        return opened

    async def history(
        self, resource_type: str, resource_id: str, *, page_size: int, page_token: str
    ) -> Page[StoredVersion]:
        """Every version, newest first."""
        size = page_size_rule(page_size)
        listing = Listing(HISTORY_LISTING, (resource_type, resource_id))
        before = listing.int_cursor(page_token)
        current = await self._current(resource_type, resource_id)
        top = current.version if before is None else min(before - 1, current.version)
        slots = [VersionSlot(current.resource, v) for v in range(top, max(top - size, 0), -1)]
        versions = await self._open([(current, slot) for slot in slots])
        last = slots[-1].version if slots else 1
        return Page(versions, listing.token(str(last)) if last > 1 else "")

    async def search(
        self,
        resource_type: str,
        params: Sequence[SearchTerm],
        *,
        page_size: int,
        page_token: str,
    ) -> Page[StoredVersion]:
        """Latest versions of ``resource_type`` matching every term (name, normalised
        values: any one of them), in an order that says nothing (by resource digest).
        Resources erased meanwhile are left out."""
        if not params:
            raise InvalidArgument(
                [FieldViolation("params", "at least one search parameter is required")]
            )
        size = page_size_rule(page_size)
        if any(isinstance(values, str) for _, values in params):
            raise TypeError("a search term's values are a tuple of strings")
        # The same terms in any order, each value list in any order, page alike.
        terms = sorted({(name, tuple(sorted(set(values)))) for name, values in params})
        listing = Listing(
            SEARCH_LISTING,
            (
                resource_type,
                *(part for name, values in terms for part in (name, str(len(values)), *values)),
            ),
        )
        after = _digest_cursor(listing, page_token)
        index = await self._blind_index()

        # Each term a group of tokens (several values, a date range), any one of which
        # matches; the groups of the parameters that usually match fewest resources first.
        def tokens(term: SearchTerm) -> tuple[bytes, ...]:
            name = term[0]
            return tuple(
                sorted({index.search_token(resource_type, name, t) for t in any_of_tokens(term)})
            )

        ranked = sorted({(selectivity_rank(term[0]), tokens(term)) for term in terms})
        groups = [group for _, group in ranked]
        found = await self._documents.matching(groups, after, size + 1)
        currents = await self._documents.currents(found[:size])
        wanted = []
        for resource in found[:size]:
            current = currents.get(resource)
            if current is None:
                raise damaged()  # indexed, yet without a pointer
            if not current.erased:
                live_pointer(current, index)
                wanted.append((current, VersionSlot(resource, current.version)))
        # The index collection is not authenticated; each version's sealed tokens are.
        opened = await self._open(wanted, skip_erased=True, indexed_under=groups)
        more = len(found) > size
        return Page(opened, listing.token(found[size - 1].hex()) if more else "")

    async def patient_resources(
        self, patient_id: str, *, page_size: int, page_token: str
    ) -> Page[StoredVersion]:
        """The latest version of every resource of the patient (exports), in an order
        that says nothing (by resource digest)."""
        size = page_size_rule(page_size)
        listing = Listing(PATIENT_LISTING, (patient_id,))
        after = _digest_cursor(listing, page_token)
        index = await self._blind_index()
        patient = index.pseudonym(patient_id)
        row = await self._documents.patient_key(patient)
        if row is not None and row.erased:
            raise erased()
        found = await self._documents.patient_resources(patient, after, size + 1)
        wanted = []
        for current in found[:size]:
            live_pointer(current, index)
            wanted.append((current, VersionSlot(current.resource, current.version)))
        opened = await self._open(wanted)
        more = len(found) > size
        return Page(opened, listing.token(found[size - 1].resource.hex()) if more else "")

    async def _open(
        self,
        wanted: Sequence[tuple[CurrentPointer, VersionSlot]],
        *,
        skip_erased: bool = False,
        indexed_under: Collection[Collection[bytes]] = (),
    ) -> list[StoredVersion]:
        """Opens committed versions covered by checked pointers, in ``wanted``'s order,
        with one query for the patients' rows and one for the versions; each carries the
        holder its patient's row names (so that a read needs no second look at the row)."""
        if not wanted:
            return []
        index = await self._blind_index()
        rows = await self._documents.patient_keys({c.patient for c, _ in wanted})
        stored = await self._documents.versions(slot for _, slot in wanted)
        opened = []
        for current, slot in wanted:
            row = rows.get(current.patient)
            if skip_erased and row is not None and row.erased:
                continue
            key = await self._unwrapped(row)
            version = open_version(
                key, index, current, slot, stored.get(slot), indexed_under=indexed_under
            )
            assert row is not None  # _unwrapped refuses a missing row
            if index.holder_is_authentic(row.patient, row.holder, row.holder_tag):
                version = dataclasses.replace(version, holder=row.holder)
            opened.append(version)
        return opened

    async def duplicate_blocks(self, max_block: int, patient_id: str = "") -> PatientBlocks:
        """Patients sharing a blocking token, their latest versions opened. The blocking
        entries are not authenticated (they only nominate pairs, which are then judged on
        the opened, authenticated versions): an entry naming anything but a live Patient is
        passed over."""
        index = await self._blind_index()
        member = index.resource_digest(ResourceKey("Patient", patient_id)) if patient_id else None
        groups, oversized = await self._documents.blocks(max_block, member)
        currents = await self._documents.currents({r for group in groups for r in group})
        live = {r: c for r, c in currents.items() if not c.erased}
        for current in live.values():
            live_pointer(current, index)
        opened = await self._open(
            [(c, VersionSlot(r, c.version)) for r, c in sorted(live.items())], skip_erased=True
        )
        patients = {v.patient_id: v for v in opened if v.ref.resource_type == "Patient"}
        by_resource = {index.resource_digest(ResourceKey("Patient", p)): p for p in patients}
        blocks = [
            members
            for group in groups
            if len(members := sorted({by_resource[r] for r in group if r in by_resource})) > 1
        ]
        return PatientBlocks(blocks, patients, oversized)

    # -- audits ----------------------------------------------------------------------------

    async def audit_page(self, *, page_size: int, page_token: str) -> Page[AuditedVersion]:
        """Committed versions (of every patient not erased) in storage order, each opened
        and checked on its own: one that fails is reported, not raised."""
        size = page_size_rule(page_size)
        listing = Listing(AUDIT_LISTING, ())
        after = listing.cursor(page_token) or ""
        found = await self._documents.committed_versions(after, size + 1)
        index = await self._blind_index()
        rows = await self._documents.patient_keys({v.patient for _, v in found if v})
        audited = []
        for storage_id, stored in found[:size]:
            opened = None
            if stored is not None:
                pointer = CurrentPointer(stored.slot.resource, erased=False, patient=stored.patient)
                with contextlib.suppress(DataLoss):
                    key = await self._unwrapped(rows.get(stored.patient))
                    opened = open_version(key, index, pointer, stored.slot, stored)
            audited.append(AuditedVersion(storage_id, opened))
        more = len(found) > size
        return Page(audited, listing.token(found[size - 1][0]) if more else "")

    # -- erasure ---------------------------------------------------------------------------

    async def erase_patient(self, patient_id: str) -> int:
        """Crypto-shreds the patient; returns the number of committed versions removed.
        Safe to repeat: a retry after a failure finishes the removal."""
        index = await self._blind_index()
        patient = index.pseudonym(patient_id)
        self._cache.evict(patient)
        try:
            return await self._documents.erase(patient, self._clock())
        finally:
            self._cache.evict(patient)


def _blocking_tokens(
    index: BlindIndex, resource_type: str, resource_json: str
) -> tuple[bytes, ...]:
    """A Patient's blocking tokens, computed from its JSON (so a resumed write has the same)."""
    if resource_type != "Patient":
        return ()
    return tuple(sorted({index.blocking_token(k) for k in patient_blocking_keys(resource_json)}))
