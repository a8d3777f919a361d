"""What the record service tells identity about the patients whose records it holds.

- Which organisation holds a patient's record (RegisterPatientHolder). A patient may have no
  user account in identity; once registered, the holder is the patient's organisation for
  every rule that needs one (managing consents, CheckAccess when the caller does not say,
  break-glass). One holder per patient: another organisation, or a user account of the
  patient in another organisation, is a conflict and changes nothing.
- With it, the patient's scan secret (docs/access-report.md): the record service makes it with
  the Patient, and identity keys the subjects of its own ledger entries about the patient with
  it (consents, break-glass, the patient's logins), so that one access report finds both
  services' entries with one key. identity keeps it sealed in the patient's ledger leaf index
  (:meth:`~medledger.common.patient_log.PatientLog.keep_scan_secret`); the first one stays,
  another is a conflict. Without one (an older record service), identity's entries use the
  legacy scan key of the patient's pseudonym.
- Identity's part of erasing a patient (ErasePatientData): their consents are deleted, the
  break-glass audit stops naming them, identity's ledger leaf index for them is destroyed
  (the salts and the scan secret that link identity's ledger entries to the patient) and the
  holder forgotten.
  Consents first, so that from the first step on they permit nothing; each step is
  idempotent, so a call that failed half-way is finished by the next.

Only the record service may do either (``medledger/patient-directory``): it is the one that
knows who created a Patient. Nothing here is ledgered (the record service ledgers the
erasure), and no message names a patient.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.common.blinding import SCAN_SECRET_SIZE
from medledger.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from medledger.common.interceptors import Principal
from medledger.common.scopes import PATIENT_DIRECTORY
from medledger.identity.domain.authz import authenticated
from medledger.identity.domain.directory import (
    ORGANIZATION_ID,
    PATIENT_ID,
    require_match,
    utc_now,
)
from medledger.identity.domain.ports import (
    BreakGlassAudit,
    ConsentStorage,
    HolderStorage,
    PatientHolder,
    PatientLeafIndex,
)


@dataclass(frozen=True)
class Registration:
    holder: PatientHolder
    created: bool  # False: this very pair was registered already


@dataclass(frozen=True)
class Erasure:
    """What one erasure removed; all zero when there was nothing (left) to remove."""

    consents_deleted: int = 0
    ledger_index_rows_destroyed: int = 0
    break_glass_accesses_unlinked: int = 0
    holder_registrations_deleted: int = 0


def _record_service(principal: Principal | None) -> None:
    if PATIENT_DIRECTORY not in authenticated(principal).scopes:
        raise PermissionDenied(
            f"only the record service may call this ({PATIENT_DIRECTORY})",
            reason="SCOPE_MISSING",
        )


def _conflict() -> FailedPrecondition:
    return FailedPrecondition(
        "another organization holds this patient's record", reason="HOLDER_CONFLICT"
    )


class PatientDirectory:
    def __init__(
        self,
        holders: HolderStorage,
        consents: ConsentStorage,
        audit: BreakGlassAudit,
        leaves: PatientLeafIndex,
    ) -> None:
        self._holders = holders
        self._consents = consents
        self._audit = audit
        self._leaves = leaves

    async def register_holder(
        self,
        principal: Principal | None,
        patient_id: str,
        organization: str,
        scan_secret: bytes = b"",
    ) -> Registration:
        _record_service(principal)
        problems: list[FieldViolation] = []
        require_match(problems, "patient_id", patient_id, PATIENT_ID)
        require_match(problems, "organization", organization, ORGANIZATION_ID)
        if scan_secret and len(scan_secret) != SCAN_SECRET_SIZE:
            problems.append(
                FieldViolation("scan_secret", f"empty or {SCAN_SECRET_SIZE} random bytes")
            )
        if problems:
            raise InvalidArgument(problems)
        if await self._holders.organization(organization) is None:
            raise NotFound("no such organization", reason="ORGANIZATION_NOT_FOUND")
        user_organization = await self._holders.patient_user_organization(patient_id)
        if user_organization not in (None, organization):
            raise _conflict()
        stored, created = await self._holders.add_holder(
            PatientHolder(patient_id, organization, utc_now())
        )
        if stored.organization != organization:
            raise _conflict()
        if scan_secret and not await self._leaves.keep_scan_secret(patient_id, scan_secret):
            raise FailedPrecondition(
                "the patient has another scan secret", reason="SCAN_SECRET_CONFLICT"
            )
        return Registration(stored, created)

    async def erase(self, principal: Principal | None, patient_id: str) -> Erasure:
        _record_service(principal)
        problems: list[FieldViolation] = []
        require_match(problems, "patient_id", patient_id, PATIENT_ID)
        if problems:
            raise InvalidArgument(problems)
        consents = await self._consents.erase_patient(patient_id)
        unlinked = await self._audit.unlink_patient(patient_id)
        rows = await self._leaves.erase(patient_id)
        holders = await self._holders.remove_holder(patient_id)
        return Erasure(
            consents_deleted=consents,
            ledger_index_rows_destroyed=rows,
            break_glass_accesses_unlinked=unlinked,
            holder_registrations_deleted=holders,
        )
