"""Consents: a patient (or a proxy) lets a grantee use some of their data, for some purposes,
over a period.

A consent's status is never stored: it is derived from its period and its revocation at the
moment it is read, so it cannot go stale. Validation names the request field at fault and
never repeats the value (it may be PHI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from medledger.common.errors import FieldViolation, InvalidArgument


class Purpose(StrEnum):
    """HL7 v3 PurposeOfUse codes (v3-ActReason), as tokens and consents carry them."""

    TREAT = "TREAT"
    ETREAT = "ETREAT"
    HPAYMT = "HPAYMT"
    HRESCH = "HRESCH"
    PATRQT = "PATRQT"
    HOPERAT = "HOPERAT"


class GranteeKind(StrEnum):
    ORGANIZATION = "organization"
    CLIENT = "client"
    USER = "user"


class ConsentStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class GrantorRole(StrEnum):
    """In which capacity the grantor, always the principal who called, granted a consent."""

    # The patient, through their own account.
    PATIENT = "patient"
    # A principal of the organisation holding the patient's record, entering a consent form
    # the patient (or, with a proxy relationship, their proxy) signed.
    RECORD_HOLDER = "record-holder"


# FHIR ids (Patient ids among them): https://hl7.org/fhir/R4/datatypes.html#id
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ORGANIZATION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Client ids and user ids, as the ledger accepts them for actors.
PRINCIPAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
# FHIR category codes (observation-category, condition-category, v2-0074 sections, ...).
CATEGORY_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# HL7 v3 RoleCode of a proxy's relation to the patient (GUARD, PRN, POWATT, ...).
ROLE_CODE = re.compile(r"^[A-Z]{2,12}$")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Every resource type of FHIR R4 (4.0.1); abstract types (Resource, DomainResource) excluded.
FHIR_RESOURCE_TYPES = frozenset(
    [
        "Account",
        "ActivityDefinition",
        "AdverseEvent",
        "AllergyIntolerance",
        "Appointment",
        "AppointmentResponse",
        "AuditEvent",
        "Basic",
        "Binary",
        "BiologicallyDerivedProduct",
        "BodyStructure",
        "Bundle",
        "CapabilityStatement",
        "CarePlan",
        "CareTeam",
        "CatalogEntry",
        "ChargeItem",
        "ChargeItemDefinition",
        "Claim",
        "ClaimResponse",
        "ClinicalImpression",
        "CodeSystem",
        "Communication",
        "CommunicationRequest",
        "CompartmentDefinition",
        "Composition",
        "ConceptMap",
        "Condition",
        "Consent",
        "Contract",
        "Coverage",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",
        "DetectedIssue",
        "Device",
        "DeviceDefinition",
        "DeviceMetric",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentManifest",
        "DocumentReference",
        "EffectEvidenceSynthesis",
        "Encounter",
        "Endpoint",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "EpisodeOfCare",
        "EventDefinition",
        "Evidence",
        "EvidenceVariable",
        "ExampleScenario",
        "ExplanationOfBenefit",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "GraphDefinition",
        "Group",
        "GuidanceResponse",
        "HealthcareService",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "ImplementationGuide",
        "InsurancePlan",
        "Invoice",
        "Library",
        "Linkage",
        "List",
        "Location",
        "Measure",
        "MeasureReport",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationKnowledge",
        "MedicationRequest",
        "MedicationStatement",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "MessageDefinition",
        "MessageHeader",
        "MolecularSequence",
        "NamingSystem",
        "NutritionOrder",
        "Observation",
        "ObservationDefinition",
        "OperationDefinition",
        "OperationOutcome",
        "Organization",
        "OrganizationAffiliation",
        "Parameters",
        "Patient",
        "PaymentNotice",
        "PaymentReconciliation",
        "Person",
        "PlanDefinition",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "RelatedPerson",
        "RequestGroup",
        "ResearchDefinition",
        "ResearchElementDefinition",
        "ResearchStudy",
        "ResearchSubject",
        "RiskAssessment",
        "RiskEvidenceSynthesis",
        "Schedule",
        "SearchParameter",
        "ServiceRequest",
        "Slot",
        "Specimen",
        "SpecimenDefinition",
        "StructureDefinition",
        "StructureMap",
        "Subscription",
        "Substance",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
        "SupplyDelivery",
        "SupplyRequest",
        "Task",
        "TerminologyCapabilities",
        "TestReport",
        "TestScript",
        "ValueSet",
        "VerificationResult",
        "VisionPrescription",
    ]
)

MAX_LISTED_ITEMS = 64  # resource types or categories in one consent


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_millis(when: datetime) -> datetime:
    """``when`` at MongoDB's precision, so what is stored reads back equal."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def new_object_id(now: datetime) -> str:
    """A 32-hex-digit id that sorts by creation time (48-bit milliseconds, 80 random bits),
    so listing in id order is listing in creation order; also a valid FHIR id."""
    millis = int(now.timestamp() * 1000)
    return f"{millis:012x}{os.urandom(10).hex()}"


