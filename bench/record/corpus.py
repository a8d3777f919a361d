"""The benchmark's FHIR resources: the testkit's valid samples (``fhir_samples``), varied per
patient and resource (names, identifiers, dates, codes, values) so that stored documents,
search tokens and key lookups differ as they would in a hospital's record.

A patient has one Patient resource and about ``PER_PATIENT - 1`` clinical ones, mostly
laboratory and vital-sign Observations (the types a record holds most of).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from medledger.record.domain.compartment import PATIENT_ELEMENT
from medledger.testkit.fhir_samples import LOINC, UCUM, sample

PER_PATIENT: Final = 50
# (LOINC code, display, unit, typical value): what a search by code selects among.
OBSERVATION_CODES: Final = (
    ("2345-7", "Glucose [Moles/volume] in Serum or Plasma", "mmol/L", 5.4),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 13.5),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "umol/L", 80.0),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 6.1),
    ("2093-3", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L", 4.8),
    ("8867-4", "Heart rate", "/min", 72.0),
    ("8310-5", "Body temperature", "Cel", 36.8),
    ("29463-7", "Body weight", "kg", 74.0),
)
# Relative weights of the clinical types among a patient's resources.
CLINICAL_MIX: Final = (
    ("Observation", 60),
    ("Condition", 7),
    ("Encounter", 9),
    ("MedicationRequest", 7),
    ("AllergyIntolerance", 2),
    ("Procedure", 4),
    ("Immunization", 4),
    ("DiagnosticReport", 4),
    ("DocumentReference", 2),
    ("RiskAssessment", 1),
)
FAMILIES: Final = ("Lovelace", "Hopper", "Turing", "Noether", "Curie", "Franklin", "Germain")
GIVEN: Final = ("Ada", "Grace", "Alan", "Emmy", "Marie", "Rosalind", "Sophie", "Mary")


@dataclass(frozen=True)
class Resource:
    """One resource to store: its type, its patient, and its JSON (no id)."""

    resource_type: str
    patient_id: str
    text: str


def _day(rng: random.Random) -> str:
    return f"{rng.randrange(2015, 2025)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"


def _instant(rng: random.Random) -> str:
    return f"{_day(rng)}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"


def patient(rng: random.Random) -> dict[str, Any]:
    """A Patient (no id: the server, or the loader, gives it one)."""
    document = sample("Patient")
    del document["id"]
    family, given = rng.choice(FAMILIES), rng.choice(GIVEN)
    document["name"] = [{"use": "official", "family": family, "given": [given]}]
    document["identifier"][0]["value"] = f"{rng.randrange(10**8, 10**9)}"
    document["identifier"][1]["value"] = f"MRN{rng.randrange(10**7, 10**8)}"
    document["telecom"][1]["value"] = f"{given.lower()}.{rng.randrange(10**6)}@example.org"
    document["gender"] = rng.choice(("female", "male", "other", "unknown"))
    document["birthDate"] = f"{rng.randrange(1930, 2020)}-{rng.randrange(1, 13):02d}-10"
    del document["deceasedDateTime"]
    return document


def observation(rng: random.Random, patient_id: str) -> dict[str, Any]:
    document = sample("Observation")
    code, display, unit, typical = rng.choice(OBSERVATION_CODES)
    document["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}]}
    value = round(typical * rng.uniform(0.7, 1.3), 1)
    quantity = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    document["valueQuantity"] = quantity
    document["referenceRange"] = [
        {
            "low": {**quantity, "value": round(typical * 0.8, 1)},
            "high": {**quantity, "value": round(typical * 1.2, 1)},
        }
    ]
    when = _instant(rng)
    document["effectiveDateTime"] = when
    document["issued"] = when
    document["subject"] = {"reference": f"Patient/{patient_id}"}
    return document


def clinical(rng: random.Random, resource_type: str, patient_id: str) -> dict[str, Any]:
    """A clinical resource of ``resource_type`` in ``patient_id``'s compartment."""
    if resource_type == "Observation":
        return observation(rng, patient_id)
    document = sample(resource_type)
    document[PATIENT_ELEMENT[resource_type]] = {"reference": f"Patient/{patient_id}"}
    for element in ("recordedDate", "authoredOn", "occurrenceDateTime"):
        if element in document:
            document[element] = _day(rng)
    for element in ("effectiveDateTime", "issued", "date"):
        if element in document:
            document[element] = _instant(rng)
    return document


def without_id(document: dict[str, Any]) -> str:
    document.pop("id", None)
    return json.dumps(document)


def clinical_type(rng: random.Random) -> str:
    types = [name for name, _ in CLINICAL_MIX]
    return rng.choices(types, [weight for _, weight in CLINICAL_MIX])[0]


def resources(rng: random.Random, patient_ids: list[str], count: int) -> Iterator[Resource]:
    """``count`` clinical resources spread over ``patient_ids``, in an order that
    interleaves patients (as a hospital's writes would)."""
    for n in range(count):
        patient_id = patient_ids[n % len(patient_ids)]
        resource_type = clinical_type(rng)
        document = clinical(rng, resource_type, patient_id)
        yield Resource(resource_type, patient_id, without_id(document))
