"""Organisations, partner clients and users: validation, authorisation, creation, listing.

Users: only admins create, list, disable and reset them; a user sees only themselves.
Practitioners and admins are always enrolled in TOTP (see tokens.py for logins).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeVar

from medledger.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from medledger.common.interceptors import Principal
from medledger.common.paging import Listing, Page, page, page_size
from medledger.identity.domain import passwords
from medledger.identity.domain.authz import authenticated, organization_filter, require_admin
from medledger.identity.domain.client_keys import validate_client_jwks
from medledger.identity.domain.passwords import Passwords
from medledger.identity.domain.ports import (
    SECOND_FACTOR_KINDS,
    USER_KINDS,
    Client,
    DirectoryStorage,
    Organization,
    SecretSealer,
    User,
)
from medledger.identity.domain.scopes import ADMIN, normalized, parse_scopes

ORGANIZATION_ID: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Client ids are ledger actors, so they fit the ledger's identifier pattern.
CLIENT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{2,63}$")
USERNAME: Final = re.compile(r"^[a-z0-9][a-z0-9._@+-]{2,127}$")
PATIENT_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id
MAX_DISPLAY_NAME: Final = 200

T = TypeVar("T")


def utc_now() -> datetime:
    """Now, to the millisecond: what MongoDB keeps, so a created object reads back equal."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _display_name(problems: list[FieldViolation], field: str, value: str) -> None:
    if len(value) > MAX_DISPLAY_NAME or not value.isprintable():
        problems.append(
            FieldViolation(field, f"must be printable and at most {MAX_DISPLAY_NAME} characters")
        )


def require_match(
    problems: list[FieldViolation], field: str, value: str, pattern: re.Pattern[str]
) -> None:
    """Adds the violation of ``field`` unless ``value`` is given and matches ``pattern``."""
    if not value:
        problems.append(FieldViolation(field, "is required"))
    elif not pattern.fullmatch(value):
        problems.append(FieldViolation(field, f"must match {pattern.pattern}"))


def _collect(problems: list[FieldViolation], check: Callable[[], T]) -> T | None:
    """``check()``, or None with its field violations added to ``problems``."""
    try:
        return check()
    except InvalidArgument as exc:
        problems.extend(exc.violations)
        return None


@dataclass(frozen=True)
class NewClient:
    client_id: str
    organization: str
    jwks_json: str
    allowed_scopes: Sequence[str]
    allowed_purposes: Sequence[str]  # codes; the servicer rejects unknown enum values
    display_name: str = ""


@dataclass(frozen=True)
class NewUser:
    username: str
    password: str
    kind: str
    organization: str
    patient_id: str = ""
    enroll_totp: bool = False  # implied for SECOND_FACTOR_KINDS
    # A base32 TOTP secret the operator supplied (the bootstrap admin's); empty: a new one.
    totp_secret: str = ""


@dataclass(frozen=True)
class CreatedUser:
    user: User
    totp_provisioning_uri: str  # shown once; empty without TOTP


def _user_id(user_id: str) -> None:
    if not user_id:
        raise InvalidArgument([FieldViolation("user_id", "is required")])


def _no_such_user() -> NotFound:
    return NotFound("no such user", reason="USER_NOT_FOUND")


