"""What identity's logic needs from the outside, as plain data and protocols.

The Mongo adapters implement :class:`DirectoryStorage`, :class:`HolderStorage` and
:class:`Parties` (users, organisations, record holders), :class:`LoginAttempts` (login
throttling), :class:`ConsentStorage` and :class:`BreakGlassAudit` (consents); Vault
adapters implement :class:`TokenSigner` and :class:`SecretSealer`; the ledger adapter
implements :class:`IdentityEvents`, the patient log :class:`PatientLeafIndex`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from medledger.identity.domain.consent import Consent, ConsentStatus, Grantee

if TYPE_CHECKING:  # access.py uses these ports; the record is its own
    from medledger.identity.domain.access import BreakGlassRecord

USER_KINDS = ("practitioner", "patient", "admin")
# Kinds that log in with a second factor (TOTP) always: they see many patients' data, or
# manage who does.
SECOND_FACTOR_KINDS = frozenset({"practitioner", "admin"})


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
    disabled: bool = False
    disable_time: datetime | None = None


@dataclass(frozen=True)
class PatientHolder:
    """The organisation holding a patient's record, as the record service registered it."""

    patient_id: str
    organization: str
    register_time: datetime


@dataclass(frozen=True)
class Credentials:
    """What a login checks; never leaves the service."""

    user: User
    password_hash: str
    sealed_totp_secret: str  # Vault transit ciphertext; empty without TOTP
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

    async def set_client_scopes(self, client_id: str, scopes: Sequence[str]) -> Client | None:
        """Replaces the scopes the client may request; None when unknown."""

    async def insert_user(self, user: User, password_hash: str, sealed_totp_secret: str) -> None:
        """Raises AlreadyExists when the username is taken."""

    async def users(self, organization: str, after: str, limit: int) -> Sequence[User]: ...

    async def user(self, user_id: str) -> User | None: ...

    async def set_user_disabled(self, user_id: str, when: datetime | None) -> User | None:
        """Disables the user at ``when`` (keeping an earlier disable time), or enables them
        (``when`` None); None when unknown."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> User | None:
        """None when unknown."""

    async def set_totp_secret(self, user_id: str, sealed_totp_secret: str) -> User | None:
        """Replaces the TOTP secret (and forgets the steps used with the old one); None when
        unknown."""

    async def credentials(self, username: str) -> Credentials | None: ...

    async def login_succeeded(
        self, user_id: str, *, totp_step: int, password_hash: str | None
    ) -> bool:
        """Records the TOTP step used (and a rehashed password); False when that step (or
        a later one) was already used: a replay."""

    async def remember_assertion(self, client_id: str, jti: str, expires: datetime) -> bool:
        """Records a client assertion id until ``expires``; False when already seen."""

    async def forget_assertion(self, client_id: str, jti: str) -> None:
        """Drops a recorded assertion id: no token was issued for it."""

    async def holder(self, patient_id: str) -> PatientHolder | None:
        """The organisation registered as holding the patient's record, if any."""


class LoginAttempts(Protocol):
    """Counters of password login attempts, by key (a source, or a source and a username).
    Each call decides and counts in one atomic step, shared by every replica, so parallel
    attempts can never get past a limit together."""

    async def count_failure(
        self,
        key: str,
        *,
        now: datetime,
        free: int,
        first_delay: timedelta,
        max_delay: timedelta,
        forget_after: timedelta,
    ) -> datetime | None:
        """Counts one more failure under ``key`` unless it must wait: the first ``free``
        are allowed at once, then each waits twice as long after the one before as that one
        did, from ``first_delay`` up to ``max_delay``. None when counted; otherwise when the
        next one will be allowed. A key unused for ``forget_after`` starts again from zero."""

    async def take(
        self, key: str, *, now: datetime, limit: int, window: timedelta
    ) -> datetime | None:
        """Takes one of the ``limit`` attempts allowed under ``key`` per ``window``: None when
        taken; otherwise when the window ends."""

    async def clear(self, key: str) -> None: ...


class TokenSigner(Protocol):
    @property
    def key_name(self) -> str:
        """The Vault transit key's name."""

    async def sign(self, claims: dict[str, object]) -> str:
        """A compact JWS of ``claims`` signed by the current key, its kid in the header."""

    async def jwks(self) -> str:
        """The JWKS of the keys that verify tokens still in flight."""

    async def current_version(self) -> int: ...

    async def next_version(self) -> int:
        """The version ``rotate`` would make current (an operator creates it in Vault)."""

    async def rotate(self) -> str:
        """Makes a new key current; returns its kid."""


class SecretSealer(Protocol):
    async def seal(self, secret: bytes) -> str: ...

    async def unseal(self, sealed: str) -> bytes: ...


# A ledger receipt (the ledger API's Receipt message, serialized): the logic keeps it and
# hands it back, never reads it.
Receipt = bytes


class IdentityEvents(Protocol):
    """The ledger entries identity leaves. Each append is idempotent per event, so a retry
    of the same event never makes a second entry; Unavailable when the ledger does not
    answer."""

    async def consent_granted(
        self, consent: Consent, organization: str, commitment: bytes
    ) -> Receipt: ...

    async def consent_revoked(
        self, consent: Consent, organization: str, *, by_patient: bool
    ) -> Receipt:
        """The revocation by ``consent.revoked_by``, the patient themselves when
        ``by_patient``."""

    async def break_glass(self, record: BreakGlassRecord) -> int:
        """The BREAK_GLASS entry's leaf index."""

    async def token_issued(self, client_id: str, organization: str, jti: str) -> None: ...

    async def user_login(
        self, user_id: str, organization: str, jti: str, *, patient_id: str = ""
    ) -> None:
        """A token ``jti`` issued to a user who logged in; ``patient_id`` for a patient's own
        account (the entry is then about that patient)."""

    async def key_rotated(
        self, actor: str, organization: str, key_name: str, version: int
    ) -> None: ...


