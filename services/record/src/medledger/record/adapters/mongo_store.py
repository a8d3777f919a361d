"""MongoDB storage of the record: sealed versions, current pointers, patient keys, blind
index, idempotency. Nothing here is readable without Vault: patients appear only as keyed
pseudonyms (``patient``), content and receipts only sealed, search values only as tokens.

Layout (one database, ``record_*`` collections; ``resource`` is the keyed digest of a
resource's type and id, ``patient`` the patient's keyed pseudonym):

- ``record_patients``  ``{_id: patient, wrapped: data key wrapped by Vault, created,
  writes, holder, holder_tag}`` (the organisation holding the patient's record, and its
  keyed tag); after erasure ``{_id, erased: true, erased_at}`` (the tombstone; the wrapped key
  is gone). ``writes`` is bumped by every commit, so a commit and an erasure conflict.
- ``record_versions``  ``{_id: "<resource hex>/<version>", resource, version, patient,
  state: "committed", nonce, content, receipt_nonce, receipt}``; a pending version has
  ``state: "pending"``, its writer's ``write`` id, ``prepared_at`` and, for a write with an
  idempotency key, the key's id it may be retried with (``retry_of``), the request's keyed
  fingerprint and the trace id its ledger entry carries, instead of the receipt. Indexes:
  ``patient``; ``(state, prepared_at)`` for the sweep; ``retry_of`` for retries.
- ``record_current``   ``{_id: resource, patient, version, tag}``: the latest committed
  version; ``{_id, erased: true}`` once its patient is erased. Index ``(patient, _id)``.
- ``record_index``     ``{_id: resource, patient, tokens: [...], blocks: [...]}``: the search
  tokens of a resource's current version, and a Patient's blocking tokens (duplicate
  detection; absent on other types), ONE document per resource. Indexes ``(tokens, _id)``
  (multikey: a search walks one token's resources in order), ``patient``, ``blocks``
  (multikey, sparse). One document rather than one per token: a commit writes a document
  per resource, not ten (on secantusdb, 60 one-token rows cost 40 ms a commit, 6 documents
  6 ms). Rows of the earlier layout (``{token, resource, patient, block}``) are converted
  when the service starts.
- ``record_idempotency`` ``{_id: key id, fingerprint, resource, version, patient, tag,
  expires_at}``; TTL index on ``expires_at``.
- ``record_batches``   ``{_id: key id, fingerprint, attempt, count, expires_at}``: the attempt
  of an idempotent bulk write (HL7 v2 message, CSV chunk) that prepared all its versions, so
  a retry finishes those; no patient in it. TTL index on ``expires_at``.

A commit is ONE transaction: the patient is not erased, the pending version is still this
writer's, the pointer moves from the expected version, the index entries are replaced and
the idempotency key is recorded, or nothing is. A document that does not parse is damage
(DATA_LOSS), never an internal error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import pymongo
from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from medledger.common.errors import DataLoss
from medledger.common.mongo import RunOnce, mongo_errors
from medledger.record.domain.envelope import damaged
from medledger.record.domain.ports import (
    BatchAttempt,
    CurrentPointer,
    IdempotencyTaken,
    IdempotentWrite,
    PatientErased,
    PatientKey,
    PendingAttempt,
    PendingInsert,
    PendingLost,
    Sealed,
    SealedVersion,
    StaleCurrent,
    VersionCommit,
    VersionSlot,
    VersionTaken,
)

Document = dict[str, Any]
PENDING: Final = "pending"
COMMITTED: Final = "committed"
# with_transaction retries transient errors (a WriteConflict, a lost server) for up to 120 s;
# a client should hear UNAVAILABLE sooner.
DEFAULT_TRANSACTION_SECONDS: Final = 10.0
BULK_SECONDS_PER_COMMIT: Final = 0.1
MIN_BULK_TRANSACTION_SECONDS: Final = 60.0
MAX_BULK_TRANSACTION_SECONDS: Final = 120.0
# A search walks its rarest token's index entries this many at a time.
CANDIDATE_CHUNK: Final = 256
# Counting a token's entries stops here (the count is only to rank tokens: past it, a
# token is "common", and counting further would cost what the search avoids). A search's
# first group drives without counting the others when it matches fewer.
TOKEN_COUNT_CAP: Final = 512
CONVERT_CHUNK: Final = 5000  # rows of the earlier index layout converted at a time
DUPLICATE_KEY: Final = 11000
LEGACY_INDEX_NAMES: Final = frozenset({"token_1_resource_1", "resource_1", "block_1_token_1"})


@contextmanager
def _parsing() -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError):
        raise damaged() from None


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("not bytes")
    return bytes(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _patient_key(doc: Document) -> PatientKey:
    with _parsing():
        wrapped = doc.get("wrapped")
        return PatientKey(
            patient=_bytes(doc["_id"]),
            wrapped=None if wrapped is None else _str(wrapped),
            erased=doc.get("erased") is True,
            holder=_str(doc.get("holder", "")),
            holder_tag=_bytes(doc.get("holder_tag", b"")),
        )


def _slot_id(slot: VersionSlot) -> str:
    return f"{slot.resource.hex()}/{slot.version}"


def _pointer(doc: Document) -> CurrentPointer:
    with _parsing():
        resource = _bytes(doc["_id"])
        if "erased" in doc:
            if doc["erased"] is not True or "patient" in doc:
                raise ValueError("half an erased pointer")
            return CurrentPointer(resource, erased=True)
        return CurrentPointer(
            resource,
            erased=False,
            patient=_bytes(doc["patient"]),
            version=_int(doc["version"]),
            tag=_bytes(doc["tag"]),
        )


def _sealed_version(doc: Document) -> SealedVersion:
    with _parsing():
        slot = VersionSlot(_bytes(doc["resource"]), _int(doc["version"]))
        state = doc["state"]
        if state == COMMITTED:
            receipt: Sealed | None = Sealed(_bytes(doc["receipt_nonce"]), _bytes(doc["receipt"]))
        elif state == PENDING:
            receipt = None
        else:
            raise ValueError("unknown state")
        return SealedVersion(
            slot=slot,
            patient=_bytes(doc["patient"]),
            content=Sealed(_bytes(doc["nonce"]), _bytes(doc["content"])),
            receipt=receipt,
        )


def _any_token(group: Sequence[bytes]) -> Document:
    """The ``record_index`` filter of resources holding one of ``group``'s tokens."""
    if len(group) == 1:
        return {"tokens": Binary(group[0])}
    return {"tokens": {"$in": [Binary(t) for t in group]}}


