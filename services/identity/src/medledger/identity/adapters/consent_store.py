"""MongoDB storage of consents and of the break-glass audit.

- ``identity_consents``  one document per consent:
  ``{_id: consent id, patient_id, grantee: {kind, id}, grantee_key: "kind:id", resource_types,
  categories, purposes, period_start, period_end, granted_by, proxy_relationship,
  grantor_role, recorded_by, create_time, revoke_time, revoked_by, ledgered, salt, grant_receipt,
  revoke_receipt, idempotency?, request_digest}``.
  A consent is written ``ledgered: false`` first and counts (for decisions, reads and lists)
  only once its CONSENT_GRANTED entry is in the ledger; ``idempotency`` (present only with a
  key) is unique.
- ``identity_break_glass``  one document per break-glass attempt, with the reason (kept here
  only, never in the ledger) and the ledger leaf once permitted; ``patient_id`` is emptied
  when the patient is erased.

Erasing a patient deletes their consents outright (whatever their state).

Decisions read ``identity_consents`` through the ``(patient_id, grantee_key, _id)`` index,
one query each and no cache, so a revocation denies on the very next decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from medledger.common.errors import Aborted
from medledger.common.mongo import mongo_errors
from medledger.identity.domain.access import Action, BreakGlassRecord
from medledger.identity.domain.consent import (
    Consent,
    ConsentStatus,
    ConsentTerms,
    Grantee,
    GranteeKind,
    GrantorRole,
    Purpose,
)
from medledger.identity.domain.ports import ConsentQuery, StoredConsent

Document = dict[str, Any]
CONSENTS = "identity_consents"
BREAK_GLASS = "identity_break_glass"
# The decision reads none of these.
_HEAVY_FIELDS = {"grant_receipt": 0, "revoke_receipt": 0, "salt": 0, "request_digest": 0}


def _aware(when: datetime | None) -> datetime | None:
    """Datetimes read back from a client without ``tz_aware`` are naive UTC."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)


def _time(doc: Document, name: str) -> datetime:
    when: datetime = doc[name]
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def consent_document(consent: Consent, *, ledgered: bool) -> Document:
    """The stored form of ``consent`` (what a bulk loader writes, too)."""
    terms = consent.terms
    return {
        "_id": consent.consent_id,
        "patient_id": terms.patient_id,
        "grantee": {"kind": terms.grantee.kind.value, "id": terms.grantee.id},
        "grantee_key": terms.grantee.key,
        "resource_types": list(terms.resource_types),
        "categories": list(terms.categories),
        "purposes": [p.value for p in terms.purposes],
        "period_start": terms.period_start,
        "period_end": terms.period_end,
        "granted_by": terms.granted_by,
        "proxy_relationship": terms.proxy_relationship,
        "grantor_role": terms.grantor_role.value,
        "recorded_by": consent.recorded_by,
        "create_time": consent.create_time,
        "revoke_time": consent.revoke_time,
        "revoked_by": consent.revoked_by,
        "ledgered": ledgered,
    }


def _grantor_role(doc: Document) -> GrantorRole:
    """Consents stored before roles were recorded: the patient when it recorded its own."""
    if "grantor_role" in doc:
        return GrantorRole(doc["grantor_role"])
    if doc.get("recorded_by", "") == doc["granted_by"] and not doc.get("proxy_relationship"):
        return GrantorRole.PATIENT
    return GrantorRole.RECORD_HOLDER


def _consent(doc: Document) -> Consent:
    return Consent(
        consent_id=doc["_id"],
        terms=ConsentTerms(
            patient_id=doc["patient_id"],
            grantee=Grantee(GranteeKind(doc["grantee"]["kind"]), doc["grantee"]["id"]),
            resource_types=tuple(doc["resource_types"]),
            categories=tuple(doc["categories"]),
            purposes=tuple(Purpose(p) for p in doc["purposes"]),
            period_start=_time(doc, "period_start"),
            period_end=_aware(doc.get("period_end")),
            granted_by=doc["granted_by"],
            proxy_relationship=doc.get("proxy_relationship", ""),
            grantor_role=_grantor_role(doc),
        ),
        create_time=_time(doc, "create_time"),
        recorded_by=doc.get("recorded_by", ""),
        revoke_time=_aware(doc.get("revoke_time")),
        revoked_by=doc.get("revoked_by", ""),
    )


