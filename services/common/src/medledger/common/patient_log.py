"""A patient's ledger entries, kept by the service that owns the patient: blinded appends, the
encrypted per-patient leaf index, and erasure.

Entries about a patient are blinded per entry (:mod:`medledger.common.blinding`), so the
public ledger cannot say which entries are the same patient's. The owning service keeps,
per patient, one index row per entry: the leaf hash and index, the event kind and the
:class:`~medledger.common.blinding.Opening` (salt, pseudonym, clear resource and actor).
With it the service lists the patient's entries (an access log) and proves any one of them
is about the patient.

Rows are sealed with AES-256-GCM under a data key of the patient's own, bound to the patient
and the row (associated data); the data key is stored only wrapped by a Vault transit key the
owning service may use (identity: ``identity-secrets``; record: ``record-patient-kek``).
:meth:`PatientLog.erase` deletes the patient's wrapped key and rows: the salts are gone, and
with them every link from the ledger to the patient (once backups holding them have
expired).

Next to the wrapped data key the patient's key row keeps their **scan secret** (32 random
bytes, sealed under the data key), from which the subjects of their entries are keyed
(:mod:`medledger.common.blinding`): the record service makes it with the patient's Patient
(:meth:`PatientLog.new_scan_secret`) and hands it to identity, which keeps it the same way
(:meth:`PatientLog.keep_scan_secret`). Erasure deletes it with the key row: from then on not
even whoever recomputes the patient's pseudonym (the deployment's subject key and the
patient's id) can find the patient's entries in the ledger. A patient without one (created
before scan secrets; in identity, one the record service has not registered) gets entries
keyed by the legacy scan key of their pseudonym, which erasure does not protect; each row
keeps the scan key its entry used.

A row is written before its entry is appended, with the leaf hash of the exact bytes sent,
so an entry in the ledger is never missing from the index: if the ledger's answer is lost,
the row keeps no leaf index and the leaf is found by its hash (ledger GetInclusionProof).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.blinding import (
    SALT_SIZE,
    SCAN_SECRET_SIZE,
    Opening,
    legacy_scan_key,
    scan_key,
)
from medledger.common.errors import FailedPrecondition
from medledger.common.key_cache import DataKeyCache
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.paging import Listing, Page, page, page_size
from medledger.common.subject import SubjectHasher

_NONCE_SIZE: Final = 12
_DATA_KEY_SIZE: Final = 32
_INDEX_LABEL: Final = b"medledger.patient-leaf-index\x00"
# The associated data of a sealed scan secret, after the patient key (a leaf id is hex).
_SCAN_SECRET_AAD: Final = "\x00scan-secret"  # noqa: S105 (a label, not a secret)


@dataclass(frozen=True)
class PatientLeaf:
    """One ledger entry about a patient, as the patient's leaf index keeps it."""

    leaf_id: str  # the row's id; rows sort by creation
    leaf_hash: bytes
    # None until the ledger answered with the entry's receipt (or if it never did).
    leaf_index: int | None
    kind: ledger_pb2.EventKind.ValueType
    opening: Opening


@dataclass(frozen=True)
class SealedLeaf:
    leaf_id: str
    sealed: bytes


@dataclass(frozen=True)
class StoredKeys:
    """A patient's key row."""

    # The patient's data key, wrapped by Vault transit.
    wrapped_key: str
    # The patient's scan secret sealed under the data key; None when none is known.
    sealed_scan_secret: bytes | None = None


class PatientLeafStore(Protocol):
    """Where the owning service keeps its patients' leaf indexes; ``patient_key`` is a
    keyed digest of the patient id, never the id itself."""

    async def keys(self, patient_key: str) -> StoredKeys | None:
        """The patient's key row; None before the first row (or after erasure)."""

    async def keys_of(self, patient_keys: Sequence[str]) -> dict[str, StoredKeys]:
        """``keys`` of several patients in one step: those with a key row."""

    async def add_wrapped_key(self, patient_key: str, wrapped: str) -> str:
        """Stores ``wrapped`` unless the patient already has a key; returns the stored one."""

    async def add_scan_secret(self, patient_key: str, sealed: bytes) -> bytes | None:
        """Stores ``sealed`` in the patient's key row unless it holds a scan secret already;
        returns the stored one (None when the patient has no key row)."""

    async def add_leaf(self, patient_key: str, leaf: SealedLeaf) -> None: ...

    async def replace_leaf(self, patient_key: str, leaf: SealedLeaf) -> None: ...

    async def add_leaves(self, rows: Sequence[tuple[str, SealedLeaf]]) -> None:
        """``add_leaf`` for each ``(patient_key, leaf)``, in one step (bulk appends)."""

    async def replace_leaves(self, rows: Sequence[tuple[str, SealedLeaf]]) -> None:
        """``replace_leaf`` for each ``(patient_key, leaf)``, in one step."""

    async def leaves(self, patient_key: str, *, after: str, limit: int) -> Sequence[SealedLeaf]:
        """Up to ``limit`` rows after id ``after``, in id order."""

    async def erase(self, patient_key: str) -> int:
        """Deletes the patient's rows and wrapped key; the number of rows deleted."""


