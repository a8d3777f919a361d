"""What the record's storage offers the RPC layer, and what it needs from Mongo and Vault.

:class:`RecordStorage` is the port the servicer uses; :class:`~medledger.record.domain.records.
EncryptedRecords` implements it and speaks of FHIR resources in clear. Below it,
:class:`RecordDocuments` (the Mongo adapter) only ever sees sealed bytes, patient pseudonyms
and blind-index tokens, and :class:`PatientKeyService` (the Vault adapter) makes and unwraps
the patients' data keys and holds the key of the keyed digests.

A write is two-phase, so that nothing is visible before its ledger receipt:

1. ``prepare_write`` reserves the next version of the resource and stores it sealed but
   *pending*; readers never see a pending version. Two writers cannot reserve the same
   version: the second is ABORTED before anything is ledgered.
2. The RPC layer appends the ledger entry (its content commitment opens with
   ``pending.salt``).
3. ``commit_write`` stores the receipt and makes the version current in one transaction,
   or ``abort_write`` drops it when the ledger did not answer.

A write with an idempotency key whose ledger append failed may leave its pending version in
place instead: a retry with the key then resumes it (``resume_write``: same id, time, JSON
and salt), so the ledger, which may hold the first attempt's entry after all, gets the
very same entry and key again and keeps one.

A pending version left by a crash, or by a commit that failed (Mongo gone), blocks its slot
only until the pending timeout: then the next writer of that resource replaces it, and
``sweep_pending`` removes the others. A retry with the same idempotency key resumes it
(below), or, once it is stale, replaces it at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from medledger.common.paging import Page

if TYPE_CHECKING:
    from medledger.record.domain.search_params import SearchTerm

# -- what the RPC layer hands over and gets back ----------------------------------------


@dataclass(frozen=True, order=True)
class ResourceKey:
    """A resource, all versions: ``Observation/abc``."""

    resource_type: str
    resource_id: str

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


@dataclass(frozen=True, order=True)
class VersionRef:
    """One version of a resource (versions start at 1)."""

    resource_type: str
    resource_id: str
    version: int

    @property
    def resource(self) -> ResourceKey:
        return ResourceKey(self.resource_type, self.resource_id)

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}/{self.version}"


@dataclass(frozen=True)
class ResourceWrite:
    """A create or an update, validated and canonical, its compartment and search values
    already computed (``search_values`` as ``domain.search_params`` gives them)."""

    resource_type: str
    resource_id: str
    patient_id: str
    resource_json: str
    search_values: Mapping[str, Collection[str]]
    # 0: a create (the resource must not exist; it becomes version 1). Otherwise the
    # version the client last read: anything else is ABORTED.
    expected_version: int = 0
    # Scoped by the caller (the RPC layer prefixes the client), never stored in clear.
    idempotency_key: str = ""
    # A digest of the request, so a key reused for another request is refused.
    request_fingerprint: bytes = b""
    # The organisation that holds the patient's record, kept with the patient's first write
    # (a Patient's create) and never changed by later ones.
    holder_organization: str = ""
    # The version's time (meta.lastUpdated of resource_json); None: now.
    updated_time: datetime | None = None
    # The trace id its ledger entry carries, kept with a keyed write's pending version so
    # that a retry appends the very same entry.
    trace_id: bytes = b""


@dataclass(frozen=True, order=True)
class VersionSlot:
    """Where a version is stored: its resource's keyed digest (the database never holds
    a resource's type or id: a Patient's id is the patient id) and its number."""

    resource: bytes
    version: int


@dataclass(frozen=True)
class IdempotencyEntry:
    """What a committed write records about its idempotency key (keyed digests only)."""

    key_id: bytes
    fingerprint: bytes
    patient: bytes
    expires: datetime
    tag: bytes  # binds the key to the version it produced


@dataclass(frozen=True)
class PendingWrite:
    """A version stored but not visible: commit it with its receipt, or abort it."""

    ref: VersionRef
    patient_id: str
    resource_json: str
    salt: bytes  # opens the ledger entry's content commitment
    updated_time: datetime
    # For commit_write only; kept out of reprs (the data key is secret).
    slot: VersionSlot = field(repr=False, compare=False)
    patient: bytes = field(repr=False, compare=False)
    write_id: bytes = field(repr=False, compare=False)
    index_tokens: tuple[bytes, ...] = field(repr=False, compare=False)
    idempotency: IdempotencyEntry | None = field(repr=False, compare=False)
    data_key: bytes = field(repr=False, compare=False)
    trace_id: bytes = field(default=b"", repr=False, compare=False)
    # A Patient's blocking tokens (duplicate detection), indexed with the version.
    blocking_tokens: tuple[bytes, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class StoredVersion:
    """One committed version, opened."""

    ref: VersionRef
    patient_id: str
    resource_json: str
    updated_time: datetime
    receipt: bytes  # the ledger Receipt of the write, serialised
    salt: bytes  # opens the receipt's content commitment (exports)
    # The organisation holding the patient's record, as the patient's row said (its tag
    # checked) when the version was read; None where the row was not read with it (a
    # version just written), or its tag did not check (patient_holder then says DATA_LOSS).
    # Not part of the version: two readings of it compare equal.
    holder: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AuditedVersion:
    """A committed version as an audit finds it: its storage id, and the version opened,
    or None when it cannot be (damaged: it fails its authentication or does not parse)."""

    storage_id: str
    opened: StoredVersion | None


@dataclass(frozen=True)
class PatientBlocks:
    """Patients that share blocking keys (duplicate detection's candidates): each group of
    patient ids sharing a key, and those patients' latest Patient versions, opened."""

    blocks: Sequence[Sequence[str]]
    patients: Mapping[str, StoredVersion]
    # Groups left out for being larger than asked (a very common name's code).
    oversized: int = 0


class RecordStorage(Protocol):
    """The record service's storage, as the RPC layer uses it. Errors are
    ``medledger.common.errors``: NotFound (reason RESOURCE_NOT_FOUND, VERSION_NOT_FOUND,
    PATIENT_NOT_FOUND or ERASED), Aborted (STALE_VERSION, CONCURRENT_WRITE, WRITE_EXPIRED,
    IDEMPOTENCY_KEY_REUSED), AlreadyExists (RESOURCE_EXISTS), FailedPrecondition
    (PATIENT_CHANGED), InvalidArgument (page_token, page_size, params, expected_version),
    DataLoss (RECORD_DAMAGED: never a wrong answer) and Unavailable (Mongo or Vault did not
    answer; nothing half-visible)."""

    async def prepare_write(self, write: ResourceWrite) -> PendingWrite: ...

    async def commit_write(self, pending: PendingWrite, receipt: bytes) -> StoredVersion:
        """The visible version: this write's, or the first write's when another write with
        the same idempotency key committed first (this one is then dropped)."""
        ...

    async def prepare_writes(self, writes: Sequence[ResourceWrite]) -> list[PendingWrite]:
        """``prepare_write`` for each, with a few storage steps for all (bulk writes); on a
        failure the versions already prepared are aborted."""
        ...

    async def commit_writes(
        self, pending: Sequence[PendingWrite], receipts: Sequence[bytes]
    ) -> list[StoredVersion]:
        """``commit_write`` for each: in one transaction when none conflicts, else one by
        one (each as commit_write decides)."""
        ...

    async def abort_write(self, pending: PendingWrite) -> None: ...

    async def abort_writes(self, pending: Sequence[PendingWrite]) -> None:
        """``abort_write`` for each, as far as storage answers (never raises it)."""
        ...

    async def claim_write(self, key: str, fingerprint: bytes, pending: PendingWrite) -> bool:
        """Whether ``pending`` (prepared under idempotency ``key``) may be ledgered: True for
        the first attempt to claim the key, or one taking it over from an attempt that left
        nothing (no version pending or committed); False while another attempt holds it (the
        caller then drops ``pending`` and finishes that one). ABORTED
        (IDEMPOTENCY_KEY_REUSED) when the key was used for another request."""
        ...

    async def resume_write(self, key: str, fingerprint: bytes) -> PendingWrite | None:
        """The pending version an earlier attempt with this idempotency key prepared and did
        not commit (its ledger answer lost, or the ledger down), younger than the pending
        timeout: the same id, version, time, JSON and salt, so the retry ledgers the same
        entry. None when there is none; ABORTED (IDEMPOTENCY_KEY_REUSED) for another request
        with the key."""
        ...

    async def read(
        self, resource_type: str, resource_id: str, version: int = 0
    ) -> StoredVersion: ...

    async def history(
        self, resource_type: str, resource_id: str, *, page_size: int, page_token: str
    ) -> Page[StoredVersion]: ...

    async def search(
        self,
        resource_type: str,
        params: Sequence[SearchTerm],
        *,
        page_size: int,
        page_token: str,
    ) -> Page[StoredVersion]: ...

    async def patient_resources(
        self, patient_id: str, *, page_size: int, page_token: str
    ) -> Page[StoredVersion]: ...

    async def idempotent_result(self, key: str, fingerprint: bytes) -> StoredVersion | None:
        """The version a committed write with this key produced (None: no such write)."""
        ...

    async def patient_holder(self, patient_id: str) -> str:
        """The organisation holding the patient's record ("" when none was recorded);
        NotFound PATIENT_NOT_FOUND unless a Patient resource of that id is stored, ERASED
        once the patient is erased."""
        ...

    async def outside_compartment(
        self, patient_id: str, members: Sequence[ResourceKey]
    ) -> list[ResourceKey]:
        """The ``members`` that are not stored in the patient's compartment (missing, or
        another patient's)."""
        ...

    async def erase_patient(self, patient_id: str) -> int: ...

    async def duplicate_blocks(self, max_block: int, patient_id: str = "") -> PatientBlocks:
        """The latest version of every Patient sharing a blocking key with another, and the
        groups sharing one (groups larger than ``max_block`` left out); with ``patient_id``,
        only the groups holding that Patient."""
        ...

    async def audit_page(self, *, page_size: int, page_token: str) -> Page[AuditedVersion]:
        """Committed versions in storage order, each opened on its own (audits)."""
        ...

    async def sweep_pending(self) -> int: ...

    async def batch_attempt(self, key: str, fingerprint: bytes) -> BatchAttempt | None:
        """The recorded attempt of a bulk write under ``key``; None when there is none;
        ABORTED (IDEMPOTENCY_KEY_REUSED) when it was for another request."""
        ...

    async def record_batch_attempt(
        self, key: str, fingerprint: bytes, attempt: str, count: int
    ) -> BatchAttempt:
        """Records that ``attempt`` prepared all ``count`` versions of the bulk write under
        ``key``; returns the attempt stored first (another one's, when it raced)."""
        ...


async def first_attempt(
    storage: RecordStorage, key: str, fingerprint: bytes
) -> StoredVersion | PendingWrite | None:
    """What an earlier attempt with this idempotency key left: its committed version, else
    its pending one to resume, else its committed version after all (it committed between
    the two looks: a resend racing the attempt in flight); None when there is neither
    (never made, expired and swept, or its patient erased)."""
    first = await storage.idempotent_result(key, fingerprint)
    if first is not None:
        return first
    pending = await storage.resume_write(key, fingerprint)
    if pending is not None:
        return pending
    return await storage.idempotent_result(key, fingerprint)


# -- what the adapters store and answer ---------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """AES-256-GCM output: the 96-bit nonce and the ciphertext with its 128-bit tag."""

    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class NewDataKey:
    """A fresh data key: use ``plaintext`` now, store only ``wrapped``."""

    plaintext: bytes = field(repr=False)
    wrapped: str


@dataclass(frozen=True)
class PatientKey:
    """A patient's row: the wrapped data key and the record holder's organisation, or the
    tombstone left by erasure."""

    patient: bytes
    wrapped: str | None
    erased: bool
    holder: str = ""
    holder_tag: bytes = b""  # keyed tag over the patient and the holder


@dataclass(frozen=True)
class CurrentPointer:
    """The latest committed version of a resource (by its digest), with its patient and a
    keyed tag over the three (a changed pointer is damage, not an older answer); only the
    digest for a resource whose patient was erased."""

    resource: bytes
    erased: bool
    patient: bytes = b""
    version: int = 0
    tag: bytes = b""


@dataclass(frozen=True)
class SealedVersion:
    """A stored version as Mongo holds it; ``receipt`` is None while it is pending."""

    slot: VersionSlot
    patient: bytes
    content: Sealed
    receipt: Sealed | None


@dataclass(frozen=True)
class VersionCommit:
    slot: VersionSlot
    patient: bytes
    write_id: bytes
    receipt: Sealed
    tag: bytes
    index_tokens: tuple[bytes, ...]
    idempotency: IdempotencyEntry | None
    blocking_tokens: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class PendingInsert:
    """One pending version to store (``RecordDocuments.insert_pendings``)."""

    version: SealedVersion
    write_id: bytes
    prepared_at: datetime
    stale_before: datetime
    retry_of: bytes | None
    retry_fingerprint: bytes = b""
    trace_id: bytes = b""


@dataclass(frozen=True)
class IdempotentWrite:
    key_id: bytes
    slot: VersionSlot
    fingerprint: bytes
    tag: bytes


@dataclass(frozen=True)
class BatchAttempt:
    """The one attempt at an idempotent bulk write whose versions were all prepared: a
    retry with the same key finishes exactly these (``count`` writes, keyed by ``attempt``)."""

    key_id: bytes
    fingerprint: bytes  # keyed
    attempt: str
    count: int
    expires: datetime


@dataclass(frozen=True)
class PendingAttempt:
    """A keyed write's pending version, as a retry finds it."""

    version: SealedVersion
    write_id: bytes
    fingerprint: bytes  # keyed
    trace_id: bytes


class VersionTaken(Exception):
    """Another write holds (or committed) the version this one reserves."""


class PendingLost(Exception):
    """The pending version is gone (replaced or swept as stale): nothing was committed."""


class StaleCurrent(Exception):
    """The resource's current version moved: nothing was committed."""


class PatientErased(Exception):
    """The patient was erased: nothing was committed."""


class IdempotencyTaken(Exception):
    """A write with the same idempotency key committed first: nothing was committed."""

    def __init__(self, first: IdempotentWrite | None) -> None:
        super().__init__("idempotency key taken")
        self.first = first


class PatientKeyService(Protocol):
    """Vault: data keys wrapped by the patient KEK, and the key of the keyed digests."""

    async def new_data_key(self) -> NewDataKey: ...

    async def unwrap(self, wrapped: str) -> bytes: ...

    async def index_key(self) -> bytes: ...


class RecordDocuments(Protocol):
    """Mongo: sealed versions, current pointers, patient keys, blind index, idempotency."""

    async def patient_key(self, patient: bytes) -> PatientKey | None: ...

    async def patient_keys(self, patients: Iterable[bytes]) -> dict[bytes, PatientKey]: ...

    async def insert_patient_key(
        self,
        patient: bytes,
        wrapped: str,
        created: datetime,
        holder: str = "",
        holder_tag: bytes = b"",
    ) -> PatientKey:
        """Stores ``wrapped`` (and the record ``holder``) unless the patient has a row
        already; returns the stored row."""
        ...

    async def current(self, resource: bytes) -> CurrentPointer | None: ...

    async def currents(self, resources: Iterable[bytes]) -> dict[bytes, CurrentPointer]: ...

    async def pending_retry(self, key_id: bytes, prepared_after: datetime) -> PendingAttempt | None:
        """The newest pending version prepared with this idempotency key id after
        ``prepared_after``."""
        ...

    async def commit(self, commit: VersionCommit) -> None:
        """One transaction; raises PatientErased, PendingLost, StaleCurrent or
        IdempotencyTaken and then writes nothing."""
        ...

    async def insert_pendings(self, pendings: Sequence[PendingInsert]) -> None:
        """Stores each pending version, in a few steps for all. Raises VersionTaken unless
        each slot is free or held by a pending version prepared before its ``stale_before``
        (which it replaces), whatever its idempotency key: an attempt with the same key in
        flight is finished, not replaced; the versions of the free slots may then be
        stored, pending: abort them. A keyed write keeps its request's key id
        (``retry_of``), fingerprint and trace id for :meth:`pending_retry`."""
        ...

    async def commit_many(self, commits: Sequence[VersionCommit], *, grouped: bool = False) -> None:
        """Every commit in ONE transaction, or none of them: raises as ``commit`` does
        (IdempotencyTaken without the first write) and then writes nothing. ``grouped``:
        the commits of concurrent single writes, given a single commit's time, not a bulk
        write's."""
        ...

    async def abort(self, slot: VersionSlot, write_id: bytes) -> None: ...

    async def versions(self, slots: Iterable[VersionSlot]) -> dict[VersionSlot, SealedVersion]:
        """The stored documents at those slots, keyed by the slot asked for (the values
        carry the slots the documents themselves claim)."""
        ...

    async def matching(
        self, groups: Sequence[Sequence[bytes]], after: bytes | None, limit: int
    ) -> list[bytes]:
        """Resources (digests, ascending) indexed under a token of every group (a group
        with no token matches nothing), after ``after``. The groups come in the order of
        how few resources they are likely to match, fewest first: a hint the store may use
        to pick which group to walk."""
        ...

    async def patient_resources(
        self, patient: bytes, after: bytes | None, limit: int
    ) -> list[CurrentPointer]: ...

    async def idempotent(self, key_id: bytes) -> IdempotentWrite | None: ...

    async def blocks(
        self, max_block: int, member: bytes | None = None
    ) -> tuple[list[list[bytes]], int]:
        """The resources (digests) sharing each blocking token, groups of 2 to ``max_block``,
        and how many larger groups were left out; with ``member``, only the tokens of that
        resource."""
        ...

    async def erase(self, patient: bytes, when: datetime) -> int:
        """Shreds the patient's key and leaves a tombstone (one atomic step), then removes
        every version, index entry and idempotency record of the patient; returns the
        number of committed versions removed."""
        ...

    async def sweep_pending(self, prepared_before: datetime) -> int: ...

    async def batch_attempt(self, key_id: bytes) -> BatchAttempt | None: ...

    async def insert_batch_attempt(self, attempt: BatchAttempt) -> BatchAttempt:
        """Stores ``attempt`` unless one with its key exists; returns the stored one."""
        ...

    async def replace_batch_attempt(self, stale: BatchAttempt, attempt: BatchAttempt) -> bool:
        """Stores ``attempt`` in place of ``stale`` (same key) unless another replaced it
        first; whether it did."""
        ...

    async def pending_at(
        self, slot: VersionSlot, write_id: bytes, prepared_after: datetime
    ) -> PendingAttempt | None:
        """The keyed write ``write_id``'s version if it is still pending at ``slot``,
        prepared after ``prepared_after``."""
        ...

    async def committed_versions(
        self, after: str, limit: int
    ) -> list[tuple[str, SealedVersion | None]]:
        """Up to ``limit`` committed versions whose storage id sorts after ``after``, in id
        order, for audits: each with its id, and None for a document that does not parse."""
        ...