class HolderStorage(Protocol):
    """Which organisation holds each patient's record (at most one per patient)."""

    async def add_holder(self, holder: PatientHolder) -> tuple[PatientHolder, bool]:
        """Stores ``holder`` unless the patient has one; returns the one stored and whether
        it is this one."""

    async def holder(self, patient_id: str) -> PatientHolder | None: ...

    async def remove_holder(self, patient_id: str) -> int:
        """Forgets the patient's holder; the number of registrations removed (0 or 1)."""

    async def patient_user_organization(self, patient_id: str) -> str | None:
        """The organisation of a PATIENT user who is ``patient_id``, if there is one."""

    async def organization(self, organization_id: str) -> Organization | None: ...


class PatientLeafIndex(Protocol):
    """identity's per-patient ledger leaf index
    (:class:`~medledger.common.patient_log.PatientLog`)."""

    async def keep_scan_secret(self, patient_id: str, secret: bytes) -> bool:
        """Keeps the patient's scan secret (32 bytes) with their index, unless they have one;
        False when the one they have is another."""

    async def erase(self, patient_id: str) -> int:
        """Destroys the patient's rows, salts, scan secret and data key; the rows destroyed."""


class Parties(Protocol):
    """Who is who, for consents and access decisions."""

    async def patient_organization(self, patient_id: str) -> str | None:
        """The organisation holding the record of ``patient_id``: the one the record service
        registered, else that of the patient's PATIENT user; None when neither is known."""

    async def patient_of_user(self, user_id: str) -> str | None:
        """The Patient id of a PATIENT user; None for anyone else."""

    async def practitioner_organization(self, user_id: str) -> str | None:
        """The organisation of a PRACTITIONER user who is not disabled; None for anyone
        else."""

    async def client(self, client_id: str) -> Client | None: ...

    async def grantee_exists(self, grantee: Grantee) -> bool:
        """Whether the organisation, client or user a consent would name exists."""


# --- consents -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredConsent:
    """A consent as stored, with what its ledgering and idempotent retries need."""

    consent: Consent
    ledgered: bool
    salt: bytes = b""
    request_digest: str = ""
    grant_receipt: Receipt | None = None
    revoke_receipt: Receipt | None = None


@dataclass(frozen=True)
class ConsentQuery:
    """ListConsents filters; empty strings and None mean any."""

    patient_id: str = ""
    grantee_key: str = ""
    status: ConsentStatus | None = None


class ConsentStorage(Protocol):
    """Consents. One written by :meth:`insert_pending` counts (for decisions, reads and
    lists) only once :meth:`mark_granted` records its ledger receipt."""

    async def insert_pending(
        self, consent: Consent, *, salt: bytes, idempotency: str, request_digest: str
    ) -> StoredConsent | None:
        """Writes a consent that does not count yet; returns the consent already stored
        under ``idempotency`` instead, if there is one (None when this one was written)."""

    async def find_idempotent(self, idempotency: str) -> StoredConsent | None: ...

    async def mark_granted(self, consent_id: str, receipt: Receipt) -> bool:
        """Makes the consent count; False when it is gone (a failed attempt discarded it)."""

    async def discard_pending(self, consent_id: str) -> None: ...

    async def get(self, consent_id: str) -> StoredConsent | None:
        """A consent that counts; None otherwise."""

    async def consents_for(self, patient_id: str, grantee_keys: Sequence[str]) -> list[Consent]:
        """Unrevoked consents of ``patient_id`` to any of ``grantee_keys``: one indexed
        query, never a cache (a revocation must deny on the very next decision)."""

    async def list_consents(
        self, query: ConsentQuery, *, after: str, limit: int, now: datetime
    ) -> list[Consent]:
        """Up to ``limit`` consents after id ``after``, in id (creation) order."""

    async def revoke(self, consent_id: str, revoked_by: str, now: datetime) -> StoredConsent | None:
        """Revokes the consent at ``now`` unless it already is (then it is left as it was);
        None when there is no such consent."""

    async def set_revoke_receipt(self, consent_id: str, receipt: Receipt) -> None: ...

    async def erase_patient(self, patient_id: str) -> int:
        """Deletes every consent of ``patient_id``, pending, revoked and expired ones too; the
        number deleted."""


class BreakGlassAudit(Protocol):
    """Every break-glass attempt, with its reason (kept here only, never in the ledger)."""

    async def open_break_glass(self, record: BreakGlassRecord) -> None: ...

    async def close_break_glass(self, record_id: str, leaf_index: int) -> None: ...

    async def unlink_patient(self, patient_id: str) -> int:
        """Removes ``patient_id`` from every attempt about them (each keeps who, when, on what
        and why); the number of attempts changed."""

    async def count_break_glass(self, principal_id: str, since: datetime) -> int:
        """Attempts by ``principal_id`` at or after ``since``, refused ones included."""

    async def list_break_glass(
        self, *, patient_id: str, organization: str, after: str, limit: int
    ) -> list[BreakGlassRecord]:
        """Attempts of a patient and/or by an organisation after id ``after``, oldest first."""