class Transit(Protocol):
    """Vault transit encryption (:class:`~medledger.common.vault.VaultTransit`)."""

    async def encrypt(self, key: str, plaintext: bytes, *, context: bytes | None = None) -> str: ...

    async def decrypt(
        self, key: str, ciphertext: str, *, context: bytes | None = None
    ) -> bytes: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    return base64.b64decode(str(text))


def _new_leaf_id() -> str:
    """48-bit milliseconds then 80 random bits: ids sort by creation."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def _leaf_document(leaf: PatientLeaf) -> bytes:
    opening = leaf.opening
    return json.dumps(
        {
            "leaf_hash": _b64(leaf.leaf_hash),
            "leaf_index": leaf.leaf_index,
            "kind": int(leaf.kind),
            "salt": _b64(opening.salt),
            "pseudonym": _b64(opening.pseudonym),
            "resource": [opening.resource_type, opening.resource_id, opening.resource_version],
            "patient_actor": opening.patient_actor,
            "nonce": _b64(opening.nonce),
            "scan_key": _b64(opening.scan_key),
        },
        separators=(",", ":"),
    ).encode()


def _leaf(leaf_id: str, data: bytes) -> PatientLeaf:
    doc = json.loads(data)
    resource_type, resource_id, resource_version = doc["resource"]
    index = doc["leaf_index"]
    pseudonym = _unb64(doc["pseudonym"])
    # Rows written before entries had nonces have none.
    nonce = _unb64(doc.get("nonce", ""))
    # Rows written before scan secrets have no scan key: their entries used the legacy one.
    if "scan_key" in doc:
        key = _unb64(doc["scan_key"])
    else:
        key = legacy_scan_key(pseudonym) if nonce else b""
    return PatientLeaf(
        leaf_id=leaf_id,
        leaf_hash=_unb64(doc["leaf_hash"]),
        leaf_index=None if index is None else int(index),
        kind=ledger_pb2.EventKind.ValueType(int(doc["kind"])),
        opening=Opening(
            salt=_unb64(doc["salt"]),
            pseudonym=pseudonym,
            resource_type=str(resource_type),
            resource_id=str(resource_id),
            resource_version=int(resource_version),
            patient_actor=str(doc["patient_actor"]),
            nonce=nonce,
            scan_key=key,
        ),
    )


def blinded_event(event: LedgerEvent, opening: Opening) -> LedgerEvent:
    """``event`` with its subject, resource id and version, and (when the patient acts)
    actor replaced by their blinded values."""
    resource = opening.resource()
    return LedgerEvent(
        kind=event.kind,
        actor=opening.actor() or event.actor,
        organization=event.organization,
        subject=opening.subject(),
        resource_type=resource.type if resource is not None else "",
        resource_id=resource.id if resource is not None else "",
        resource_version=0,
        content_commitment=event.content_commitment,
        purpose=event.purpose,
    )


@dataclass(frozen=True)
class PatientAppend:
    """One entry of :meth:`PatientLog.append_many` (the arguments of :meth:`PatientLog.append`)."""

    patient_id: str
    event: LedgerEvent
    patient_actor: str = ""
    idempotency_key: str = ""
    salt: bytes | None = None
    entry_time: datetime | None = None
    trace_id: bytes | None = None


@dataclass(frozen=True)
class _PatientKeys:
    """What blinding and indexing a patient's entry needs."""

    pseudonym: bytes
    patient_key: str
    data_key: bytes = field(repr=False)
    # The patient's scan key, or the legacy one of the pseudonym when no secret is known.
    scan_key: bytes = field(repr=False)


