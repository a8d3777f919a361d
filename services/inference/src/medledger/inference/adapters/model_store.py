"""MongoDB storage of the model registry.

``inference_models``: one document per model version, unique on ``(name, version)``:
``{name, version, fingerprint, digest, task, features: [{name, code, code_system, unit,
min_value, max_value}], card_json, register_time, entry, receipt, registered}``. A document
is written ``registered: false`` with its ledger ``entry`` (the exact bytes to append) and
``receipt: null``; it counts (GetModel, ListModels) only once the receipt is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from bson.binary import Binary
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from medledger.common.mongo import RunOnce, mongo_errors
from medledger.inference.domain.registration import (
    FeatureDefinition,
    ModelRegistration,
    ModelTask,
)
from medledger.inference.domain.registry import StoredModel

Document = dict[str, Any]
MODELS: Final = "inference_models"


def _document(model: StoredModel) -> Document:
    registration = model.registration
    return {
        "name": registration.name,
        "version": registration.version,
        "fingerprint": model.fingerprint,
        "digest": Binary(registration.digest),
        "task": registration.task.value if registration.task is not None else None,
        "features": [
            {
                "name": f.name,
                "code": f.code,
                "code_system": f.code_system,
                "unit": f.unit,
                "min_value": f.min_value,
                "max_value": f.max_value,
            }
            for f in registration.features
        ],
        "card_json": registration.card_json,
        "register_time": model.register_time,
        "entry": Binary(model.entry),
        "receipt": Binary(model.receipt) if model.receipt is not None else None,
        "registered": model.receipt is not None,
    }


def _model(doc: Document) -> StoredModel:
    registration = ModelRegistration(
        name=doc["name"],
        version=int(doc["version"]),
        digest=bytes(doc["digest"]),
        task=ModelTask(doc["task"]) if doc.get("task") else None,
        features=tuple(
            FeatureDefinition(
                name=f["name"],
                code=f["code"],
                code_system=f.get("code_system", ""),
                unit=f.get("unit", ""),
                min_value=float(f["min_value"]),
                max_value=float(f["max_value"]),
            )
            for f in doc["features"]
        ),
        card_json=doc["card_json"],
    )
    when: datetime = doc["register_time"]
    receipt = doc.get("receipt")
    return StoredModel(
        registration=registration,
        fingerprint=doc["fingerprint"],
        register_time=when if when.tzinfo is not None else when.replace(tzinfo=UTC),
        entry=bytes(doc["entry"]),
        receipt=bytes(receipt) if receipt is not None else None,
    )


class ModelStore:
    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        self._models = client[database][MODELS]
        self._indexes = RunOnce(self.ensure_indexes)

    @mongo_errors
    async def ensure_indexes(self) -> None:
        """Creates the indexes (idempotent); run by the first call that needs them."""
        await self._models.create_index(
            [("name", ASCENDING), ("version", ASCENDING)], name="name_version", unique=True
        )

    @mongo_errors
    async def find(self, name: str, version: int) -> StoredModel | None:
        doc = await self._models.find_one({"name": name, "version": version})
        return _model(doc) if doc is not None else None

    @mongo_errors
    async def insert_pending(self, model: StoredModel) -> StoredModel | None:
        await self._indexes()
        try:
            await self._models.insert_one(_document(model))
        except DuplicateKeyError:
            existing = await self.find(model.registration.name, model.registration.version)
            if existing is None:  # removed in between: no one else holds it now
                return await self.insert_pending(model)
            return existing
        return None

    @mongo_errors
    async def mark_registered(self, model: StoredModel, receipt: bytes) -> StoredModel:
        registration = model.registration
        key = {"name": registration.name, "version": registration.version}
        await self._models.update_one(
            {**key, "fingerprint": model.fingerprint, "receipt": None},
            {"$set": {"receipt": Binary(receipt), "registered": True}},
        )
        doc = await self._models.find_one(key)
        if doc is None:
            raise LookupError("a model registration vanished while it was being ledgered")
        return _model(doc)

    @mongo_errors
    async def registered(self, name: str, version: int) -> StoredModel | None:
        query: Document = {"name": name, "registered": True}
        if version:
            query["version"] = version
        doc = await self._models.find_one(
            query, sort=[("version", DESCENDING)], projection={"entry": 0}
        )
        return _model({**doc, "entry": b""}) if doc is not None else None

    @mongo_errors
    async def list_registered(
        self, after: tuple[str, int] | None, limit: int
    ) -> Sequence[StoredModel]:
        query: Document = {"registered": True}
        if after is not None:
            name, version = after
            query["$or"] = [{"name": {"$gt": name}}, {"name": name, "version": {"$gt": version}}]
        cursor = self._models.find(
            query,
            sort=[("name", ASCENDING), ("version", ASCENDING)],
            limit=limit,
            projection={"entry": 0},
        )
        return [_model({**doc, "entry": b""}) async for doc in cursor]
