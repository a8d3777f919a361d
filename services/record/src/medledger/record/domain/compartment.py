"""Which patient's compartment a resource lives in (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).

Every resource we store belongs to exactly one patient: keys, salts and erasure are per
patient, so a resource outside any compartment could be neither encrypted nor erased.

- ``Patient``: its own compartment (its id; none yet on a create, where the server assigns it).
- Clinical types: the element in :data:`PATIENT_ELEMENT`, which must be exactly
  ``Patient/<id>``: relative, unversioned, a Patient. FHIR lets some of these point at a Group
  or leave them out; we do not, since the resource would then have no patient.
- ``Provenance``: as FHIR defines its patient compartment (``target.where(resolve() is
  Patient)``), its targets must name the patient (``Patient/<id>``), one patient only. Its
  other targets must be relative references to stored types; the store checks that each lies
  in that same compartment (:attr:`Compartment.members`).

The patient's existence is the store's to check; this module reads the resource only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from medledger.record.domain.fhir_references import (
    LiteralReference,
    is_fhir_id,
    parse_relative,
)
from medledger.record.domain.resource_issues import (
    ResourceIssue,
    child,
    item,
    raise_if_any,
)

PATIENT_ELEMENT: Final[Mapping[str, str]] = {
    "Observation": "subject",
    "Condition": "subject",
    "Encounter": "subject",
    "MedicationRequest": "subject",
    "AllergyIntolerance": "patient",
    "Procedure": "subject",
    "Immunization": "patient",
    "DiagnosticReport": "subject",
    "DocumentReference": "subject",
    "RiskAssessment": "subject",
}
"""The reference that puts each clinical type in its patient's compartment."""

SUPPORTED_TYPES: Final = frozenset({"Patient", "Provenance", *PATIENT_ELEMENT})
"""The resource types the record stores."""


@dataclass(frozen=True)
class Compartment:
    """``patient_id`` is None only for a Patient without an id. ``members``: resources that
    must already lie in this patient's compartment (a Provenance's other targets)."""

    patient_id: str | None
    members: tuple[LiteralReference, ...] = ()


def compartment_of(resource: Mapping[str, Any]) -> Compartment:
    """The compartment of a resource of a supported type; :class:`ResourceInvalid` naming the
    reference when it does not put the resource in exactly one patient's compartment."""
    found, issues = find_compartment(resource)
    raise_if_any(issues)
    assert found is not None  # no issues means a compartment
    return found


def find_compartment(
    resource: Mapping[str, Any],
) -> tuple[Compartment | None, list[ResourceIssue]]:
    """The compartment, or None with the issues that prevent one."""
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        own_id = resource.get("id")
        return Compartment(own_id if is_fhir_id(own_id) else None), []
    if resource_type == "Provenance":
        return _provenance(resource)
    element = PATIENT_ELEMENT.get(resource_type) if isinstance(resource_type, str) else None
    if element is None:
        return None, [ResourceIssue("not-supported", "resourceType", "unsupported resource type")]
    reference = resource.get(element)
    if not isinstance(reference, Mapping):
        return None, [
            ResourceIssue("required", element, "the patient reference is required (Patient/<id>)")
        ]
    target = _patient(reference.get("reference"))
    if target is None:
        return None, [
            ResourceIssue(
                "value",
                child(element, "reference"),
                "must be a relative reference to a Patient: Patient/<id>",
            )
        ]
    return Compartment(target), []


def _patient(reference: object) -> str | None:
    """The id in ``Patient/<id>``, else None."""
    if not isinstance(reference, str):
        return None
    parsed = parse_relative(reference)
    if parsed is None or parsed.resource_type != "Patient" or parsed.version is not None:
        return None
    return parsed.id


def _provenance(
    resource: Mapping[str, Any],
) -> tuple[Compartment | None, list[ResourceIssue]]:
    targets = resource.get("target")
    if not isinstance(targets, list) or not targets:
        return None, [ResourceIssue("required", "target", "a Provenance needs a target")]
    issues: list[ResourceIssue] = []
    patients: set[str] = set()
    members: list[LiteralReference] = []
    for index, target in enumerate(targets):
        location = child(item("target", index), "reference")
        text = target.get("reference") if isinstance(target, Mapping) else None
        parsed = parse_relative(text) if isinstance(text, str) else None
        if parsed is None or parsed.resource_type not in SUPPORTED_TYPES:
            issues.append(
                ResourceIssue(
                    "value",
                    location,
                    "a Provenance target must be a relative reference to a stored resource type",
                )
            )
        elif parsed.resource_type == "Patient":
            patients.add(parsed.id)
        else:
            members.append(parsed)
    if issues:
        return None, issues
    if len(patients) != 1:
        return None, [
            ResourceIssue(
                "invariant",
                "target",
                "a Provenance's targets must name exactly one patient (Patient/<id>)",
            )
        ]
    return Compartment(patients.pop(), tuple(dict.fromkeys(members))), []