@dataclass(frozen=True)
class Grantee:
    kind: GranteeKind
    id: str

    @property
    def key(self) -> str:
        """One string per grantee, what the store indexes (``organization:st-marys``)."""
        return f"{self.kind.value}:{self.id}"


@dataclass(frozen=True)
class ConsentTerms:
    """What a patient (or their proxy) agrees to, as validated from a grant request."""

    patient_id: str
    grantee: Grantee
    resource_types: tuple[str, ...]
    categories: tuple[str, ...]
    purposes: tuple[Purpose, ...]
    period_start: datetime
    period_end: datetime | None
    granted_by: str
    proxy_relationship: str = ""
    grantor_role: GrantorRole = GrantorRole.PATIENT

    def commitment(self, salt: bytes) -> bytes:
        """Salted SHA-256 of the terms, for the ledger: it proves later what was agreed
        without revealing it (the salt stays in identity)."""
        canonical = json.dumps(
            {
                "patient_id": self.patient_id,
                "grantee": self.grantee.key,
                "resource_types": sorted(self.resource_types),
                "categories": sorted(self.categories),
                "purposes": sorted(self.purposes),
                "period_start": self.period_start.isoformat(),
                "period_end": self.period_end.isoformat() if self.period_end else None,
                "granted_by": self.granted_by,
                "proxy_relationship": self.proxy_relationship,
                "grantor_role": self.grantor_role.value,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return hashlib.sha256(salt + canonical).digest()


@dataclass(frozen=True)
class Consent:
    consent_id: str
    terms: ConsentTerms
    create_time: datetime
    # The principal that recorded it: the grantor.
    recorded_by: str
    revoke_time: datetime | None = None
    revoked_by: str = ""

    def status(self, now: datetime) -> ConsentStatus:
        if self.revoke_time is not None:
            return ConsentStatus.REVOKED
        if self.terms.period_end is not None and self.terms.period_end <= now:
            return ConsentStatus.EXPIRED
        return ConsentStatus.ACTIVE

    def in_force(self, now: datetime) -> bool:
        """Active, and its period has started (a consent may be granted ahead of time)."""
        return self.status(now) is ConsentStatus.ACTIVE and self.terms.period_start <= now

    def covers_data(self, resource_type: str, categories: frozenset[str]) -> bool:
        """Whether the data concerned is within the consent.

        Listed resource types and listed categories each narrow the consent (empty: any).
        A category-restricted consent covers only data whose categories are known and all
        listed: when the caller cannot say which categories the data has, it does not apply.
        """
        terms = self.terms
        if terms.resource_types and resource_type not in terms.resource_types:
            return False
        if terms.categories:
            return bool(categories) and categories <= frozenset(terms.categories)
        return True

    def allows_purpose(self, purpose: Purpose) -> bool:
        return purpose in self.terms.purposes


def _check(
    problems: list[FieldViolation], field: str, value: str, pattern: re.Pattern[str]
) -> None:
    if not pattern.fullmatch(value):
        problems.append(FieldViolation(field, f"must match {pattern.pattern}"))


def check_patient_id(problems: list[FieldViolation], field: str, value: str) -> None:
    if not value:
        problems.append(FieldViolation(field, "is required"))
    else:
        _check(problems, field, value, FHIR_ID)


def check_grantee(problems: list[FieldViolation], field: str, grantee: Grantee | None) -> None:
    if grantee is None:
        problems.append(FieldViolation(field, "is required: organization, client_id or user_id"))
        return
    name = {
        GranteeKind.ORGANIZATION: "organization",
        GranteeKind.CLIENT: "client_id",
        GranteeKind.USER: "user_id",
    }[grantee.kind]
    pattern = ORGANIZATION_ID if grantee.kind is GranteeKind.ORGANIZATION else PRINCIPAL_ID
    _check(problems, f"{field}.{name}", grantee.id, pattern)


def check_idempotency_key(problems: list[FieldViolation], key: str) -> None:
    if key:
        _check(problems, "idempotency_key", key, IDEMPOTENCY_KEY)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _check_data(
    problems: list[FieldViolation], resource_types: Sequence[str], categories: Sequence[str]
) -> None:
    for index, resource_type in enumerate(resource_types):
        if resource_type not in FHIR_RESOURCE_TYPES:
            problems.append(
                FieldViolation(f"resource_types[{index}]", "must be a FHIR R4 resource type")
            )
    for index, category in enumerate(categories):
        _check(problems, f"categories[{index}]", category, CATEGORY_CODE)
    if not resource_types and not categories:
        problems.append(
            FieldViolation("resource_types", "at least one resource type or category is required")
        )
    if len(resource_types) > MAX_LISTED_ITEMS:
        problems.append(FieldViolation("resource_types", f"at most {MAX_LISTED_ITEMS}"))
    if len(categories) > MAX_LISTED_ITEMS:
        problems.append(FieldViolation("categories", f"at most {MAX_LISTED_ITEMS}"))


def _check_purposes(problems: list[FieldViolation], purposes: Sequence[Purpose | None]) -> None:
    if not purposes:
        problems.append(FieldViolation("purposes", "at least one purpose is required"))
    for index, purpose in enumerate(purposes):
        if purpose is None:
            problems.append(FieldViolation(f"purposes[{index}]", "must be a known purpose of use"))


def _check_grantor(problems: list[FieldViolation], granted_by: str, relationship: str) -> None:
    if not granted_by:
        problems.append(FieldViolation("granted_by", "is required"))
    else:
        _check(problems, "granted_by", granted_by, PRINCIPAL_ID)
    if relationship:
        _check(problems, "proxy_relationship", relationship, ROLE_CODE)


def validate_terms(
    *,
    patient_id: str,
    grantee: Grantee | None,
    resource_types: Sequence[str],
    categories: Sequence[str],
    purposes: Sequence[Purpose | None],
    period_start: datetime | None,
    period_end: datetime | None,
    granted_by: str,
    proxy_relationship: str,
    idempotency_key: str = "",
    now: datetime,
) -> ConsentTerms:
    """The terms of a grant request, or InvalidArgument naming every bad field.

    ``purposes`` holds ``None`` where the request named no known purpose.
    """
    problems: list[FieldViolation] = []
    check_patient_id(problems, "patient_id", patient_id)
    check_grantee(problems, "grantee", grantee)
    _check_data(problems, resource_types, categories)
    _check_purposes(problems, purposes)
    start = to_millis(period_start or now)
    end = to_millis(period_end) if period_end is not None else None
    if end is not None and end <= start:
        problems.append(FieldViolation("period_end", "must be after period_start"))
    elif end is not None and end <= now:
        problems.append(FieldViolation("period_end", "must be in the future"))
    _check_grantor(problems, granted_by, proxy_relationship)
    check_idempotency_key(problems, idempotency_key)
    if problems or grantee is None:
        raise InvalidArgument(problems)
    return ConsentTerms(
        patient_id=patient_id,
        grantee=grantee,
        resource_types=_unique(resource_types),
        categories=_unique(categories),
        purposes=tuple(dict.fromkeys(p for p in purposes if p is not None)),
        period_start=start,
        period_end=end,
        granted_by=granted_by,
        proxy_relationship=proxy_relationship,
    )