class Directory:
    def __init__(
        self,
        store: DirectoryStorage,
        sealer: SecretSealer,
        passwords: Passwords,
        *,
        totp_issuer: str,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._passwords = passwords
        self._totp_issuer = totp_issuer
        self._clock = clock

    async def _existing_organization(self, organization_id: str) -> Organization:
        found = await self._store.organization(organization_id)
        if found is None:
            raise FailedPrecondition(
                "the organization does not exist", reason="ORGANIZATION_NOT_FOUND"
            )
        return found

    # -- organisations -------------------------------------------------------------------

    async def create_organization(
        self, principal: Principal | None, organization_id: str, display_name: str
    ) -> Organization:
        require_admin(principal)
        problems: list[FieldViolation] = []
        require_match(problems, "organization_id", organization_id, ORGANIZATION_ID)
        _display_name(problems, "display_name", display_name)
        if problems:
            raise InvalidArgument(problems)
        organization = Organization(organization_id, display_name or organization_id, self._clock())
        await self._store.insert_organization(organization)
        return organization

    async def get_organization(
        self, principal: Principal | None, organization_id: str
    ) -> Organization:
        authenticated(principal)
        found = await self._store.organization(organization_id)
        if found is None:
            raise NotFound("no such organization", reason="ORGANIZATION_NOT_FOUND")
        return found

    async def list_organizations(
        self, principal: Principal | None, requested_size: int, token: str
    ) -> Page[Organization]:
        authenticated(principal)
        size = page_size(requested_size)
        listing = Listing("identity.ListOrganizations")
        found = await self._store.organizations(listing.cursor(token) or "", size + 1)
        return page(found, size, lambda o: o.organization_id, listing)

    # -- clients -------------------------------------------------------------------------

    async def register_client(self, principal: Principal | None, new: NewClient) -> Client:
        require_admin(principal)
        problems: list[FieldViolation] = []
        require_match(problems, "client_id", new.client_id, CLIENT_ID)
        require_match(problems, "organization", new.organization, ORGANIZATION_ID)
        _display_name(problems, "display_name", new.display_name)
        if not new.allowed_scopes:
            problems.append(FieldViolation("allowed_scopes", "must name at least one scope"))
        jwks_json = _collect(problems, lambda: validate_client_jwks(new.jwks_json, "jwks_json"))
        scopes = _collect(problems, lambda: parse_scopes(new.allowed_scopes, "allowed_scopes"))
        if problems:
            raise InvalidArgument(problems)
        await self._existing_organization(new.organization)
        client = Client(
            client_id=new.client_id,
            organization=new.organization,
            jwks_json=jwks_json or "",
            allowed_scopes=tuple(normalized(scopes or [])),
            allowed_purposes=tuple(dict.fromkeys(new.allowed_purposes)),
            display_name=new.display_name,
            create_time=self._clock(),
        )
        await self._store.insert_client(client)
        return client

    async def set_client_scopes(
        self, principal: Principal | None, client_id: str, allowed_scopes: Sequence[str]
    ) -> bool:
        """Makes ``allowed_scopes`` the scopes the client may request (tokens already issued
        keep theirs until they expire); False when it already had exactly these."""
        require_admin(principal)
        if not allowed_scopes:
            raise InvalidArgument(
                [FieldViolation("allowed_scopes", "must name at least one scope")]
            )
        scopes = tuple(normalized(parse_scopes(allowed_scopes, "allowed_scopes")))
        found = await self._store.client(client_id)
        if found is None:
            raise NotFound("no such client", reason="CLIENT_NOT_FOUND")
        if found.allowed_scopes == scopes:
            return False
        return await self._store.set_client_scopes(client_id, scopes) is not None

    async def get_client(self, principal: Principal | None, client_id: str) -> Client:
        caller = authenticated(principal)
        found = await self._store.client(client_id)
        if found is None or (
            ADMIN not in caller.scopes
            and found.organization != caller.organization
            and found.client_id != caller.client_id
        ):
            # Another organisation's client is not even acknowledged to exist.
            raise NotFound("no such client", reason="CLIENT_NOT_FOUND")
        return found

    async def list_clients(
        self, principal: Principal | None, organization: str, requested_size: int, token: str
    ) -> Page[Client]:
        scope = organization_filter(principal, organization)
        size = page_size(requested_size)
        listing = Listing("identity.ListClients", (scope,))
        found = await self._store.clients(scope, listing.cursor(token) or "", size + 1)
        return page(found, size, lambda c: c.client_id, listing)

    async def disable_client(self, principal: Principal | None, client_id: str) -> Client:
        require_admin(principal)
        if not client_id:
            raise InvalidArgument([FieldViolation("client_id", "is required")])
        disabled = await self._store.disable_client(client_id, self._clock())
        if disabled is None:
            raise NotFound("no such client", reason="CLIENT_NOT_FOUND")
        return disabled

    # -- users ---------------------------------------------------------------------------

    async def create_user(self, principal: Principal | None, new: NewUser) -> CreatedUser:
        require_admin(principal)
        username = new.username.lower()
        problems: list[FieldViolation] = []
        require_match(problems, "username", username, USERNAME)
        if (violation := passwords.password_violation(new.password)) is not None:
            problems.append(FieldViolation("password", violation))
        if new.totp_secret and not passwords.valid_totp_secret(new.totp_secret):
            problems.append(FieldViolation("totp_secret", "must be base32 of 128 bits or more"))
        if new.kind not in USER_KINDS:
            problems.append(FieldViolation("kind", "must be PRACTITIONER, PATIENT or ADMIN"))
        require_match(problems, "organization", new.organization, ORGANIZATION_ID)
        if new.kind == "patient":
            require_match(problems, "patient_id", new.patient_id, PATIENT_ID)
        elif new.patient_id:
            problems.append(FieldViolation("patient_id", "is only for PATIENT users"))
        if problems:
            raise InvalidArgument(problems)
        await self._existing_organization(new.organization)
        if new.kind == "patient":
            holder = await self._store.holder(new.patient_id)
            if holder is not None and holder.organization != new.organization:
                raise FailedPrecondition(
                    "another organization holds this patient's record", reason="HOLDER_CONFLICT"
                )
        secret = new.totp_secret
        if not secret and (new.enroll_totp or new.kind in SECOND_FACTOR_KINDS):
            secret = passwords.new_totp_secret()
        sealed = await self._sealer.seal(secret.encode()) if secret else ""
        user = User(
            user_id=f"u-{uuid.uuid4().hex}",
            username=username,
            kind=new.kind,
            organization=new.organization,
            patient_id=new.patient_id,
            totp_enabled=bool(secret),
            create_time=self._clock(),
        )
        await self._store.insert_user(user, await self._passwords.hash(new.password), sealed)
        uri = passwords.provisioning_uri(secret, username, self._totp_issuer) if secret else ""
        return CreatedUser(user, uri)

    async def get_user(self, principal: Principal | None, user_id: str) -> User:
        caller = authenticated(principal)
        _user_id(user_id)
        if ADMIN not in caller.scopes and caller.subject != user_id:
            # Nobody else's account is acknowledged to exist.
            raise _no_such_user()
        found = await self._store.user(user_id)
        if found is None:
            raise _no_such_user()
        return found

    async def list_users(
        self, principal: Principal | None, organization: str, requested_size: int, token: str
    ) -> Page[User]:
        require_admin(principal)
        scope = organization_filter(principal, organization)
        size = page_size(requested_size)
        listing = Listing("identity.ListUsers", (scope,))
        found = await self._store.users(scope, listing.cursor(token) or "", size + 1)
        return page(found, size, lambda u: u.username, listing)

    async def disable_user(self, principal: Principal | None, user_id: str) -> User:
        require_admin(principal)
        _user_id(user_id)
        return await self._found(self._store.set_user_disabled(user_id, self._clock()))

    async def enable_user(self, principal: Principal | None, user_id: str) -> User:
        require_admin(principal)
        _user_id(user_id)
        return await self._found(self._store.set_user_disabled(user_id, None))

    async def reset_user_password(
        self, principal: Principal | None, user_id: str, password: str
    ) -> User:
        require_admin(principal)
        problems: list[FieldViolation] = []
        if not user_id:
            problems.append(FieldViolation("user_id", "is required"))
        if (violation := passwords.password_violation(password)) is not None:
            problems.append(FieldViolation("password", violation))
        if problems:
            raise InvalidArgument(problems)
        if await self._store.user(user_id) is None:
            raise _no_such_user()
        hashed = await self._passwords.hash(password)
        return await self._found(self._store.set_password_hash(user_id, hashed))

    async def reset_user_totp(self, principal: Principal | None, user_id: str) -> CreatedUser:
        """A new TOTP secret for the user; its provisioning URI is shown this once."""
        require_admin(principal)
        _user_id(user_id)
        if await self._store.user(user_id) is None:
            raise _no_such_user()
        secret = passwords.new_totp_secret()
        sealed = await self._sealer.seal(secret.encode())
        user = await self._found(self._store.set_totp_secret(user_id, sealed))
        return CreatedUser(
            user, passwords.provisioning_uri(secret, user.username, self._totp_issuer)
        )

    @staticmethod
    async def _found(update: Awaitable[User | None]) -> User:
        user = await update
        if user is None:
            raise _no_such_user()
        return user