def _stored(doc: Document) -> StoredConsent:
    def optional_bytes(name: str) -> bytes | None:
        value = doc.get(name)
        return bytes(value) if value is not None else None

    return StoredConsent(
        consent=_consent(doc),
        ledgered=bool(doc.get("ledgered")),
        salt=bytes(doc.get("salt", b"")),
        request_digest=doc.get("request_digest", ""),
        grant_receipt=optional_bytes("grant_receipt"),
        revoke_receipt=optional_bytes("revoke_receipt"),
    )


def _status_filter(status: ConsentStatus | None, now: datetime) -> Document:
    """The stored form of a status that is only ever derived at read time."""
    if status is ConsentStatus.REVOKED:
        return {"revoke_time": {"$ne": None}}
    if status is ConsentStatus.EXPIRED:
        return {"revoke_time": None, "period_end": {"$ne": None, "$lte": now}}
    if status is ConsentStatus.ACTIVE:
        return {"revoke_time": None, "$or": [{"period_end": None}, {"period_end": {"$gt": now}}]}
    return {}


def _break_glass_document(record: BreakGlassRecord) -> Document:
    return {
        "_id": record.record_id,
        "time": record.time,
        "principal_id": record.principal_id,
        "organization": record.organization,
        "client_id": record.client_id,
        "patient_id": record.patient_id,
        "resource_type": record.resource_type,
        "action": record.action.value,
        "reason": record.reason,
        "salt": Binary(record.salt),
        "leaf_index": record.leaf_index,
    }


def _break_glass_record(doc: Document) -> BreakGlassRecord:
    return BreakGlassRecord(
        record_id=doc["_id"],
        time=_time(doc, "time"),
        principal_id=doc["principal_id"],
        organization=doc["organization"],
        client_id=doc.get("client_id", ""),
        patient_id=doc["patient_id"],
        resource_type=doc["resource_type"],
        action=Action(doc["action"]),
        reason=doc["reason"],
        salt=bytes(doc["salt"]),
        leaf_index=doc.get("leaf_index"),
    )


