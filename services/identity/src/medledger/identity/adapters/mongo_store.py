"""MongoDB storage of organisations, clients, users, seen client-assertion ids and the
organisations holding patients' records.

Layout (one database, ``identity_*`` collections):

- ``identity_organizations`` ``{_id: organization id, display_name, create_time}``
- ``identity_clients``  ``{_id: client id, organization, jwks_json, allowed_scopes,
  allowed_purposes, display_name, disabled, create_time, disable_time}``;
  index ``(organization, _id)`` for per-organisation listings
- ``identity_users``    ``{_id: user id, username (unique), kind, organization, patient_id,
  password_hash, totp_secret (Vault ciphertext), last_totp_step, disabled, disable_time,
  create_time}``; indexes ``(organization, username)``, ``patient_id``
- ``identity_assertions`` ``{_id: "client-id jti", expires_at}``; TTL index on
  ``expires_at`` (a replayed jti hits the primary key until the assertion has expired)
- ``identity_patient_holders`` ``{patient_id (unique), organization, register_time}``: the
  organisation holding each patient's record, as the record service registered it

Indexes are created before the first operation, so a uniqueness rule never depends on a
separate migration step having run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from medledger.common.errors import Aborted, AlreadyExists
from medledger.common.mongo import RunOnce, mongo_errors
from medledger.identity.domain.consent import Grantee, GranteeKind
from medledger.identity.domain.ports import (
    Client,
    Credentials,
    Organization,
    PatientHolder,
    User,
)

Document = dict[str, Any]


def _organization(doc: Document) -> Organization:
    return Organization(str(doc["_id"]), str(doc["display_name"]), doc["create_time"])


def _client(doc: Document) -> Client:
    return Client(
        client_id=str(doc["_id"]),
        organization=str(doc["organization"]),
        jwks_json=str(doc["jwks_json"]),
        allowed_scopes=tuple(doc["allowed_scopes"]),
        allowed_purposes=tuple(doc["allowed_purposes"]),
        display_name=str(doc.get("display_name", "")),
        create_time=doc["create_time"],
        disabled=bool(doc.get("disabled", False)),
        disable_time=doc.get("disable_time"),
    )


def _user(doc: Document) -> User:
    return User(
        user_id=str(doc["_id"]),
        username=str(doc["username"]),
        kind=str(doc["kind"]),
        organization=str(doc["organization"]),
        patient_id=str(doc.get("patient_id", "")),
        totp_enabled=bool(doc.get("totp_secret")),
        create_time=doc["create_time"],
        disabled=bool(doc.get("disabled", False)),
        disable_time=doc.get("disable_time"),
    )


# The sealed TOTP secret is read only to tell whether there is one.
_USER_FIELDS = {"password_hash": 0}


class IdentityStore:
    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        db = client[database]
        self._organizations = db["identity_organizations"]
        self._clients = db["identity_clients"]
        self._users = db["identity_users"]
        self._assertions = db["identity_assertions"]
        self._holders = db["identity_patient_holders"]
        self._ready = RunOnce(self._create_indexes)

    async def ensure_indexes(self) -> None:
        """Creates the indexes now (operations also do it before their first write)."""
        await self._ready()

    async def _create_indexes(self) -> None:
        await self._users.create_index([("username", ASCENDING)], unique=True)
        await self._users.create_index([("organization", ASCENDING), ("username", ASCENDING)])
        await self._clients.create_index([("organization", ASCENDING), ("_id", ASCENDING)])
        await self._assertions.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        await self._holders.create_index("patient_id", name="patient_id", unique=True)

    # -- organisations -------------------------------------------------------------------

    @mongo_errors
    async def insert_organization(self, organization: Organization) -> None:
        await self._ready()
        try:
            await self._organizations.insert_one(
                {
                    "_id": organization.organization_id,
                    "display_name": organization.display_name,
                    "create_time": organization.create_time,
                }
            )
        except DuplicateKeyError:
            raise AlreadyExists(
                "the organization already exists", reason="ORGANIZATION_EXISTS"
            ) from None

    @mongo_errors
    async def organization(self, organization_id: str) -> Organization | None:
        doc = await self._organizations.find_one({"_id": organization_id})
        return _organization(doc) if doc else None

    @mongo_errors
    async def organizations(self, after: str, limit: int) -> Sequence[Organization]:
        cursor = self._organizations.find({"_id": {"$gt": after}}).sort("_id", 1).limit(limit)
        return [_organization(doc) async for doc in cursor]

    # -- clients -------------------------------------------------------------------------

    @mongo_errors
    async def insert_client(self, client: Client) -> None:
        await self._ready()
        try:
            await self._clients.insert_one(
                {
                    "_id": client.client_id,
                    "organization": client.organization,
                    "jwks_json": client.jwks_json,
                    "allowed_scopes": list(client.allowed_scopes),
                    "allowed_purposes": list(client.allowed_purposes),
                    "display_name": client.display_name,
                    "disabled": client.disabled,
                    "create_time": client.create_time,
                    "disable_time": client.disable_time,
                }
            )
        except DuplicateKeyError:
            raise AlreadyExists("the client already exists", reason="CLIENT_EXISTS") from None

    @mongo_errors
    async def client(self, client_id: str) -> Client | None:
        doc = await self._clients.find_one({"_id": client_id})
        return _client(doc) if doc else None

    @mongo_errors
    async def clients(self, organization: str, after: str, limit: int) -> Sequence[Client]:
        query: Document = {"_id": {"$gt": after}}
        if organization:
            query["organization"] = organization
        cursor = self._clients.find(query).sort("_id", 1).limit(limit)
        return [_client(doc) async for doc in cursor]

    @mongo_errors
    async def disable_client(self, client_id: str, when: datetime) -> Client | None:
        await self._clients.update_one(
            {"_id": client_id, "disabled": False},
            {"$set": {"disabled": True, "disable_time": when}},
        )
        return await self.client(client_id)

    @mongo_errors
    async def set_client_scopes(self, client_id: str, scopes: Sequence[str]) -> Client | None:
        doc = await self._clients.find_one_and_update(
            {"_id": client_id},
            {"$set": {"allowed_scopes": list(scopes)}},
            return_document=ReturnDocument.AFTER,
        )
        return _client(doc) if doc else None

    # -- users ---------------------------------------------------------------------------

    @mongo_errors
    async def insert_user(self, user: User, password_hash: str, sealed_totp_secret: str) -> None:
        await self._ready()
        try:
            await self._users.insert_one(
                {
                    "_id": user.user_id,
                    "username": user.username,
                    "kind": user.kind,
                    "organization": user.organization,
                    "patient_id": user.patient_id,
                    "password_hash": password_hash,
                    "totp_secret": sealed_totp_secret,
                    "last_totp_step": 0,
                    "disabled": user.disabled,
                    "disable_time": user.disable_time,
                    "create_time": user.create_time,
                }
            )
        except DuplicateKeyError:
            raise AlreadyExists("the username is taken", reason="USERNAME_TAKEN") from None

    @mongo_errors
    async def users(self, organization: str, after: str, limit: int) -> Sequence[User]:
        query: Document = {"username": {"$gt": after}}
        if organization:
            query["organization"] = organization
        cursor = self._users.find(query, _USER_FIELDS).sort("username", 1).limit(limit)
        return [_user(doc) async for doc in cursor]

    @mongo_errors
    async def user(self, user_id: str) -> User | None:
        doc = await self._users.find_one({"_id": user_id}, _USER_FIELDS)
        return _user(doc) if doc else None

    async def _update_user(self, user_id: str, update: Document) -> User | None:
        doc = await self._users.find_one_and_update(
            {"_id": user_id},
            update,
            projection=_USER_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        return _user(doc) if doc else None

    @mongo_errors
    async def set_user_disabled(self, user_id: str, when: datetime | None) -> User | None:
        if when is None:
            return await self._update_user(
                user_id, {"$set": {"disabled": False, "disable_time": None}}
            )
        await self._users.update_one(
            {"_id": user_id, "disabled": {"$ne": True}},
            {"$set": {"disabled": True, "disable_time": when}},
        )
        return await self.user(user_id)

    @mongo_errors
    async def set_password_hash(self, user_id: str, password_hash: str) -> User | None:
        return await self._update_user(user_id, {"$set": {"password_hash": password_hash}})

    @mongo_errors
    async def set_totp_secret(self, user_id: str, sealed_totp_secret: str) -> User | None:
        return await self._update_user(
            user_id, {"$set": {"totp_secret": sealed_totp_secret, "last_totp_step": 0}}
        )

    @mongo_errors
    async def credentials(self, username: str) -> Credentials | None:
        doc = await self._users.find_one({"username": username})
        if doc is None:
            return None
        return Credentials(
            user=_user(doc),
            password_hash=str(doc["password_hash"]),
            sealed_totp_secret=str(doc.get("totp_secret") or ""),
            last_totp_step=int(doc.get("last_totp_step", 0)),
        )

    @mongo_errors
    async def login_succeeded(
        self, user_id: str, *, totp_step: int, password_hash: str | None
    ) -> bool:
        update: Document = {}
        query: Document = {"_id": user_id}
        if totp_step:
            query["last_totp_step"] = {"$lt": totp_step}
            update["last_totp_step"] = totp_step
        if password_hash is not None:
            update["password_hash"] = password_hash
        if not update:
            return True
        result = await self._users.update_one(query, {"$set": update})
        return result.matched_count == 1

    @mongo_errors
    async def patient_organization(self, patient_id: str) -> str | None:
        """The organisation registered as holding the record of ``patient_id``, else that of
        the PATIENT user who is ``patient_id``; None when neither is known."""
        holder = await self._holders.find_one({"patient_id": patient_id}, {"organization": 1})
        if holder is not None:
            return str(holder["organization"])
        return await self._patient_user_organization(patient_id)

    @mongo_errors
    async def patient_user_organization(self, patient_id: str) -> str | None:
        """The organisation of the PATIENT user who is ``patient_id``, if there is one."""
        return await self._patient_user_organization(patient_id)

    async def _patient_user_organization(self, patient_id: str) -> str | None:
        doc = await self._users.find_one(
            {"patient_id": patient_id, "kind": "patient"}, {"organization": 1}
        )
        return str(doc["organization"]) if doc else None

    @mongo_errors
    async def patient_of_user(self, user_id: str) -> str | None:
        """The Patient id of a PATIENT user; None for anyone else."""
        doc = await self._users.find_one({"_id": user_id, "kind": "patient"}, {"patient_id": 1})
        return str(doc["patient_id"]) if doc else None

    @mongo_errors
    async def practitioner_organization(self, user_id: str) -> str | None:
        """The organisation of a PRACTITIONER user who is not disabled, if ``user_id`` is one."""
        doc = await self._users.find_one(
            {"_id": user_id, "kind": "practitioner", "disabled": {"$ne": True}},
            {"organization": 1},
        )
        return str(doc["organization"]) if doc else None

    @mongo_errors
    async def grantee_exists(self, grantee: Grantee) -> bool:
        """Whether the organisation, client (disabled or not) or user exists."""
        collection = {
            GranteeKind.ORGANIZATION: self._organizations,
            GranteeKind.CLIENT: self._clients,
            GranteeKind.USER: self._users,
        }[grantee.kind]
        return await collection.find_one({"_id": grantee.id}, {"_id": 1}) is not None

    # -- client assertions ---------------------------------------------------------------

    @mongo_errors
    async def remember_assertion(self, client_id: str, jti: str, expires: datetime) -> bool:
        await self._ready()
        try:
            await self._assertions.insert_one({"_id": f"{client_id} {jti}", "expires_at": expires})
        except DuplicateKeyError:
            return False
        return True

    @mongo_errors
    async def forget_assertion(self, client_id: str, jti: str) -> None:
        await self._ready()
        await self._assertions.delete_one({"_id": f"{client_id} {jti}"})

    # -- record holders ------------------------------------------------------------------

    @mongo_errors
    async def add_holder(self, holder: PatientHolder) -> tuple[PatientHolder, bool]:
        await self._ready()
        try:
            await self._holders.insert_one(
                {
                    "patient_id": holder.patient_id,
                    "organization": holder.organization,
                    "register_time": holder.register_time,
                }
            )
        except DuplicateKeyError:
            stored = await self.holder(holder.patient_id)
            if stored is None:  # removed in between: the caller's retry registers it
                raise Aborted(
                    "the holder changed meanwhile; retry", reason="HOLDER_CHANGED"
                ) from None
            return stored, False
        return holder, True

    @mongo_errors
    async def holder(self, patient_id: str) -> PatientHolder | None:
        doc = await self._holders.find_one({"patient_id": patient_id})
        if doc is None:
            return None
        return PatientHolder(str(doc["patient_id"]), str(doc["organization"]), doc["register_time"])

    @mongo_errors
    async def remove_holder(self, patient_id: str) -> int:
        result = await self._holders.delete_many({"patient_id": patient_id})
        return int(result.deleted_count)
