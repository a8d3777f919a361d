"""A patient's GDPR rights over their whole record: export (access, portability), erasure,
and the log of who touched the record.

Export ($everything). Every current resource of the patient that the requester may export
(identity's CheckAccess, action EXPORT, per resource type: another organisation's consent
may cover only some types) goes into one FHIR Bundle of type collection. Each entry carries
its ledger proof (``docs/export-format.md``): the receipt of its version's write, proven
again, like every other entry's, against one checkpoint (the best-cosigned one covering
them all, so a verifier's witness quorum holds for the whole export),
the exact bytes of that ledger entry, and the salt opening the entry's commitment. With the
ledger's and the witnesses' public keys, ``medledger verify export`` then checks offline that
each resource is exactly what was ledgered. A pseudonymised export
(:mod:`~medledger.record.domain.pseudonymise`) carries no proofs. One RECORD_EXPORTED entry
is ledgered before the Bundle is returned.

Erasure (crypto-shredding). Allowed by CheckAccess (Patient, DELETE), then in this order:
the RECORD_ERASED entry is ledgered (its receipt is the answer), the patient's data key,
commitment salts, blind-index entries and idempotency records are destroyed (from here every
read is NOT_FOUND, reason ERASED), identity erases its part (consents, its leaf index), and
the record's leaf index of the patient goes last (salts of every entry about the patient,
this one included: the ledger stays valid, and unlinkable to the patient). A step that fails
leaves UNAVAILABLE; the retry finishes the erasure (the steps after the tombstone repeat
safely) and then answers NOT_FOUND ERASED.

Access log. The entries the record service ledgered about the patient (writes, reads,
exports), each with its opening, so the patient (their own token, purpose PATRQT) or their
record holder can check each entry against the public ledger. Reading the log is a read,
ledgered like any other.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from medledger.common.paging import Page
from medledger.record.domain.fhir_references import is_fhir_id
from medledger.record.domain.peers import (
    AccessChecks,
    AccessQuery,
    AccessVerdict,
    Action,
    LedgerReads,
    LoggedEntry,
    PatientDirectory,
    PatientEntries,
    RecordEvent,
    RecordLedger,
    Requester,
)
from medledger.record.domain.ports import RecordStorage, StoredVersion
from medledger.record.domain.pseudonymise import PSEUDED, Pseudonymiser
from medledger.verify.export import FULL_URL_PREFIX, ledger_proof_extension

# Resources read from storage per page while an export collects the patient's record.
EXPORT_READ_PAGE: Final = 1000
# The type the access log is, in FHIR terms (and in SMART scopes).
ACCESS_LOG_TYPE: Final = "AuditEvent"
# The GDPR Art. 17(1) grounds, as ErasureReason numbers (0 is unspecified).
ERASURE_REASONS: Final = range(1, 6)
FHIR_ID_RULE: Final = "a FHIR id: 1 to 64 of A-Z a-z 0-9 - ."


@dataclass(frozen=True)
class Export:
    bundle_json: str
    # receipts[i]: the (refreshed) receipt of the version in bundle entry i; none when
    # pseudonymised.
    receipts: list[bytes]
    export_receipt: bytes


@dataclass(frozen=True)
class Erasure:
    erased_versions: int
    receipt: bytes


@dataclass(frozen=True)
class AccessLogEntry:
    leaf_index: int
    entry_bytes: bytes
    opening: LoggedEntry


def _now() -> datetime:
    return datetime.now(UTC)


def _check_patient_id(patient_id: str) -> None:
    if not is_fhir_id(patient_id):
        raise InvalidArgument([FieldViolation("patient_id", FHIR_ID_RULE)])


def _denied(verdict: AccessVerdict) -> PermissionDenied:
    return PermissionDenied(f"access denied ({verdict.reason})", reason=verdict.reason)


def _entry_order(version: StoredVersion) -> tuple[int, str, str]:
    """The Patient first, then by type and id: a stable order that says nothing."""
    kind = version.ref.resource_type
    return (0 if kind == "Patient" else 1, kind, version.ref.resource_id)


class PatientRights:
    def __init__(
        self,
        storage: RecordStorage,
        access: AccessChecks,
        ledger: RecordLedger,
        ledger_reads: LedgerReads,
        entries: PatientEntries,
        directory: PatientDirectory,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._storage = storage
        self._access = access
        self._ledger = ledger
        self._reads = ledger_reads
        self._entries = entries
        self._directory = directory
        self._clock = clock

    async def _check(
        self, requester: Requester, patient_id: str, holder: str, kind: str, action: Action
    ) -> AccessVerdict:
        return await self._access.check(AccessQuery(requester, patient_id, holder, kind, action))

    async def _ledger_event(
        self,
        requester: Requester,
        verdict: AccessVerdict,
        patient_id: str,
        kind: ledger_pb2.EventKind.ValueType,
        resource_type: str,
    ) -> bytes:
        who = requester.principal
        return await self._ledger.append(
            patient_id,
            RecordEvent(
                kind=kind,
                actor=who.subject,
                organization=who.organization,
                purpose=requester.purpose,
                resource_type=resource_type,
                resource_id=patient_id if resource_type == "Patient" else "",
                patient_actor=who.subject if verdict.patient_self else "",
            ),
        )

    # -- export ----------------------------------------------------------------------------

    async def export(self, requester: Requester, patient_id: str, *, pseudonymise: bool) -> Export:
        _check_patient_id(patient_id)
        holder = await self._storage.patient_holder(patient_id)
        versions = await self._current_resources(patient_id)
        kinds = sorted({v.ref.resource_type for v in versions} | {"Patient"})
        verdicts = dict(
            zip(
                kinds,
                await asyncio.gather(
                    *(self._check(requester, patient_id, holder, k, Action.EXPORT) for k in kinds)
                ),
                strict=True,
            )
        )
        permitted = [v for v in versions if verdicts[v.ref.resource_type].permitted]
        if not any(verdict.permitted for verdict in verdicts.values()):
            raise _denied(verdicts["Patient"])
        allowing = next(v for v in verdicts.values() if v.permitted)
        permitted.sort(key=_entry_order)
        if pseudonymise:
            bundle, receipts = self._pseudonymised(permitted), list[bytes]()
        else:
            bundle, receipts = await self._verifiable(permitted)
        export_receipt = await self._ledger_event(
            requester, allowing, patient_id, ledger_pb2.EVENT_KIND_RECORD_EXPORTED, "Patient"
        )
        text = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
        return Export(text, receipts, export_receipt)

    async def _current_resources(self, patient_id: str) -> list[StoredVersion]:
        found: list[StoredVersion] = []
        token = ""
        while True:
            page = await self._storage.patient_resources(
                patient_id, page_size=EXPORT_READ_PAGE, page_token=token
            )
            found += page.items
            token = page.next_page_token
            if not token:
                return found

    def _bundle(self, entries: list[dict[str, Any]], security: bool) -> dict[str, Any]:
        when = self._clock().astimezone(UTC).isoformat(timespec="milliseconds")
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4())}
        if security:
            bundle["meta"] = {"security": [dict(PSEUDED)]}
        bundle |= {"type": "collection", "timestamp": when.replace("+00:00", "Z")}
        if entries:
            bundle["entry"] = entries
        return bundle

    async def _verifiable(
        self, versions: Sequence[StoredVersion]
    ) -> tuple[dict[str, Any], list[bytes]]:
        receipts = await self._reads.refreshed([v.receipt for v in versions])
        indexes = [ledger_pb2.Receipt.FromString(r).leaf_index for r in receipts]
        entry_bytes = await self._reads.entries(indexes)
        entries = []
        for version, receipt, index in zip(versions, receipts, indexes, strict=True):
            proof = ledger_proof_extension(
                ledger_pb2.Receipt.FromString(receipt), entry_bytes[index], version.salt
            )
            entries.append(
                {
                    "fullUrl": FULL_URL_PREFIX + version.ref.resource_id,
                    "resource": json.loads(version.resource_json),
                    "extension": [proof],
                }
            )
        return self._bundle(entries, security=False), list(receipts)

    def _pseudonymised(self, versions: Sequence[StoredVersion]) -> dict[str, Any]:
        pseudonyms = Pseudonymiser()
        members = {(v.ref.resource_type, v.ref.resource_id) for v in versions}
        entries = []
        for version in versions:
            resource = pseudonyms.resource(json.loads(version.resource_json), members)
            entries.append(
                {"fullUrl": f"urn:medledger:pseudonym:{resource['id']}", "resource": resource}
            )
        return self._bundle(entries, security=True)

    # -- erasure ---------------------------------------------------------------------------

    async def erase(self, requester: Requester, patient_id: str, reason: int) -> Erasure:
        problems = []
        if not is_fhir_id(patient_id):
            problems.append(FieldViolation("patient_id", FHIR_ID_RULE))
        if reason not in ERASURE_REASONS:
            problems.append(
                FieldViolation("reason", "an ErasureReason (the legal ground) is required")
            )
        if problems:
            raise InvalidArgument(problems)
        try:
            holder = await self._storage.patient_holder(patient_id)
        except NotFound as error:
            if error.reason == "ERASED":
                # A retry after a failure: finish what the first attempt left.
                await self._finish_erasure(patient_id)
            raise
        verdict = await self._check(requester, patient_id, holder, "Patient", Action.DELETE)
        if not verdict.permitted:
            raise _denied(verdict)
        receipt = await self._ledger_event(
            requester, verdict, patient_id, ledger_pb2.EVENT_KIND_RECORD_ERASED, "Patient"
        )
        erased_versions = await self._storage.erase_patient(patient_id)
        await self._finish_erasure(patient_id)
        return Erasure(erased_versions, receipt)

    async def _finish_erasure(self, patient_id: str) -> None:
        await self._storage.erase_patient(patient_id)
        await self._directory.erase_patient(patient_id)
        await self._entries.forget(patient_id)

    # -- access log ------------------------------------------------------------------------

    async def access_log(
        self, requester: Requester, patient_id: str, *, page_size: int, page_token: str
    ) -> Page[AccessLogEntry]:
        _check_patient_id(patient_id)
        holder = await self._storage.patient_holder(patient_id)
        verdict = await self._check(requester, patient_id, holder, ACCESS_LOG_TYPE, Action.READ)
        if not verdict.permitted:
            raise _denied(verdict)
        page = await self._entries.logged(patient_id, page_size=page_size, page_token=page_token)
        located: dict[bytes, tuple[int, LoggedEntry]] = {}
        for logged in page.items:
            # A write resumed after a lost answer has two rows for one leaf: one entry.
            if logged.leaf_hash in located:
                continue
            index = logged.leaf_index
            if index is None:
                index = await self._reads.leaf_index(logged.leaf_hash)
            if index is not None:  # None: the ledger never took it (nothing happened)
                located[logged.leaf_hash] = (index, logged)
        entry_bytes = await self._reads.entries([index for index, _ in located.values()])
        await self._ledger_event(
            requester, verdict, patient_id, ledger_pb2.EVENT_KIND_RECORD_READ, ACCESS_LOG_TYPE
        )
        return Page(
            [
                AccessLogEntry(index, entry_bytes[index], logged)
                for index, logged in located.values()
            ],
            page.next_page_token,
        )
