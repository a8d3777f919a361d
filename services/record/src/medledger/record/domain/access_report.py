"""A patient's access report (``GetAccessReport``): every ledger entry about the patient up to a
signed checkpoint, in a form ``medledger verify access-report`` checks offline as complete
(docs/access-report.md).

Who may ask is decided as for the access log (identity's CheckAccess, ``AuditEvent`` READ: the
patient with purpose PATRQT, the record's holder, a grantee the patient's consent covers). The
report is built as it streams, in bounded memory:

1. the header: a checkpoint (the best-cosigned of the recent ones covering every entry this
   service indexed for the patient, as an export picks one), the patient's pseudonym and scan
   key (none for a patient without a scan secret), and for a report continuing an earlier one
   the checkpoint of ``from_size`` and its tree's border;
2. every leaf from ``from_size`` to the checkpoint's size, in pages, each tested with the
   scan key and pseudonym as it passes (:func:`medledger.verify.blinding.scanned_subject`),
   and with the pseudonym's legacy scan key (entries written while no scan secret was known):
   the hits are the patient's entries, whichever service appended them. This service's own
   entries come with their openings (salt, resource, the patient's user id), matched by leaf
   hash in its leaf index; an entry without a nonce (from before nonces) is listed when that
   index has it;
3. one RECORD_READ of the patient's ``AuditEvent`` is ledgered (after the checkpoint: the
   report never lists its own read), then the patient's entries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from google.protobuf.message import DecodeError

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
)
from medledger.record.domain.fhir_references import is_fhir_id
from medledger.record.domain.peers import (
    AccessChecks,
    AccessQuery,
    Action,
    LoggedEntry,
    PatientEntries,
    RecordEvent,
    RecordLedger,
    Requester,
)
from medledger.record.domain.ports import RecordStorage
from medledger.verify.blinding import legacy_scan_key, scanned_subject

ACCESS_LOG_TYPE: Final = "AuditEvent"
# The patient's entries per streamed message, and index rows read per page.
ENTRIES_PER_PART: Final = 1000
ROWS_PER_PAGE: Final = 1000
# The checkpoint is chosen among those covering at least the ledger's last this many leaves.
RECENT_LEAVES: Final = 4096
MAX_SIZE: Final = 2**63 - 1


class LedgerLeaves(Protocol):
    """What a report reads from the ledger (this service's own token, ``ledger.read``);
    Unavailable when the ledger does not answer."""

    async def report_checkpoint(self, least_size: int, recent: int) -> tuple[int, bytes]:
        """A checkpoint of at least ``least_size`` leaves and among the newest (covering the
        ledger's last ``recent`` leaves): the one with the most witness cosignatures, the
        newest among equals. Its size and its signed note."""
        ...

    async def checkpoint_of_size(self, size: int) -> bytes | None:
        """The signed note the ledger issued for exactly ``size`` leaves; None if none."""
        ...

    async def border(self, size: int) -> list[bytes]:
        """The hashes of the perfect subtrees covering leaves ``[0, size)``, largest first."""
        ...

    def leaves(self, start: int, end: int) -> AsyncIterator[Sequence[bytes]]:
        """The exact bytes of leaves ``start`` to ``end - 1``, in order, a page at a time."""
        ...


class Pseudonyms(Protocol):
    async def subject(self, patient_id: str) -> bytes:
        """The patient's 32-byte pseudonym (the patient id under the deployment's key)."""
        ...


@dataclass(frozen=True)
class ReportHeader:
    checkpoint: bytes
    pseudonym: bytes
    first_index: int
    base_checkpoint: bytes = b""
    base_border: tuple[bytes, ...] = ()
    # The patient's scan key; b"" for a patient without a scan secret.
    scan_key: bytes = b""


@dataclass(frozen=True)
class ReportLeaves:
    start_index: int
    leaves: Sequence[bytes]


@dataclass(frozen=True)
class ReportEntry:
    leaf_index: int
    # This service's opening of the entry; None for another service's entry.
    opening: LoggedEntry | None
    found_by_opening: bool = False


@dataclass(frozen=True)
class ReportEntries:
    entries: Sequence[ReportEntry]


ReportPart = ReportHeader | ReportLeaves | ReportEntries


def _leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


class AccessReports:
    def __init__(
        self,
        storage: RecordStorage,
        access: AccessChecks,
        ledger: RecordLedger,
        leaves: LedgerLeaves,
        entries: PatientEntries,
        pseudonyms: Pseudonyms,
    ) -> None:
        self._storage = storage
        self._access = access
        self._ledger = ledger
        self._leaves = leaves
        self._entries = entries
        self._pseudonyms = pseudonyms

    async def _rows(self, patient_id: str) -> dict[bytes, LoggedEntry]:
        """This service's index of the patient's entries, by leaf hash."""
        rows: dict[bytes, LoggedEntry] = {}
        token = ""
        while True:
            page = await self._entries.logged(patient_id, page_size=ROWS_PER_PAGE, page_token=token)
            for row in page.items:
                rows.setdefault(row.leaf_hash, row)
            token = page.next_page_token
            if not token:
                return rows

    async def report(
        self, requester: Requester, patient_id: str, from_size: int
    ) -> AsyncIterator[ReportPart]:
        """The report's parts, in order (the module's docstring). Everything that refuses
        the request (its fields, access, an unknown ``from_size``) does so before the first
        part."""
        problems = []
        if not is_fhir_id(patient_id):
            problems.append(FieldViolation("patient_id", "a FHIR id: 1 to 64 of A-Z a-z 0-9 - ."))
        if not 0 <= from_size <= MAX_SIZE:
            problems.append(FieldViolation("from_size", f"must be 0 to {MAX_SIZE}"))
        if problems:
            raise InvalidArgument(problems)
        holder = await self._storage.patient_holder(patient_id)
        verdict = await self._access.check(
            AccessQuery(requester, patient_id, holder, ACCESS_LOG_TYPE, Action.READ)
        )
        if not verdict.permitted:
            raise PermissionDenied(f"access denied ({verdict.reason})", reason=verdict.reason)
        rows = await self._rows(patient_id)
        known = max((r.leaf_index for r in rows.values() if r.leaf_index is not None), default=-1)
        size, checkpoint = await self._leaves.report_checkpoint(
            max(known + 1, from_size, 1), RECENT_LEAVES
        )
        if from_size > size:
            raise FailedPrecondition(
                "from_size is beyond the ledger's checkpoints", reason="CHECKPOINT_NOT_FOUND"
            )
        scan_key = await self._entries.scan_key(patient_id) or b""
        pseudonym = await self._pseudonyms.subject(patient_id)
        header = ReportHeader(checkpoint, pseudonym, from_size, scan_key=scan_key)
        if from_size:
            base = await self._leaves.checkpoint_of_size(from_size)
            if base is None:
                raise FailedPrecondition(
                    "the ledger issued no checkpoint of size from_size",
                    reason="CHECKPOINT_NOT_FOUND",
                )
            border = tuple(await self._leaves.border(from_size))
            header = ReportHeader(checkpoint, pseudonym, from_size, base, border, scan_key)
        yield header

        keys = tuple(k for k in (scan_key, legacy_scan_key(pseudonym)) if k)
        found: list[ReportEntry] = []
        index = from_size
        async for page in self._leaves.leaves(from_size, size):
            yield ReportLeaves(index, page)
            for data in page:
                hit = self._scan(keys, pseudonym, index, data, rows)
                if hit is not None:
                    found.append(hit)
                index += 1

        who = requester.principal
        await self._ledger.append(
            patient_id,
            RecordEvent(
                kind=ledger_pb2.EVENT_KIND_RECORD_READ,
                actor=who.subject,
                organization=who.organization,
                purpose=requester.purpose,
                resource_type=ACCESS_LOG_TYPE,
                patient_actor=who.subject if verdict.patient_self else "",
            ),
        )
        for start in range(0, len(found), ENTRIES_PER_PART):
            yield ReportEntries(found[start : start + ENTRIES_PER_PART])
        if not found:
            yield ReportEntries(())

    @staticmethod
    def _scan(
        keys: tuple[bytes, ...],
        pseudonym: bytes,
        index: int,
        data: bytes,
        rows: dict[bytes, LoggedEntry],
    ) -> ReportEntry | None:
        """The listing of leaf ``index`` when it is about the patient; None otherwise."""
        entry = ledger_pb2.LedgerEntry()
        try:
            entry.ParseFromString(data)
        except DecodeError:
            return None  # damaged storage: the verifier's root check tells
        if not entry.subject:
            return None
        if entry.nonce:
            for key in keys:
                if hmac.compare_digest(entry.subject, scanned_subject(key, pseudonym, entry.nonce)):
                    return ReportEntry(index, rows.get(_leaf_hash(data)))
            return None
        row = rows.get(_leaf_hash(data))
        return None if row is None else ReportEntry(index, row, found_by_opening=True)
