"""MongoDB storage of the owning service's patient leaf indexes (the ``PatientLeafStore`` port
of :mod:`medledger.common.patient_log`), in that service's own database:

- ``<prefix>_patient_keys``   ``{_id: patient key, wrapped_key, scan_secret?}``: the
  patient's data key, wrapped by Vault transit, and their scan secret sealed under it (once
  known);
- ``<prefix>_patient_leaves`` ``{_id: leaf id, patient: patient key, sealed}``: one sealed
  row per ledger entry about the patient; index ``(patient, _id)``.

A patient key is a digest of the patient's pseudonym: nothing here names a patient in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.errors import DuplicateKeyError

from medledger.common.mongo import RunOnce, mongo_errors
from medledger.common.patient_log import SealedLeaf, StoredKeys

Document = dict[str, Any]


class MongoPatientLeafStore:
    def __init__(self, client: AsyncMongoClient[Document], database: str, prefix: str) -> None:
        db = client[database]
        self._keys = db[f"{prefix}_patient_keys"]
        self._leaves = db[f"{prefix}_patient_leaves"]
        self._ready = RunOnce(self._create_indexes)

    @mongo_errors
    async def ensure_indexes(self) -> None:
        await self._ready()

    async def _create_indexes(self) -> None:
        await self._leaves.create_index(
            [("patient", ASCENDING), ("_id", ASCENDING)], name="patient"
        )

    @mongo_errors
    async def keys(self, patient_key: str) -> StoredKeys | None:
        doc = await self._keys.find_one({"_id": patient_key})
        return None if doc is None else _stored_keys(doc)

    @mongo_errors
    async def keys_of(self, patient_keys: Sequence[str]) -> dict[str, StoredKeys]:
        cursor = self._keys.find({"_id": {"$in": list(patient_keys)}})
        return {str(doc["_id"]): _stored_keys(doc) async for doc in cursor}

    @mongo_errors
    async def add_wrapped_key(self, patient_key: str, wrapped: str) -> str:
        try:
            await self._keys.insert_one({"_id": patient_key, "wrapped_key": wrapped})
        except DuplicateKeyError:  # another append created it first: use that one
            stored = await self.keys(patient_key)
            if stored is not None:
                return stored.wrapped_key
            raise
        return wrapped

    @mongo_errors
    async def add_scan_secret(self, patient_key: str, sealed: bytes) -> bytes | None:
        # Set once: a second secret (a retry, a race) leaves the first in place.
        await self._keys.update_one(
            {"_id": patient_key, "scan_secret": {"$exists": False}},
            {"$set": {"scan_secret": Binary(sealed)}},
        )
        stored = await self.keys(patient_key)
        return None if stored is None else stored.sealed_scan_secret

    @mongo_errors
    async def add_leaf(self, patient_key: str, leaf: SealedLeaf) -> None:
        await self.ensure_indexes()
        await self._leaves.insert_one(
            {"_id": leaf.leaf_id, "patient": patient_key, "sealed": Binary(leaf.sealed)}
        )

    @mongo_errors
    async def replace_leaf(self, patient_key: str, leaf: SealedLeaf) -> None:
        await self._leaves.update_one(
            {"_id": leaf.leaf_id, "patient": patient_key},
            {"$set": {"sealed": Binary(leaf.sealed)}},
        )

    @mongo_errors
    async def add_leaves(self, rows: Sequence[tuple[str, SealedLeaf]]) -> None:
        await self.ensure_indexes()
        await self._leaves.insert_many(
            [
                {"_id": leaf.leaf_id, "patient": patient_key, "sealed": Binary(leaf.sealed)}
                for patient_key, leaf in rows
            ]
        )

    @mongo_errors
    async def replace_leaves(self, rows: Sequence[tuple[str, SealedLeaf]]) -> None:
        await self._leaves.bulk_write(
            [
                UpdateOne(
                    {"_id": leaf.leaf_id, "patient": patient_key},
                    {"$set": {"sealed": Binary(leaf.sealed)}},
                )
                for patient_key, leaf in rows
            ]
        )

    @mongo_errors
    async def leaves(self, patient_key: str, *, after: str, limit: int) -> Sequence[SealedLeaf]:
        cursor = (
            self._leaves.find({"patient": patient_key, "_id": {"$gt": after}})
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [SealedLeaf(str(doc["_id"]), bytes(doc["sealed"])) async for doc in cursor]

    @mongo_errors
    async def erase(self, patient_key: str) -> int:
        # The key first: from then on no row of this patient can be opened, even one
        # written by an append racing the erasure.
        await self._keys.delete_one({"_id": patient_key})
        deleted = await self._leaves.delete_many({"patient": patient_key})
        return int(deleted.deleted_count)


def _stored_keys(doc: dict[str, Any]) -> StoredKeys:
    secret = doc.get("scan_secret")
    return StoredKeys(str(doc["wrapped_key"]), None if secret is None else bytes(secret))