@dataclass(frozen=True)
class _PreparedLeaf:
    patient_key: str
    data_key: bytes = field(repr=False)
    leaf: PatientLeaf
    entry: ledger_pb2.LedgerEntry


class PatientLog:
    """Blinded ledger appends about patients, and each patient's encrypted leaf index."""

    def __init__(
        self,
        ledger: LedgerClient,
        subjects: SubjectHasher,
        store: PatientLeafStore,
        transit: Transit,
        wrapping_key: str,
    ) -> None:
        self._ledger = ledger
        self._subjects = subjects
        self._store = store
        self._transit = transit
        self._wrapping_key = wrapping_key
        # Every ledgered call of a patient needs their data key: unwrapped ones are kept
        # briefly, found only with the wrapped key they came from (erasure drops the row).
        self._keys = DataKeyCache()

    @staticmethod
    def _patient_key(pseudonym: bytes) -> str:
        return hashlib.sha256(_INDEX_LABEL + pseudonym).hexdigest()

    async def _patients_keys(self, patient_ids: Sequence[str]) -> dict[str, _PatientKeys]:
        """:meth:`_patient_keys` of each patient: their rows read in one step, their data
        keys unwrapped side by side (a batch of entries about several patients)."""
        pseudonyms = {p: await self._subjects.subject(p) for p in dict.fromkeys(patient_ids)}
        keys = {p: self._patient_key(pseudonym) for p, pseudonym in pseudonyms.items()}
        rows = await self._store.keys_of(list(keys.values()))
        found = await asyncio.gather(
            *(self._keys_of_row(pseudonyms[p], keys[p], rows.get(keys[p])) for p in pseudonyms)
        )
        return dict(zip(pseudonyms, found, strict=True))

    async def _patient_keys(self, patient_id: str) -> _PatientKeys:
        """The patient's pseudonym, data key (created with their first row) and scan key."""
        pseudonym = await self._subjects.subject(patient_id)
        patient_key = self._patient_key(pseudonym)
        return await self._keys_of_row(pseudonym, patient_key, await self._store.keys(patient_key))

    async def _keys_of_row(
        self, pseudonym: bytes, patient_key: str, stored: StoredKeys | None
    ) -> _PatientKeys:
        """:meth:`_patient_keys` from the patient's key row as read (None: none yet, so it
        is made; one made meanwhile by another append is used instead)."""
        if stored is None:
            fresh = await self._transit.encrypt(self._wrapping_key, os.urandom(_DATA_KEY_SIZE))
            wrapped = await self._store.add_wrapped_key(patient_key, fresh)
            # Another call made the row first: it may hold a scan secret already.
            stored = (
                StoredKeys(wrapped) if wrapped == fresh else await self._store.keys(patient_key)
            )
            if stored is None:
                raise FailedPrecondition("the patient was erased", reason="PATIENT_ERASED")
        data_key = await self._unwrap(stored.wrapped_key)
        key = legacy_scan_key(pseudonym)
        if stored.sealed_scan_secret is not None:
            secret = self._open_secret(data_key, patient_key, stored.sealed_scan_secret)
            key = scan_key(secret)
        return _PatientKeys(pseudonym, patient_key, data_key, key)

    @staticmethod
    def _seal_secret(key: bytes, patient_key: str, secret: bytes) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        aad = (patient_key + _SCAN_SECRET_AAD).encode()
        return nonce + AESGCM(key).encrypt(nonce, secret, aad)

    @staticmethod
    def _open_secret(key: bytes, patient_key: str, sealed: bytes) -> bytes:
        aad = (patient_key + _SCAN_SECRET_AAD).encode()
        try:
            secret = AESGCM(key).decrypt(sealed[:_NONCE_SIZE], sealed[_NONCE_SIZE:], aad)
        except InvalidTag:
            secret = b""
        if len(secret) != SCAN_SECRET_SIZE:
            raise FailedPrecondition(
                "a patient's scan secret is damaged", reason="PATIENT_SCAN_SECRET"
            )
        return secret

    async def _store_scan_secret(self, patient_id: str, secret: bytes) -> bytes:
        """Keeps ``secret`` as the patient's scan secret unless they have one; the one kept."""
        keys = await self._patient_keys(patient_id)
        sealed = self._seal_secret(keys.data_key, keys.patient_key, secret)
        stored = await self._store.add_scan_secret(keys.patient_key, sealed)
        if stored is None:  # erased in between
            raise FailedPrecondition("the patient was erased", reason="PATIENT_ERASED")
        return self._open_secret(keys.data_key, keys.patient_key, stored)

    async def new_scan_secret(self, patient_id: str) -> bytes:
        """The patient's scan secret, made now (32 random bytes) unless they have one: the
        record service's, with the patient's Patient, before any entry about them."""
        return await self._store_scan_secret(patient_id, os.urandom(SCAN_SECRET_SIZE))

    async def keep_scan_secret(self, patient_id: str, secret: bytes) -> bool:
        """Keeps the scan secret another service made for the patient (identity, told by the
        record service); False, keeping nothing new, when the patient already has another."""
        if len(secret) != SCAN_SECRET_SIZE:
            raise ValueError(f"a scan secret is {SCAN_SECRET_SIZE} bytes")
        kept = await self._store_scan_secret(patient_id, secret)
        return hmac.compare_digest(kept, secret)

    async def scan_key(self, patient_id: str) -> bytes | None:
        """The patient's scan key (from their scan secret); None when they have no secret
        (their entries use the legacy scan key of their pseudonym)."""
        pseudonym = await self._subjects.subject(patient_id)
        patient_key = self._patient_key(pseudonym)
        stored = await self._store.keys(patient_key)
        if stored is None or stored.sealed_scan_secret is None:
            return None
        data_key = await self._unwrap(stored.wrapped_key)
        return scan_key(self._open_secret(data_key, patient_key, stored.sealed_scan_secret))

    async def _unwrap(self, wrapped: str) -> bytes:
        cache_key = wrapped.encode()
        cached = self._keys.get(cache_key, wrapped)
        if cached is not None:
            return cached
        key = await self._transit.decrypt(self._wrapping_key, wrapped)
        if len(key) != _DATA_KEY_SIZE:
            raise FailedPrecondition("a patient's data key is damaged", reason="PATIENT_KEY")
        self._keys.put(cache_key, wrapped, key)
        return key

    @staticmethod
    def _seal(key: bytes, patient_key: str, leaf: PatientLeaf) -> SealedLeaf:
        nonce = os.urandom(_NONCE_SIZE)
        aad = f"{patient_key}\x00{leaf.leaf_id}".encode()
        sealed = nonce + AESGCM(key).encrypt(nonce, _leaf_document(leaf), aad)
        return SealedLeaf(leaf.leaf_id, sealed)

    @staticmethod
    def _open(key: bytes, patient_key: str, row: SealedLeaf) -> PatientLeaf:
        aad = f"{patient_key}\x00{row.leaf_id}".encode()
        nonce, ciphertext = row.sealed[:_NONCE_SIZE], row.sealed[_NONCE_SIZE:]
        return _leaf(row.leaf_id, AESGCM(key).decrypt(nonce, ciphertext, aad))

    async def append(
        self,
        patient_id: str,
        event: LedgerEvent,
        *,
        patient_actor: str = "",
        idempotency_key: str = "",
        timeout: float = 10.0,
        salt: bytes | None = None,
        entry_time: datetime | None = None,
        trace_id: bytes | None = None,
    ) -> ledger_pb2.Receipt:
        """Appends ``event`` about ``patient_id``, blinded, and indexes it first.
        ``patient_actor`` is the patient's own user id when the patient acts (the entry's
        actor is then blinded too). ``event.subject`` is ignored.

        By default the entry gets a fresh blinding ``salt`` (and the nonce derived from it,
        :meth:`~medledger.common.blinding.Opening.derived`), the time now and the current
        trace id. A caller that must append the very same entry again (a retry of a write
        whose answer was lost, under the same ``idempotency_key``) gives all three, the salt
        as secret as a fresh one: the ledger then answers with the first entry's receipt."""
        item = PatientAppend(
            patient_id, event, patient_actor, idempotency_key, salt, entry_time, trace_id
        )
        prepared = await self._prepare(item, {})
        await self._store.add_leaf(prepared.patient_key, self._pending_row(prepared))
        receipt = await self._ledger.append_entry(
            prepared.entry, idempotency_key=idempotency_key, timeout=timeout
        )
        await self._store.replace_leaf(prepared.patient_key, self._indexed_row(prepared, receipt))
        return receipt

    async def append_many(
        self, items: Sequence[PatientAppend], *, timeout: float = 30.0
    ) -> list[ledger_pb2.Receipt]:
        """Appends every item in ONE ledger step (AppendBatch: all or none, at most 1,000),
        each blinded and indexed first as :meth:`append` does; receipts in order."""
        patients = await self._patients_keys([item.patient_id for item in items])
        prepared = [await self._prepare(item, patients) for item in items]
        # The index rows first, all in one step, as append writes its one.
        await self._store.add_leaves([(p.patient_key, self._pending_row(p)) for p in prepared])
        receipts = await self._ledger.append_entries(
            [(p.entry, item.idempotency_key) for p, item in zip(prepared, items, strict=True)],
            timeout=timeout,
        )
        await self._store.replace_leaves(
            [
                (p.patient_key, self._indexed_row(p, receipt))
                for p, receipt in zip(prepared, receipts, strict=True)
            ]
        )
        return receipts

    async def _prepare(
        self, item: PatientAppend, patients: dict[str, _PatientKeys]
    ) -> _PreparedLeaf:
        """The blinded entry of ``item`` and its index row (not stored yet)."""
        if item.salt is not None and len(item.salt) != SALT_SIZE:
            raise ValueError(f"a blinding salt is {SALT_SIZE} bytes")
        keys = patients.get(item.patient_id)
        if keys is None:
            keys = patients[item.patient_id] = await self._patient_keys(item.patient_id)
        patient_key = keys.patient_key
        event = item.event
        opening = Opening.derived(
            salt=item.salt if item.salt is not None else os.urandom(SALT_SIZE),
            pseudonym=keys.pseudonym,
            resource_type=event.resource_type,
            resource_id=event.resource_id,
            resource_version=event.resource_version,
            patient_actor=item.patient_actor,
            scan_key=keys.scan_key,
        )
        entry = self._ledger.entry(blinded_event(event, opening))
        # Public, and fixed by the salt: whoever holds the scan key (and the pseudonym) finds
        # the entry with it. Only the subject's key depends on the patient's scan secret.
        entry.nonce = opening.nonce
        if item.entry_time is not None:
            entry.time.FromDatetime(item.entry_time)
        if item.trace_id is not None:
            entry.trace_id = item.trace_id
        leaf_hash = hashlib.sha256(b"\x00" + entry.SerializeToString(deterministic=True)).digest()
        pending = PatientLeaf(_new_leaf_id(), leaf_hash, None, event.kind, opening)
        return _PreparedLeaf(patient_key, keys.data_key, pending, entry)

    def _pending_row(self, prepared: _PreparedLeaf) -> SealedLeaf:
        """The index row written before the entry is appended (no leaf index yet)."""
        return self._seal(prepared.data_key, prepared.patient_key, prepared.leaf)

    def _indexed_row(self, prepared: _PreparedLeaf, receipt: ledger_pb2.Receipt) -> SealedLeaf:
        """The index row with the leaf index the ledger gave the entry."""
        leaf = prepared.leaf
        done = PatientLeaf(
            leaf.leaf_id, leaf.leaf_hash, int(receipt.leaf_index), leaf.kind, leaf.opening
        )
        return self._seal(prepared.data_key, prepared.patient_key, done)

    async def leaves(
        self, patient_id: str, *, requested_size: int = 0, page_token: str = ""
    ) -> Page[PatientLeaf]:
        """The patient's entries, oldest first, with their openings (medledger.common.paging)."""
        patient_key = self._patient_key(await self._subjects.subject(patient_id))
        listing = Listing("PatientLog.leaves", (patient_key,))
        size = page_size(requested_size)
        after = listing.cursor(page_token) or ""
        stored = await self._store.keys(patient_key)
        if stored is None:
            return Page((), "")
        key = await self._unwrap(stored.wrapped_key)
        rows = await self._store.leaves(patient_key, after=after, limit=size + 1)
        found = [self._open(key, patient_key, row) for row in rows]
        return page(found, size, lambda leaf: leaf.leaf_id, listing)

    async def erase(self, patient_id: str) -> int:
        """Destroys the patient's leaf index: rows, salts, scan secret and data key (the
        erasure hook). Call it once the patient's last event is ledgered; returns the rows
        destroyed."""
        patient_key = self._patient_key(await self._subjects.subject(patient_id))
        stored = await self._store.keys(patient_key)
        try:
            return await self._store.erase(patient_key)
        finally:
            if stored is not None:
                self._keys.evict(stored.wrapped_key.encode())