def index_document(
    resource: bytes, patient: bytes, tokens: Iterable[bytes], blocks: Iterable[bytes] = ()
) -> Document:
    """A resource's ``record_index`` document: its search tokens, and its blocking tokens
    when it has any (a Patient)."""
    document: Document = {
        "_id": Binary(resource),
        "patient": Binary(patient),
        "tokens": [Binary(t) for t in dict.fromkeys(tokens)],
    }
    if blocked := [Binary(t) for t in dict.fromkeys(blocks)]:
        document["blocks"] = blocked
    return document


def _duplicates(error: BulkWriteError) -> list[int]:
    """The positions of an unordered insert's documents refused for a taken _id; any other
    refusal is raised as it is."""
    refused = error.details.get("writeErrors", [])
    if not refused or any(e.get("code") != DUPLICATE_KEY for e in refused):
        raise error
    return [e["index"] for e in refused]


def _pending_document(pending: PendingInsert) -> Document:
    version = pending.version
    slot = version.slot
    retry: Document = {}
    if pending.retry_of is not None:
        retry = {
            "retry_of": Binary(pending.retry_of),
            "retry_fingerprint": Binary(pending.retry_fingerprint),
            "trace": Binary(pending.trace_id),
        }
    return {
        "_id": _slot_id(slot),
        "resource": Binary(slot.resource),
        "version": slot.version,
        "patient": Binary(version.patient),
        "state": PENDING,
        "write": Binary(pending.write_id),
        "prepared_at": pending.prepared_at,
        "nonce": Binary(version.content.nonce),
        "content": Binary(version.content.ciphertext),
        **retry,
    }


def _pending_attempt(doc: Document) -> PendingAttempt:
    with _parsing():
        return PendingAttempt(
            version=_sealed_version(doc),
            write_id=_bytes(doc["write"]),
            fingerprint=_bytes(doc["retry_fingerprint"]),
            trace_id=_bytes(doc["trace"]),
        )