class ConsentStore:
    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        db = client[database]
        self._consents = db[CONSENTS]
        self._break_glass = db[BREAK_GLASS]

    @mongo_errors
    async def ensure_indexes(self) -> None:
        """Creates the indexes (idempotent); run once at start-up."""
        await self._consents.create_index(
            [("patient_id", ASCENDING), ("grantee_key", ASCENDING), ("_id", ASCENDING)],
            name="patient_grantee",
        )
        await self._consents.create_index(
            [("grantee_key", ASCENDING), ("_id", ASCENDING)], name="grantee"
        )
        await self._consents.create_index(
            [("patient_id", ASCENDING), ("_id", ASCENDING)], name="patient"
        )
        await self._consents.create_index(
            "idempotency", name="idempotency", unique=True, sparse=True
        )
        await self._break_glass.create_index(
            [("patient_id", ASCENDING), ("_id", ASCENDING)], name="patient"
        )
        await self._break_glass.create_index(
            [("organization", ASCENDING), ("_id", ASCENDING)], name="organization"
        )
        await self._break_glass.create_index(
            [("principal_id", ASCENDING), ("time", ASCENDING)], name="principal_time"
        )

    # --- grants -----------------------------------------------------------------------------

    @mongo_errors
    async def insert_pending(
        self, consent: Consent, *, salt: bytes, idempotency: str, request_digest: str
    ) -> StoredConsent | None:
        """Writes a consent that does not count yet; returns the consent already stored
        under ``idempotency`` instead, if there is one (None when this one was written)."""
        doc = consent_document(consent, ledgered=False) | {
            "salt": Binary(salt),
            "request_digest": request_digest,
            "grant_receipt": None,
            "revoke_receipt": None,
        }
        if idempotency:
            doc["idempotency"] = idempotency
        try:
            await self._consents.insert_one(doc)
        except DuplicateKeyError:
            existing = await self._consents.find_one({"idempotency": idempotency})
            if existing is None:  # the other write was discarded in between
                raise Aborted(
                    "a concurrent attempt with this idempotency key failed; retry",
                    reason="CONCURRENT_GRANT",
                ) from None
            return _stored(existing)
        return None

    @mongo_errors
    async def find_idempotent(self, idempotency: str) -> StoredConsent | None:
        doc = await self._consents.find_one({"idempotency": idempotency})
        return _stored(doc) if doc is not None else None

    @mongo_errors
    async def mark_granted(self, consent_id: str, receipt: bytes) -> bool:
        """Makes the consent count; False when it is gone (a failed attempt discarded it)."""
        result = await self._consents.update_one(
            {"_id": consent_id}, {"$set": {"ledgered": True, "grant_receipt": Binary(receipt)}}
        )
        return result.matched_count == 1

    @mongo_errors
    async def discard_pending(self, consent_id: str) -> None:
        await self._consents.delete_one({"_id": consent_id, "ledgered": False})

    # --- reads ------------------------------------------------------------------------------

    @mongo_errors
    async def get(self, consent_id: str) -> StoredConsent | None:
        """A consent that counts (its grant is ledgered); None otherwise."""
        doc = await self._consents.find_one({"_id": consent_id})
        return _stored(doc) if doc is not None and doc.get("ledgered") else None

    @mongo_errors
    async def consents_for(self, patient_id: str, grantee_keys: Sequence[str]) -> list[Consent]:
        # Only the index's own fields in the filter, so any server answers from the index
        # alone; the few documents of one patient and grantee are then checked here.
        cursor = self._consents.find(
            {"patient_id": patient_id, "grantee_key": {"$in": list(grantee_keys)}},
            projection=_HEAVY_FIELDS,
        )
        return [
            _consent(doc)
            async for doc in cursor
            if doc.get("ledgered") and doc.get("revoke_time") is None
        ]

    @mongo_errors
    async def list_consents(
        self, query: ConsentQuery, *, after: str, limit: int, now: datetime
    ) -> list[Consent]:
        """Up to ``limit`` consents after id ``after`` in id (creation) order."""
        selector: Document = {"ledgered": True} | _status_filter(query.status, now)
        if query.patient_id:
            selector["patient_id"] = query.patient_id
        if query.grantee_key:
            selector["grantee_key"] = query.grantee_key
        if after:
            selector["_id"] = {"$gt": after}
        cursor = (
            self._consents.find(selector, projection=_HEAVY_FIELDS)
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [_consent(doc) async for doc in cursor]

    # --- revocation -------------------------------------------------------------------------

    @mongo_errors
    async def revoke(self, consent_id: str, revoked_by: str, now: datetime) -> StoredConsent | None:
        """Revokes the consent at ``now`` unless it already is (then it is left as it was);
        None when there is no such consent."""
        doc = await self._consents.find_one_and_update(
            {"_id": consent_id, "ledgered": True, "revoke_time": None},
            {"$set": {"revoke_time": now, "revoked_by": revoked_by}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self._consents.find_one({"_id": consent_id, "ledgered": True})
        return _stored(doc) if doc is not None else None

    @mongo_errors
    async def set_revoke_receipt(self, consent_id: str, receipt: bytes) -> None:
        await self._consents.update_one(
            {"_id": consent_id}, {"$set": {"revoke_receipt": Binary(receipt)}}
        )

    # --- erasure ----------------------------------------------------------------------------

    @mongo_errors
    async def erase_patient(self, patient_id: str) -> int:
        result = await self._consents.delete_many({"patient_id": patient_id})
        return int(result.deleted_count)

    @mongo_errors
    async def unlink_patient(self, patient_id: str) -> int:
        result = await self._break_glass.update_many(
            {"patient_id": patient_id}, {"$set": {"patient_id": ""}}
        )
        return int(result.modified_count)

    # --- break-glass audit --------------------------------------------------------------------

    @mongo_errors
    async def open_break_glass(self, record: BreakGlassRecord) -> None:
        await self._break_glass.insert_one(_break_glass_document(record))

    @mongo_errors
    async def close_break_glass(self, record_id: str, leaf_index: int) -> None:
        await self._break_glass.update_one({"_id": record_id}, {"$set": {"leaf_index": leaf_index}})

    @mongo_errors
    async def count_break_glass(self, principal_id: str, since: datetime) -> int:
        return await self._break_glass.count_documents(
            {"principal_id": principal_id, "time": {"$gte": since}}
        )

    @mongo_errors
    async def list_break_glass(
        self, *, patient_id: str, organization: str, after: str, limit: int
    ) -> list[BreakGlassRecord]:
        """Break-glass attempts of a patient and/or by an organisation, oldest first."""
        selector: Document = {}
        if patient_id:
            selector["patient_id"] = patient_id
        if organization:
            selector["organization"] = organization
        if after:
            selector["_id"] = {"$gt": after}
        cursor = self._break_glass.find(selector).sort("_id", ASCENDING).limit(limit)
        return [_break_glass_record(doc) async for doc in cursor]
