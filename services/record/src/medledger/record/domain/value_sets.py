"""The FHIR R4 (4.0.1) value sets bound with strength *required* that fhir.resources does not
enforce: a ``status`` of ``"bogus"`` passes its models, so these tables are checked on top.

Each entry names the value set's canonical URL (https://hl7.org/fhir/R4/valueset-<id>.html
lists its codes). Keys are (FHIR type, element): the type is the class of the element's owner
as fhir.resources names it (backbone elements as ``AllergyIntoleranceReaction``), so a data type
binding such as ``Identifier.use`` applies wherever an Identifier appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class ValueSet:
    url: str
    codes: frozenset[str]
    # The code system the codes come from: checked on CodeableConcept bindings, where the
    # coding must carry it; ``code`` elements carry no system.
    system: str = ""


def _vs(name: str, codes: str, system: str = "") -> ValueSet:
    return ValueSet(f"http://hl7.org/fhir/ValueSet/{name}", frozenset(codes.split()), system)


_TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"

ADMINISTRATIVE_GENDER: Final = _vs("administrative-gender", "male female other unknown")
OBSERVATION_STATUS: Final = _vs(
    "observation-status",
    "registered preliminary final amended corrected cancelled entered-in-error unknown",
)
CONDITION_CLINICAL: Final = _vs(
    "condition-clinical",
    "active recurrence relapse inactive remission resolved",
    _TERMINOLOGY + "condition-clinical",
)
CONDITION_VERIFICATION: Final = _vs(
    "condition-ver-status",
    "unconfirmed provisional differential confirmed refuted entered-in-error",
    _TERMINOLOGY + "condition-ver-status",
)
ENCOUNTER_STATUS: Final = _vs(
    "encounter-status",
    "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown",
)
MEDICATION_REQUEST_STATUS: Final = _vs(
    "medicationrequest-status",
    "active on-hold cancelled completed entered-in-error stopped draft unknown",
)
MEDICATION_REQUEST_INTENT: Final = _vs(
    "medicationrequest-intent",
    "proposal plan order original-order reflex-order filler-order instance-order option",
)
ALLERGY_CLINICAL: Final = _vs(
    "allergyintolerance-clinical",
    "active inactive resolved",
    _TERMINOLOGY + "allergyintolerance-clinical",
)
ALLERGY_VERIFICATION: Final = _vs(
    "allergyintolerance-verification",
    "unconfirmed confirmed refuted entered-in-error",
    _TERMINOLOGY + "allergyintolerance-verification",
)
EVENT_STATUS: Final = _vs(
    "event-status",
    "preparation in-progress not-done on-hold stopped completed entered-in-error unknown",
)
DIAGNOSTIC_REPORT_STATUS: Final = _vs(
    "diagnostic-report-status",
    "registered partial preliminary final amended corrected appended cancelled"
    " entered-in-error unknown",
)

CODE_BINDINGS: Final[dict[tuple[str, str], ValueSet]] = {
    ("Patient", "gender"): ADMINISTRATIVE_GENDER,
    ("PatientContact", "gender"): ADMINISTRATIVE_GENDER,
    ("PatientLink", "type"): _vs("link-type", "replaced-by replaces refer seealso"),
    ("Observation", "status"): OBSERVATION_STATUS,
    ("Encounter", "status"): ENCOUNTER_STATUS,
    ("EncounterStatusHistory", "status"): ENCOUNTER_STATUS,
    ("EncounterLocation", "status"): _vs(
        "encounter-location-status", "planned active reserved completed"
    ),
    ("MedicationRequest", "status"): MEDICATION_REQUEST_STATUS,
    ("MedicationRequest", "intent"): MEDICATION_REQUEST_INTENT,
    ("MedicationRequest", "priority"): _vs("request-priority", "routine urgent asap stat"),
    ("AllergyIntolerance", "type"): _vs("allergy-intolerance-type", "allergy intolerance"),
    ("AllergyIntolerance", "category"): _vs(
        "allergy-intolerance-category", "food medication environment biologic"
    ),
    ("AllergyIntolerance", "criticality"): _vs(
        "allergy-intolerance-criticality", "low high unable-to-assess"
    ),
    ("AllergyIntoleranceReaction", "severity"): _vs(
        "reaction-event-severity", "mild moderate severe"
    ),
    ("Procedure", "status"): EVENT_STATUS,
    ("Immunization", "status"): _vs("immunization-status", "completed entered-in-error not-done"),
    ("DiagnosticReport", "status"): DIAGNOSTIC_REPORT_STATUS,
    ("DocumentReference", "status"): _vs(
        "document-reference-status", "current superseded entered-in-error"
    ),
    ("DocumentReference", "docStatus"): _vs(
        "composition-status", "preliminary final amended entered-in-error"
    ),
    ("DocumentReferenceRelatesTo", "code"): _vs(
        "document-relationship-type", "replaces transforms signs appends"
    ),
    ("RiskAssessment", "status"): OBSERVATION_STATUS,
    ("ProvenanceEntity", "role"): _vs(
        "provenance-entity-role", "derivation revision quotation source removal"
    ),
    # Data types, wherever they appear.
    ("Identifier", "use"): _vs("identifier-use", "usual official temp secondary old"),
    ("HumanName", "use"): _vs("name-use", "usual official temp nickname anonymous old maiden"),
    ("ContactPoint", "system"): _vs("contact-point-system", "phone fax email pager url sms other"),
    ("ContactPoint", "use"): _vs("contact-point-use", "home work temp old mobile"),
    ("Address", "use"): _vs("address-use", "home work temp old billing"),
    ("Address", "type"): _vs("address-type", "postal physical both"),
    ("Quantity", "comparator"): _vs("quantity-comparator", "< <= >= >"),
    ("Narrative", "status"): _vs("narrative-status", "generated extensions additional empty"),
    ("TimingRepeat", "durationUnit"): _vs("units-of-time", "s min h d wk mo a"),
    ("TimingRepeat", "periodUnit"): _vs("units-of-time", "s min h d wk mo a"),
    ("TimingRepeat", "dayOfWeek"): _vs("days-of-week", "mon tue wed thu fri sat sun"),
}
"""Elements of type ``code`` (or lists of codes) whose value must be one of the set's codes."""

CONCEPT_BINDINGS: Final[dict[tuple[str, str], ValueSet]] = {
    ("Condition", "clinicalStatus"): CONDITION_CLINICAL,
    ("Condition", "verificationStatus"): CONDITION_VERIFICATION,
    ("AllergyIntolerance", "clinicalStatus"): ALLERGY_CLINICAL,
    ("AllergyIntolerance", "verificationStatus"): ALLERGY_VERIFICATION,
}
"""CodeableConcepts with a required binding: one coding must be from the set (system and
code), and no coding of the set's system may carry another code. Text alone does not do."""