def _idempotency_document(commit: VersionCommit) -> Document:
    entry = commit.idempotency
    assert entry is not None
    return {
        "_id": Binary(entry.key_id),
        "fingerprint": Binary(entry.fingerprint),
        "resource": Binary(commit.slot.resource),
        "version": commit.slot.version,
        "patient": Binary(commit.patient),
        "expires_at": entry.expires,
        "tag": Binary(entry.tag),
    }


def _batch_attempt(doc: Document) -> BatchAttempt:
    with _parsing():
        return BatchAttempt(
            key_id=_bytes(doc["_id"]),
            fingerprint=_bytes(doc["fingerprint"]),
            attempt=_str(doc["attempt"]),
            count=_int(doc["count"]),
            expires=doc["expires_at"],
        )


def _idempotent(doc: Document) -> IdempotentWrite:
    with _parsing():
        return IdempotentWrite(
            key_id=_bytes(doc["_id"]),
            slot=VersionSlot(_bytes(doc["resource"]), _int(doc["version"])),
            fingerprint=_bytes(doc["fingerprint"]),
            tag=_bytes(doc["tag"]),
        )


class RecordStore:
    def __init__(
        self,
        client: AsyncMongoClient[Document],
        database: str,
        *,
        transaction_seconds: float = DEFAULT_TRANSACTION_SECONDS,
    ) -> None:
        self._client = client
        self._transaction_seconds = transaction_seconds
        db = client[database]
        self._patients = db["record_patients"]
        self._versions = db["record_versions"]
        self._current = db["record_current"]
        self._index = db["record_index"]
        self._idempotency = db["record_idempotency"]
        self._batches = db["record_batches"]
        self._ready = RunOnce(self._create_indexes)

    @property
    def collections(self) -> tuple[str, ...]:
        """Every collection this store writes (tests scan them all)."""
        return tuple(
            c.name
            for c in (
                self._patients,
                self._versions,
                self._current,
                self._index,
                self._idempotency,
                self._batches,
            )
        )

    @mongo_errors
    async def ensure_indexes(self) -> None:
        """Creates the indexes now (writes also do it before their first write)."""
        await self._ready()

    async def _create_indexes(self) -> None:
        await self._versions.create_index([("patient", ASCENDING)])
        await self._versions.create_index([("state", ASCENDING), ("prepared_at", ASCENDING)])
        await self._versions.create_index([("retry_of", ASCENDING)], sparse=True)
        await self._current.create_index([("patient", ASCENDING), ("_id", ASCENDING)])
        await self._index.create_index([("tokens", ASCENDING), ("_id", ASCENDING)])
        await self._index.create_index([("patient", ASCENDING)])
        await self._index.create_index([("blocks", ASCENDING)], sparse=True)
        await self._convert_token_rows()
        await self._idempotency.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        await self._batches.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)

    # -- patient keys --------------------------------------------------------------------

    @mongo_errors
    async def patient_key(self, patient: bytes) -> PatientKey | None:
        doc = await self._patients.find_one({"_id": Binary(patient)})
        return _patient_key(doc) if doc else None

    @mongo_errors
    async def patient_keys(self, patients: Iterable[bytes]) -> dict[bytes, PatientKey]:
        wanted = [Binary(p) for p in set(patients)]
        if not wanted:
            return {}
        rows = [_patient_key(d) async for d in self._patients.find({"_id": {"$in": wanted}})]
        return {row.patient: row for row in rows}

    @mongo_errors
    async def insert_patient_key(
        self,
        patient: bytes,
        wrapped: str,
        created: datetime,
        holder: str = "",
        holder_tag: bytes = b"",
    ) -> PatientKey:
        await self._ready()
        try:
            await self._patients.insert_one(
                {
                    "_id": Binary(patient),
                    "wrapped": wrapped,
                    "created": created,
                    "writes": 0,
                    "holder": holder,
                    "holder_tag": Binary(holder_tag),
                }
            )
        except DuplicateKeyError:
            stored = await self.patient_key(patient)
            if stored is None:
                raise damaged() from None
            return stored
        return PatientKey(patient, wrapped, erased=False, holder=holder, holder_tag=holder_tag)

    # -- pointers and versions -----------------------------------------------------------

    @mongo_errors
    async def current(self, resource: bytes) -> CurrentPointer | None:
        doc = await self._current.find_one({"_id": Binary(resource)})
        return _pointer(doc) if doc else None

    @mongo_errors
    async def currents(self, resources: Iterable[bytes]) -> dict[bytes, CurrentPointer]:
        wanted = [Binary(r) for r in set(resources)]
        if not wanted:
            return {}
        pointers = [_pointer(d) async for d in self._current.find({"_id": {"$in": wanted}})]
        return {p.resource: p for p in pointers}

    @mongo_errors
    async def versions(self, slots: Iterable[VersionSlot]) -> dict[VersionSlot, SealedVersion]:
        by_id = {_slot_id(slot): slot for slot in slots}
        if not by_id:
            return {}
        found: dict[VersionSlot, SealedVersion] = {}
        async for doc in self._versions.find({"_id": {"$in": sorted(by_id)}}):
            asked = by_id.get(doc["_id"])
            if asked is not None:
                found[asked] = _sealed_version(doc)
        return found

    @mongo_errors
    async def committed_versions(
        self, after: str, limit: int
    ) -> list[tuple[str, SealedVersion | None]]:
        found: list[tuple[str, SealedVersion | None]] = []
        query = {"state": COMMITTED, "_id": {"$gt": after}}
        async for doc in self._versions.find(query).sort("_id", 1).limit(limit):
            slot_id = str(doc.get("_id", ""))
            try:
                found.append((slot_id, _sealed_version(doc)))
            except DataLoss:
                found.append((slot_id, None))
        return found

    @mongo_errors
    async def insert_pendings(self, pendings: Sequence[PendingInsert]) -> None:
        await self._ready()
        try:
            await self._versions.insert_many(
                [_pending_document(p) for p in pendings], ordered=False
            )
            return
        except BulkWriteError as error:
            taken = _duplicates(error)
        # Only for slots found taken: a crashed writer's stale pending version gives its
        # slot up; then those are tried once more. By _id (the index): with "$or" the
        # server may scan the whole collection (a secantusdb delete did: 1.1 s at 60,000
        # versions). A live attempt of the same keyed write keeps its slot: the caller
        # finishes that attempt instead (two attempts would both be ledgered).
        again = [pendings[i] for i in taken]
        ids = [_slot_id(p.version.slot) for p in again]
        stale_before = min(p.stale_before for p in again)
        await self._versions.delete_many(
            {"_id": {"$in": ids}, "state": PENDING, "prepared_at": {"$lt": stale_before}}
        )
        try:
            await self._versions.insert_many([_pending_document(p) for p in again], ordered=False)
        except BulkWriteError:
            raise VersionTaken from None

    @mongo_errors
    async def pending_retry(self, key_id: bytes, prepared_after: datetime) -> PendingAttempt | None:
        doc = await self._versions.find_one(
            {
                "state": PENDING,
                "retry_of": Binary(key_id),
                "prepared_at": {"$gte": prepared_after},
            },
            sort=[("prepared_at", -1)],
        )
        return _pending_attempt(doc) if doc is not None else None

    @mongo_errors
    async def commit(self, commit: VersionCommit) -> None:
        try:
            await self._commit_all([commit])
        except IdempotencyTaken:
            assert commit.idempotency is not None
            raise IdempotencyTaken(await self.idempotent(commit.idempotency.key_id)) from None

    @mongo_errors
    async def commit_many(self, commits: Sequence[VersionCommit], *, grouped: bool = False) -> None:
        await self._commit_all(commits, bulk=not grouped)

    async def _commit_all(self, commits: Sequence[VersionCommit], *, bulk: bool = False) -> None:
        """The commits in ONE transaction: each patient's row bumped (so a concurrent
        erasure and this commit conflict: one goes first, the other sees it), each pending
        version this writer's turned committed, the pointers moved from the expected
        versions, the index entries replaced and the idempotency keys recorded; a few
        statements for all of them."""

        async def write(session: AsyncClientSession) -> None:
            patients = sorted({c.patient for c in commits})
            touched = await self._patients.update_many(
                {"_id": {"$in": [Binary(p) for p in patients]}, "wrapped": {"$exists": True}},
                {"$inc": {"writes": 1}},
                session=session,
            )
            if touched.matched_count != len(patients):
                raise PatientErased
            done = await self._versions.bulk_write(
                [
                    UpdateOne(
                        {"_id": _slot_id(c.slot), "state": PENDING, "write": Binary(c.write_id)},
                        {
                            "$set": {
                                "state": COMMITTED,
                                "receipt_nonce": Binary(c.receipt.nonce),
                                "receipt": Binary(c.receipt.ciphertext),
                            },
                            "$unset": dict.fromkeys(
                                ("write", "prepared_at", "retry_of", "retry_fingerprint", "trace"),
                                "",
                            ),
                        },
                    )
                    for c in commits
                ],
                session=session,
            )
            if done.matched_count != len(commits):
                raise PendingLost
            await self._move_pointers(commits, session)
            await self._replace_index_entries(commits, session)
            keyed = [c for c in commits if c.idempotency is not None]
            if keyed:
                try:
                    await self._idempotency.insert_many(
                        [_idempotency_document(c) for c in keyed], session=session
                    )
                except BulkWriteError:
                    raise IdempotencyTaken(None) from None

        await self._ready()
        # A bulk commit (up to 1,000 versions) takes longer than one version's, and much
        # longer on a loaded server; one that runs out of time leaves its transaction to the
        # server's reaper (60 s), whose held writes then make later commits conflict until
        # then. So its budget is generous: at least MIN_BULK_TRANSACTION_SECONDS.
        budget = self._transaction_seconds
        if bulk:
            budget = min(
                max(MIN_BULK_TRANSACTION_SECONDS, len(commits) * BULK_SECONDS_PER_COMMIT),
                MAX_BULK_TRANSACTION_SECONDS,
            )
        with pymongo.timeout(budget):
            async with self._client.start_session() as session:
                await session.with_transaction(write)

    async def _move_pointers(
        self, commits: Sequence[VersionCommit], session: AsyncClientSession
    ) -> None:
        created = [c for c in commits if c.slot.version == 1]
        if created:
            try:
                await self._current.insert_many(
                    [
                        {
                            "_id": Binary(c.slot.resource),
                            "patient": Binary(c.patient),
                            "version": 1,
                            "tag": Binary(c.tag),
                        }
                        for c in created
                    ],
                    session=session,
                )
            except BulkWriteError:
                raise StaleCurrent from None
        updated = [c for c in commits if c.slot.version > 1]
        if updated:
            moved = await self._current.bulk_write(
                [
                    UpdateOne(
                        {
                            "_id": Binary(c.slot.resource),
                            "version": c.slot.version - 1,
                            "patient": Binary(c.patient),
                        },
                        {"$set": {"version": c.slot.version, "tag": Binary(c.tag)}},
                    )
                    for c in updated
                ],
                session=session,
            )
            if moved.matched_count != len(updated):
                raise StaleCurrent

    async def _replace_index_entries(
        self, commits: Sequence[VersionCommit], session: AsyncClientSession
    ) -> None:
        resources = [Binary(c.slot.resource) for c in commits]
        await self._index.delete_many({"_id": {"$in": resources}}, session=session)
        await self._index.insert_many(
            [
                index_document(c.slot.resource, c.patient, c.index_tokens, c.blocking_tokens)
                for c in commits
            ],
            session=session,
        )

    async def _convert_token_rows(self) -> None:
        """Rows of the earlier index layout (one per token) become one document per
        resource. A resource that already has its document was committed since, under the
        new layout: its old rows are stale and only dropped. Safe to run on several
        replicas at once, and again after a crash (a search checks every result against
        the tokens sealed in its version, so a stale token never shows a resource).

        It runs while the earlier layout's indexes exist, and drops them last: looking for
        old rows in a collection without them is a full scan (0.7 s at 20,000 resources on
        secantusdb) that every start would pay. Replicas of the earlier version still
        writing after the upgrade's first start (a rolling upgrade) write rows no one
        converts: upgrade by replacing all of them."""
        legacy = (await self._index.index_information()).keys() & LEGACY_INDEX_NAMES
        if not legacy:
            return  # never held the earlier layout, or converted already
        old = {"token": {"$exists": True}}
        while rows := await self._index.find(old).limit(CONVERT_CHUNK).to_list():
            by_resource: dict[bytes, list[Document]] = {}
            for row in rows:
                by_resource.setdefault(bytes(row["resource"]), []).append(row)
            for resource, group in by_resource.items():
                tokens = [bytes(r["token"]) for r in group if not r.get("block")]
                blocks = [bytes(r["token"]) for r in group if r.get("block")]
                with contextlib.suppress(DuplicateKeyError):
                    await self._index.insert_one(
                        index_document(resource, bytes(group[0]["patient"]), tokens, blocks)
                    )
            await self._index.delete_many({"_id": {"$in": [r["_id"] for r in rows]}})
        # The earlier layout's indexes would otherwise be kept up on every commit.
        for name in legacy:
            with contextlib.suppress(OperationFailure):  # a replica dropped it first
                await self._index.drop_index(name)

    @mongo_errors
    async def abort(self, slot: VersionSlot, write_id: bytes) -> None:
        await self._versions.delete_one(
            {"_id": _slot_id(slot), "state": PENDING, "write": Binary(write_id)}
        )

    @mongo_errors
    async def sweep_pending(self, prepared_before: datetime) -> int:
        removed = await self._versions.delete_many(
            {"state": PENDING, "prepared_at": {"$lt": prepared_before}}
        )
        return removed.deleted_count

    # -- search, patients, idempotency ---------------------------------------------------

    @mongo_errors
    async def matching(
        self, groups: Sequence[Sequence[bytes]], after: bytes | None, limit: int
    ) -> list[bytes]:
        """Resources holding a token of every group, in resource order. One group drives:
        its resources are walked in order, a chunk at a time, and each chunk is checked
        against the other groups by fetching its index documents. The first group drives
        when it matches fewer than :data:`TOKEN_COUNT_CAP` resources (callers put the group
        likely to match fewest first: a patient's); only when it matches more are the others
        counted, and the rarest drives. A search with a selective parameter then costs what
        that parameter matches, not what a common one does (a LOINC code every patient
        has), whose entries are never read: on secantusdb, even a capped count or a limited
        find of a token reads every entry of it."""
        wanted = list(dict.fromkeys(tuple(sorted(set(group))) for group in groups))
        if not wanted or not all(wanted):
            return []  # no parameter, or one nothing can match (a date range past the end)
        first = await self._index.count_documents(_any_token(wanted[0]), limit=TOKEN_COUNT_CAP)
        if first == 0:
            return []
        ranked = wanted
        if first >= TOKEN_COUNT_CAP and len(wanted) > 1:
            counts = [first] + [
                await self._index.count_documents(_any_token(group), limit=TOKEN_COUNT_CAP)
                for group in wanted[1:]
            ]
            if min(counts) == 0:
                return []
            # Stable: among equally common groups, the caller's order stands.
            order = sorted(range(len(wanted)), key=counts.__getitem__)
            ranked = [wanted[i] for i in order]
        driver, others = ranked[0], ranked[1:]
        found: list[bytes] = []
        position = after
        while len(found) < limit:
            query = _any_token(driver)
            if position is not None:
                query["_id"] = {"$gt": Binary(position)}
            cursor = self._index.find(query, {"_id": 1}).sort("_id", 1)
            chunk: list[bytes] = []
            async for doc in cursor.limit(CANDIDATE_CHUNK):
                with _parsing():
                    chunk.append(_bytes(doc["_id"]))
            if not chunk:
                break
            holding = await self._holding_all(chunk, others)
            found += [r for r in chunk if r in holding][: limit - len(found)]
            position = chunk[-1]
            if len(chunk) < CANDIDATE_CHUNK:
                break
        return found

    async def _holding_all(
        self, resources: list[bytes], groups: Sequence[Sequence[bytes]]
    ) -> set[bytes]:
        """Those of ``resources`` holding a token of every one of ``groups``: their index
        documents fetched by id and checked here (a filter with ``$and`` made secantusdb
        scan the collection: 0.5 s a chunk at 5,000 resources)."""
        if not groups:
            return set(resources)
        wanted = [{bytes(t) for t in group} for group in groups]
        holding = set()
        query = {"_id": {"$in": [Binary(r) for r in resources]}}
        async for doc in self._index.find(query, {"tokens": 1}):
            with _parsing():
                tokens = {bytes(t) for t in doc["tokens"]}
                if all(tokens & group for group in wanted):
                    holding.add(_bytes(doc["_id"]))
        return holding

    @mongo_errors
    async def patient_resources(
        self, patient: bytes, after: bytes | None, limit: int
    ) -> list[CurrentPointer]:
        query: Document = {"patient": Binary(patient)}
        if after is not None:
            query["_id"] = {"$gt": Binary(after)}
        cursor = self._current.find(query).sort("_id", 1).limit(limit)
        return [_pointer(doc) async for doc in cursor]

    @mongo_errors
    async def idempotent(self, key_id: bytes) -> IdempotentWrite | None:
        doc = await self._idempotency.find_one({"_id": Binary(key_id)})
        return _idempotent(doc) if doc else None

    # -- bulk writes ---------------------------------------------------------------------

    @mongo_errors
    async def batch_attempt(self, key_id: bytes) -> BatchAttempt | None:
        doc = await self._batches.find_one({"_id": Binary(key_id)})
        return _batch_attempt(doc) if doc else None

    @mongo_errors
    async def insert_batch_attempt(self, attempt: BatchAttempt) -> BatchAttempt:
        await self._ready()
        try:
            await self._batches.insert_one(
                {
                    "_id": Binary(attempt.key_id),
                    "fingerprint": Binary(attempt.fingerprint),
                    "attempt": attempt.attempt,
                    "count": attempt.count,
                    "expires_at": attempt.expires,
                }
            )
        except DuplicateKeyError:
            stored = await self._batches.find_one({"_id": Binary(attempt.key_id)})
            if stored is None:  # expired meanwhile: the next retry starts afresh
                raise
            return _batch_attempt(stored)
        return attempt

    @mongo_errors
    async def replace_batch_attempt(self, stale: BatchAttempt, attempt: BatchAttempt) -> bool:
        await self._ready()
        replaced = await self._batches.update_one(
            {"_id": Binary(stale.key_id), "attempt": stale.attempt},
            {"$set": {"attempt": attempt.attempt, "expires_at": attempt.expires}},
        )
        return replaced.modified_count == 1

    @mongo_errors
    async def pending_at(
        self, slot: VersionSlot, write_id: bytes, prepared_after: datetime
    ) -> PendingAttempt | None:
        doc = await self._versions.find_one(
            {
                "_id": _slot_id(slot),
                "state": PENDING,
                "write": Binary(write_id),
                "prepared_at": {"$gte": prepared_after},
            }
        )
        return _pending_attempt(doc) if doc is not None and "retry_of" in doc else None

    @mongo_errors
    async def blocks(
        self, max_block: int, member: bytes | None = None
    ) -> tuple[list[list[bytes]], int]:
        match: Document = {"blocks": {"$exists": True}}
        if member is not None:
            own = await self._index.find_one({"_id": Binary(member)}, {"blocks": 1})
            tokens = [] if own is None else list(own.get("blocks", []))
            if not tokens:
                return [], 0
            # The member's tokens only: its documents through the multikey index, then
            # the other tokens of those documents dropped before grouping.
            match = {"blocks": {"$in": tokens}}
        pipeline: list[Document] = [
            {"$match": match},
            {"$unwind": "$blocks"},
            {"$match": match},
            {"$group": {"_id": "$blocks", "resources": {"$addToSet": "$_id"}}},
            {"$project": {"resources": 1, "size": {"$size": "$resources"}}},
            {"$match": {"size": {"$gt": 1}}},
        ]
        groups, oversized = [], 0
        async for doc in await self._index.aggregate(pipeline):
            with _parsing():
                resources = [_bytes(r) for r in doc["resources"]]
            if len(resources) > max_block:
                oversized += 1
            else:
                groups.append(sorted(resources))
        return groups, oversized

    # -- erasure -------------------------------------------------------------------------

    @mongo_errors
    async def erase(self, patient: bytes, when: datetime) -> int:
        await self._ready()
        who = Binary(patient)
        # The crypto-shredding and the tombstone, in one atomic update: from here on
        # nothing of the patient can be opened, nor written.
        await self._patients.update_one(
            {"_id": who},
            {
                "$set": {"erased": True, "erased_at": when},
                "$unset": dict.fromkeys(
                    ("wrapped", "created", "writes", "holder", "holder_tag"), ""
                ),
            },
            upsert=True,
        )
        await self._current.update_many(
            {"patient": who},
            {"$set": {"erased": True}, "$unset": {"patient": "", "version": "", "tag": ""}},
        )
        erased = await self._versions.count_documents({"patient": who, "state": COMMITTED})
        await self._versions.delete_many({"patient": who})
        await self._index.delete_many({"patient": who})
        await self._idempotency.delete_many({"patient": who})
        return erased
