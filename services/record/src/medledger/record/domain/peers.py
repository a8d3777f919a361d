"""What the record service needs from its peers: identity's access decision, and the ledger.

:class:`AccessChecks` is identity's CheckAccess: the record service asks it for every call,
naming the principal (as its verified token describes it), the patient, the organisation
holding the patient's record (which only the record service knows), the resource type, the
action and the purpose. :class:`RecordLedger` appends an entry about one patient, blinded
per entry so that a patient's entries stay unlinkable in the public ledger, and answers with
the serialised ``Receipt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, Protocol, TypeAlias

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.interceptors import Principal
from medledger.common.paging import Page

Purpose: TypeAlias = purpose_pb2.PurposeOfUse.ValueType
EventKind: TypeAlias = ledger_pb2.EventKind.ValueType

PATIENT_SELF: Final = "PATIENT_SELF"
"""The reason identity permits a patient acting on their own record."""


class Action(StrEnum):
    READ = "read"
    WRITE = "write"  # create or update
    SEARCH = "search"
    EXPORT = "export"
    DELETE = "delete"


@dataclass(frozen=True)
class Requester:
    """Who asks, for what purpose, and (purpose ETREAT) why it is an emergency."""

    principal: Principal
    purpose: Purpose
    break_glass_reason: str = ""


@dataclass(frozen=True)
class AccessQuery:
    requester: Requester
    # "" for no single patient: the token's scopes and purposes decide.
    patient_id: str
    # The organisation holding the patient's record, as this service knows it.
    holder: str
    resource_type: str
    action: Action


@dataclass(frozen=True)
class AccessVerdict:
    permitted: bool
    # identity's UPPER_SNAKE_CASE reason (SAME_ORGANIZATION, CONSENT_PERMITS, NO_CONSENT, ...).
    reason: str
    # Permitted only by break-glass (identity ledgered a BREAK_GLASS entry).
    break_glass: bool = False

    @property
    def patient_self(self) -> bool:
        return self.reason == PATIENT_SELF


class AccessChecks(Protocol):
    async def check(self, query: AccessQuery) -> AccessVerdict:
        """identity's decision; Unavailable when identity does not answer (fail closed)."""
        ...


@dataclass(frozen=True)
class RecordEvent:
    """A ledger entry about one patient's resource, before blinding."""

    kind: EventKind
    actor: str
    organization: str
    purpose: Purpose
    resource_type: str
    resource_id: str = ""
    resource_version: int = 0
    content_commitment: bytes = b""
    # The patient's own user id when the patient acts (the entry's actor is then blinded).
    patient_actor: str = ""
    # Fixed for a write, so that a retry appends the very same entry: the blinding salt
    # (secret, 32 bytes), the entry's time and its trace id. None: fresh ones.
    blinding_salt: bytes | None = None
    time: datetime | None = None
    trace_id: bytes | None = None


class RecordLedger(Protocol):
    async def append(
        self, patient_id: str, event: RecordEvent, *, idempotency_key: str = ""
    ) -> bytes:
        """Appends ``event`` about ``patient_id`` (blinded, indexed under the patient) and
        returns the serialised ``Receipt``; Unavailable when the ledger does not answer."""
        ...

    async def append_many(self, events: Sequence[tuple[str, RecordEvent, str]]) -> list[bytes]:
        """Appends each ``(patient_id, event, idempotency_key)`` in ONE durable ledger step
        (all or none, at most 1,000) and returns their serialised receipts in order."""
        ...

    async def new_scan_secret(self, patient_id: str) -> bytes:
        """The new patient's scan secret (32 random bytes, kept with their leaf index until
        erasure), made unless they have one: every later entry about them is keyed by it,
        and identity is handed it (``PatientDirectory.register_holder``)."""
        ...


class LedgerReads(Protocol):
    """What the record service reads back from the ledger (exports, access logs, audits).
    Every method is Unavailable when the ledger does not answer."""

    async def entries(self, leaf_indexes: Sequence[int]) -> dict[int, bytes]:
        """The exact leaf data of each leaf (as hashed into the tree)."""
        ...

    async def refreshed(self, receipts: Sequence[bytes]) -> list[bytes]:
        """The ``receipts`` (serialised), all proven against one checkpoint that covers
        them: of the ledger's checkpoints that do, the one with the most witness
        cosignatures (the newest among equals), so that a verifier's witness quorum holds
        for every receipt of an export at once."""
        ...

    async def leaf_index(self, leaf_hash: bytes) -> int | None:
        """The index of the leaf with this hash; None when the ledger holds no such leaf."""
        ...


class PatientDirectory(Protocol):
    """identity's side of a patient: who holds their record, and erasure of what identity
    keeps about them (consents, its ledger leaf index)."""

    async def register_holder(
        self, patient_id: str, organization: str, scan_secret: bytes = b""
    ) -> None:
        """Tells identity who holds the patient's record, and the patient's scan secret
        (b"": none; identity's entries then use the legacy scan key)."""
        ...

    async def erase_patient(self, patient_id: str) -> None: ...


@dataclass(frozen=True)
class LoggedEntry:
    """One ledger entry about a patient, as the record's patient log keeps it: where it is,
    and its opening (the salt and clear values its blinded fields hide)."""

    leaf_hash: bytes
    # None when the ledger's answer to the append was lost (find it by its hash).
    leaf_index: int | None
    salt: bytes
    pseudonym: bytes
    resource_type: str
    resource_id: str
    resource_version: int
    # The patient's own user id when the patient acted; "" otherwise.
    patient_actor: str
    # The key of the entry's subject (from the scan key and the entry's nonce; the salt for
    # an entry without a nonce): it opens this entry's subject only.
    subject_salt: bytes = b""


class PatientEntries(Protocol):
    """The record's per-patient index of its ledger entries."""

    async def logged(
        self, patient_id: str, *, page_size: int, page_token: str
    ) -> Page[LoggedEntry]:
        """The patient's entries, oldest first."""
        ...

    async def scan_key(self, patient_id: str) -> bytes | None:
        """The patient's scan key; None for a patient without a scan secret (their entries
        are keyed by the legacy scan key of their pseudonym)."""
        ...

    async def forget(self, patient_id: str) -> int:
        """Destroys the patient's index (salts, scan secret and data key): erasure."""
        ...
