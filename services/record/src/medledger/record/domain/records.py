"""The record's storage: FHIR resources encrypted per patient, versioned, searchable by
blind indexes, erasable by crypto-shredding. Implements :class:`RecordStorage`.

Envelope encryption: each patient has one data key, made by Vault transit (``datakey``
under the patient KEK: the key and its wrapped form in one call) and stored only wrapped.
Unwrapped keys live in :class:`DataKeyCache`; every operation still reads the patient's row,
so an erasure done anywhere takes effect at once.

Versions: a resource's versions are 1..N, every one kept (history, vread); N is named by
the resource's current pointer, which moves only when a version is committed and only
from the version the writer expected (``expected_version``: ABORTED when stale). Updates
cannot move a resource to another patient: its history would then span two patients'
keys and erasures (the client creates the resource under the right patient instead and
marks the old one ``entered-in-error``).

Reads never give a wrong answer: the pointer is tagged, each version is authenticated with
its type, id, version and patient as associated data, and history checks that versions
are contiguous; anything that fails is DATA_LOSS.

Erasure tombstones the patient's row and removes its wrapped key in one step (the
crypto-shredding: commitment salts are sealed under that key too), then removes the
patient's versions, blind-index entries and idempotency records, and strips the patient
from its resources' pointers, which stay as per-resource tombstones so a read by id says
ERASED. Every resource in the patient's compartment is covered, RiskAssessments and
Provenance included: the compartment decides the key. Writes to an erased patient are
refused, also NOT_FOUND / ERASED.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from medledger.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
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
from medledger.record.domain.key_cache import DataKeyCache
from medledger.record.domain.ports import (
    CurrentPointer,
    IdempotencyEntry,
    IdempotencyTaken,
    PatientErased,
    PatientKey,
    PatientKeyService,
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
    VersionTaken,
)
from medledger.verify.commitment import SALT_SIZE

# Longer than a ledger append may take (its deadline), so only a crashed writer's pending
# version is ever replaced.
DEFAULT_PENDING_TIMEOUT: Final = timedelta(minutes=2)
DEFAULT_IDEMPOTENCY_RETENTION: Final = timedelta(hours=24)
HISTORY_LISTING: Final = "record.ListResourceHistory"
SEARCH_LISTING: Final = "record.SearchResources"
PATIENT_LISTING: Final = "record.PatientResources"


def erased() -> NotFound:
    return NotFound("the patient's records were erased", reason="ERASED")


def _resource_not_found() -> NotFound:
    return NotFound("the resource does not exist", reason="RESOURCE_NOT_FOUND")


def _now() -> datetime:
    return datetime.now(UTC)


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

    async def _key_for_writing(self, patient: bytes) -> bytes:
        row = await self._documents.patient_key(patient)
        if row is None:
            fresh = await self._keys.new_data_key()
            row = await self._documents.insert_patient_key(patient, fresh.wrapped, self._clock())
            if row.wrapped == fresh.wrapped:
                self._cache.put(patient, fresh.wrapped, fresh.plaintext)
                return fresh.plaintext
            # Another writer made this patient's key first: use theirs.
        return await self._unwrapped(row)

    # -- writes ----------------------------------------------------------------------------

    async def prepare_write(self, write: ResourceWrite) -> PendingWrite:
        index = await self._blind_index()
        patient = index.pseudonym(write.patient_id)
        resource = ResourceKey(write.resource_type, write.resource_id)
        current = await self._documents.current(resource)
        if write.expected_version == 0:
            if current is not None:
                raise (
                    erased()
                    if current.erased
                    else AlreadyExists("the resource already exists", reason="RESOURCE_EXISTS")
                )
        else:
            live = self._live(current, index)
            if live.patient != patient:
                raise FailedPrecondition(
                    "an update cannot move a resource to another patient",
                    reason="PATIENT_CHANGED",
                )
            if live.version != write.expected_version:
                raise _stale(live.version)
        data_key = await self._key_for_writing(patient)
        ref = VersionRef(write.resource_type, write.resource_id, write.expected_version + 1)
        now = self._clock()
        salt = secrets.token_bytes(SALT_SIZE)
        content = VersionContent(write.patient_id, write.resource_json, salt, now)
        sealed = seal(data_key, encode_content(content), associated_data("content", ref, patient))
        write_id = secrets.token_bytes(16)
        try:
            await self._documents.insert_pending(
                SealedVersion(ref, patient, sealed, None),
                write_id=write_id,
                prepared_at=now,
                stale_before=now - self._pending_timeout,
            )
        except VersionTaken:
            raise Aborted(
                "another write to this resource is in progress", reason="CONCURRENT_WRITE"
            ) from None
        tokens = {
            index.search_token(write.resource_type, param, value)
            for param, values in write.search_values.items()
            for value in values
        }
        idempotency = None
        if write.idempotency_key:
            idempotency = IdempotencyEntry(
                key_id=index.idempotency_id(write.idempotency_key),
                fingerprint=index.fingerprint(write.request_fingerprint),
                patient=patient,
                expires=now + self._idempotency_retention,
            )
        return PendingWrite(
            ref=ref,
            patient_id=write.patient_id,
            resource_json=write.resource_json,
            salt=salt,
            updated_time=now,
            patient=patient,
            write_id=write_id,
            index_tokens=tuple(sorted(tokens)),
            idempotency=idempotency,
            data_key=data_key,
        )

    async def commit_write(self, pending: PendingWrite, receipt: bytes) -> VersionRef:
        index = await self._blind_index()
        ref = pending.ref
        sealed = seal(pending.data_key, receipt, associated_data("receipt", ref, pending.patient))
        commit = VersionCommit(
            ref=ref,
            patient=pending.patient,
            write_id=pending.write_id,
            receipt=sealed,
            tag=index.pointer_tag(ref.resource, ref.version, pending.patient),
            index_tokens=pending.index_tokens,
            idempotency=pending.idempotency,
        )
        try:
            await self._documents.commit(commit)
        except PatientErased:
            await self._documents.abort(ref, pending.write_id)
            raise erased() from None
        except PendingLost:
            raise Aborted(
                "the write expired before it was committed; retry", reason="WRITE_EXPIRED"
            ) from None
        except StaleCurrent:
            await self._documents.abort(ref, pending.write_id)
            raise _stale(None) from None
        except IdempotencyTaken as taken:
            await self._documents.abort(ref, pending.write_id)
            first = taken.first
            if first is None or pending.idempotency is None:
                raise Aborted(
                    "a write with this idempotency key is in progress; retry",
                    reason="CONCURRENT_WRITE",
                ) from None
            if first.fingerprint != pending.idempotency.fingerprint:
                raise _key_reused() from None
            return first.ref
        return ref

    async def abort_write(self, pending: PendingWrite) -> None:
        await self._documents.abort(pending.ref, pending.write_id)

    async def idempotent_result(self, key: str, fingerprint: bytes) -> VersionRef | None:
        index = await self._blind_index()
        first = await self._documents.idempotent(index.idempotency_id(key))
        if first is None:
            return None
        if first.fingerprint != index.fingerprint(fingerprint):
            raise _key_reused()
        return first.ref

    async def sweep_pending(self) -> int:
        """Removes pending versions older than the pending timeout (crashed writers')."""
        return await self._documents.sweep_pending(self._clock() - self._pending_timeout)

    # -- reads -----------------------------------------------------------------------------

    def _live(self, current: CurrentPointer | None, index: BlindIndex) -> CurrentPointer:
        if current is None:
            raise _resource_not_found()
        if current.erased:
            raise erased()
        if current.version < 1 or not index.pointer_is_authentic(
            current.resource, current.version, current.patient, current.tag
        ):
            raise damaged()
        return current

    async def read(self, resource_type: str, resource_id: str, version: int = 0) -> StoredVersion:
        """``version`` 0 is the latest."""
        index = await self._blind_index()
        current = self._live(
            await self._documents.current(ResourceKey(resource_type, resource_id)), index
        )
        if version < 0 or version > current.version:
            raise NotFound("the version does not exist", reason="VERSION_NOT_FOUND")
        ref = VersionRef(resource_type, resource_id, version or current.version)
        (opened,) = await self._open([(current, ref)])
        return opened

    async def history(
        self, resource_type: str, resource_id: str, *, page_size: int, page_token: str
    ) -> Page[StoredVersion]:
        """Every version, newest first."""
        size = page_size_rule(page_size)
        listing = Listing(HISTORY_LISTING, (resource_type, resource_id))
        before = listing.int_cursor(page_token)
        index = await self._blind_index()
        current = self._live(
            await self._documents.current(ResourceKey(resource_type, resource_id)), index
        )
        top = current.version if before is None else min(before - 1, current.version)
        wanted = [
            (current, VersionRef(resource_type, resource_id, v))
            for v in range(top, max(top - size, 0), -1)
        ]
        versions = await self._open(wanted)
        last = wanted[-1][1].version if wanted else 1
        return Page(versions, listing.token(str(last)) if last > 1 else "")

    async def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        page_size: int,
        page_token: str,
    ) -> Page[StoredVersion]:
        """Latest versions of ``resource_type`` matching every (name, normalised value),
        ordered by id. Resources erased meanwhile are left out."""
        if not params:
            raise InvalidArgument(
                [FieldViolation("params", "at least one search parameter is required")]
            )
        size = page_size_rule(page_size)
        pairs = sorted(set(params))
        listing = Listing(SEARCH_LISTING, (resource_type, *(part for p in pairs for part in p)))
        after = listing.cursor(page_token)
        index = await self._blind_index()
        tokens = sorted({index.search_token(resource_type, n, v) for n, v in pairs})
        found = await self._documents.matching(tokens, after, size + 1)
        currents = await self._documents.currents(found[:size])
        live = []
        for resource in found[:size]:
            current = currents.get(resource)
            if current is None:
                raise damaged()  # indexed, yet without a pointer
            if current.erased:
                continue
            self._live(current, index)
            live.append((current, _latest(current)))
        opened = await self._open(live, skip_erased=True)
        more = len(found) > size
        return Page(opened, listing.token(str(found[size - 1])) if more else "")

    async def patient_resources(
        self, patient_id: str, *, page_size: int, page_token: str
    ) -> Page[StoredVersion]:
        """The latest version of every resource of the patient, by type and id (exports)."""
        size = page_size_rule(page_size)
        listing = Listing(PATIENT_LISTING, (patient_id,))
        after = listing.cursor(page_token)
        index = await self._blind_index()
        patient = index.pseudonym(patient_id)
        row = await self._documents.patient_key(patient)
        if row is not None and row.erased:
            raise erased()
        found = await self._documents.patient_resources(patient, after, size + 1)
        wanted = []
        for current in found[:size]:
            self._live(current, index)
            wanted.append((current, _latest(current)))
        opened = await self._open(wanted)
        more = len(found) > size
        return Page(opened, listing.token(str(found[size - 1].resource)) if more else "")

    async def _open(
        self, wanted: Sequence[tuple[CurrentPointer, VersionRef]], *, skip_erased: bool = False
    ) -> list[StoredVersion]:
        """Opens committed versions named by checked pointers, in ``wanted``'s order, with
        one query for the patients' rows and one for the versions."""
        if not wanted:
            return []
        rows = await self._documents.patient_keys({c.patient for c, _ in wanted})
        stored = await self._documents.versions(ref for _, ref in wanted)
        opened = []
        for current, ref in wanted:
            row = rows.get(current.patient)
            if skip_erased and row is not None and row.erased:
                continue
            key = await self._unwrapped(row)
            opened.append(_unseal_version(key, current, ref, stored.get(ref)))
        return opened

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


