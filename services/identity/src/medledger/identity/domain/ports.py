"""What identity's logic needs from the outside, as plain data and protocols.

The Mongo adapter implements :class:`DirectoryStorage`; Vault adapters implement
:class:`TokenSigner` and :class:`SecretSealer`; :class:`EventLog` is the ledger client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from medledger.common.ledger_client import LedgerEvent

USER_KINDS = ("practitioner", "patient", "admin")


@dataclass(frozen=True)
class Organization:
    organization_id: str
    display_name: str
    create_time: datetime


@dataclass(frozen=True)
class Client:
    client_id: str
    organization: str
    jwks_json: str
    allowed_scopes: tuple[str, ...]
    allowed_purposes: tuple[str, ...]  # HL7 PurposeOfUse codes
    display_name: str
    create_time: datetime
    disabled: bool = False
    disable_time: datetime | None = None


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    kind: str  # one of USER_KINDS
    organization: str
    patient_id: str
    totp_enabled: bool
    create_time: datetime


@dataclass(frozen=True)
class Credentials:
    """What a login checks; never leaves the service."""

    user: User
    password_hash: str
    sealed_totp_secret: str  # Vault transit ciphertext; empty without TOTP
    failed_logins: int
    locked_until: datetime | None
    last_totp_step: int  # the last TOTP time step accepted (codes are single use)


class DirectoryStorage(Protocol):
    async def insert_organization(self, organization: Organization) -> None:
        """Raises AlreadyExists."""

    async def organization(self, organization_id: str) -> Organization | None: ...

    async def organizations(self, after: str, limit: int) -> Sequence[Organization]: ...

    async def insert_client(self, client: Client) -> None:
        """Raises AlreadyExists."""

    async def client(self, client_id: str) -> Client | None: ...

    async def clients(self, organization: str, after: str, limit: int) -> Sequence[Client]: ...

    async def disable_client(self, client_id: str, when: datetime) -> Client | None:
        """Disables the client (keeping the first disable time); None when unknown."""

    async def insert_user(self, user: User, password_hash: str, sealed_totp_secret: str) -> None:
        """Raises AlreadyExists when the username is taken."""

    async def users(self, organization: str, after: str, limit: int) -> Sequence[User]: ...

    async def credentials(self, username: str) -> Credentials | None: ...

    async def login_failed(
        self, user_id: str, *, max_failures: int, locked_until: datetime
    ) -> None:
        """Counts a failure; the ``max_failures``-th in a row locks until ``locked_until``
        and starts the count again."""

    async def login_succeeded(
        self, user_id: str, *, totp_step: int, password_hash: str | None
    ) -> bool:
        """Resets the failure count and records the TOTP step used (and a rehashed
        password); False when that step (or a later one) was already used: a replay."""

    async def remember_assertion(self, client_id: str, jti: str, expires: datetime) -> bool:
        """Records a client assertion id until ``expires``; False when already seen."""


class TokenSigner(Protocol):
    @property
    def key_name(self) -> str:
        """The Vault transit key's name."""

    async def sign(self, claims: dict[str, object]) -> str:
        """A compact JWS of ``claims`` signed by the current key, its kid in the header."""

    async def jwks(self) -> str:
        """The JWKS of the keys that verify tokens still in flight."""

    async def current_version(self) -> int: ...

    async def rotate(self) -> str:
        """Makes a new key current; returns its kid."""


class SecretSealer(Protocol):
    async def seal(self, secret: bytes) -> str: ...

    async def unseal(self, sealed: str) -> bytes: ...


class EventLog(Protocol):
    async def append(
        self, event: LedgerEvent, *, idempotency_key: str = "", timeout: float = 10.0
    ) -> object: ...