def _latest(current: CurrentPointer) -> VersionRef:
    return VersionRef(current.resource.resource_type, current.resource.resource_id, current.version)


def _unseal_version(
    key: bytes, current: CurrentPointer, ref: VersionRef, stored: SealedVersion | None
) -> StoredVersion:
    # The pointer says this version is committed: missing, pending, or claiming to be
    # another version or another patient's, it is damaged.
    if stored is None or stored.receipt is None:
        raise damaged()
    if stored.ref != ref or stored.patient != current.patient:
        raise damaged()
    content = decode_content(
        unseal(key, stored.content, associated_data("content", ref, current.patient))
    )
    receipt = unseal(key, stored.receipt, associated_data("receipt", ref, current.patient))
    return StoredVersion(
        ref=ref,
        patient_id=content.patient_id,
        resource_json=content.resource_json,
        updated_time=content.updated_time,
        receipt=receipt,
        salt=content.salt,
    )


def _stale(current_version: int | None) -> Aborted:
    metadata = {} if current_version is None else {"current_version": str(current_version)}
    return Aborted(
        "the resource changed since the expected version; read it again",
        reason="STALE_VERSION",
        metadata=metadata,
    )


def _key_reused() -> Aborted:
    return Aborted(
        "the idempotency key was used for a different request", reason="IDEMPOTENCY_KEY_REUSED"
    )
