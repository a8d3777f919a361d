"""Valid FHIR R4 resources of every type the record stores, one patient's, for tests.

Each sample fills many elements (codes, references, choice types, backbone elements,
extensions) so that tests mutating them reach most of the validator. :func:`samples` returns
fresh copies; tests may change them.
"""

from __future__ import annotations

import copy
from typing import Any, Final

PATIENT_ID: Final = "pat-1"
PATIENT_REF: Final = {"reference": f"Patient/{PATIENT_ID}", "display": "Ada Lovelace"}
LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
UCUM: Final = "http://unitsofmeasure.org"
_TERMINOLOGY: Final = "http://terminology.hl7.org/CodeSystem/"

_SAMPLES: Final[dict[str, dict[str, Any]]] = {
    "Patient": {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ada</div>',
        },
        "identifier": [
            {"use": "official", "system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"},
            {
                "use": "usual",
                "type": {"coding": [{"system": _TERMINOLOGY + "v2-0203", "code": "MR"}]},
                "system": "https://hospital.example/mrn",
                "value": "MRN0001",
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": "Lovelace", "given": ["Ada", "Augusta"]},
            {"use": "maiden", "family": "Byron", "given": ["Ada"]},
        ],
        "telecom": [
            {"system": "phone", "value": "+44 20 7946 0000", "use": "mobile"},
            {"system": "email", "value": "ada@example.org"},
        ],
        "gender": "female",
        "birthDate": "1815-12-10",
        "deceasedDateTime": "1852-11-27",
        "address": [
            {
                "use": "home",
                "type": "physical",
                "line": ["12 St James's Square"],
                "city": "London",
                "postalCode": "SW1Y 4JH",
                "country": "GB",
            }
        ],
        "maritalStatus": {"coding": [{"system": _TERMINOLOGY + "v3-MaritalStatus", "code": "M"}]},
        "contact": [
            {
                "relationship": [{"coding": [{"system": _TERMINOLOGY + "v2-0131", "code": "N"}]}],
                "name": {"family": "King", "given": ["William"]},
                "gender": "male",
            }
        ],
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-GB"}]}}
        ],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "London", "country": "GB"},
            }
        ],
    },
    "Observation": {
        "resourceType": "Observation",
        "id": "obs-glucose",
        "status": "final",
        "category": [
            {"coding": [{"system": _TERMINOLOGY + "observation-category", "code": "laboratory"}]}
        ],
        "code": {
            "coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose [Mass/volume]"}],
            "text": "Glucose",
        },
        "subject": PATIENT_REF,
        "encounter": {"reference": "Encounter/enc-1"},
        "effectiveDateTime": "2024-03-05T08:30:00+01:00",
        "issued": "2024-03-05T10:00:00Z",
        "performer": [{"reference": "#lab"}],
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
        "interpretation": [
            {"coding": [{"system": _TERMINOLOGY + "v3-ObservationInterpretation", "code": "N"}]}
        ],
        "referenceRange": [
            {
                "low": {"value": 3.9, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
                "high": {"value": 7.8, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
            }
        ],
        "contained": [{"resourceType": "Organization", "id": "lab", "name": "City Lab"}],
        "note": [{"text": "fasting"}],
    },
    "Condition": {
        "resourceType": "Condition",
        "id": "cond-1",
        "clinicalStatus": {
            "coding": [{"system": _TERMINOLOGY + "condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": _TERMINOLOGY + "condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {"system": _TERMINOLOGY + "condition-category", "code": "problem-list-item"}
                ]
            }
        ],
        "severity": {"coding": [{"system": SNOMED, "code": "24484000"}]},
        "code": {"coding": [{"system": SNOMED, "code": "44054006", "display": "Diabetes type 2"}]},
        "subject": PATIENT_REF,
        "onsetDateTime": "2019-06",
        "recordedDate": "2019-07-01",
        "evidence": [{"detail": [{"reference": "Observation/obs-glucose"}]}],
    },
    "Encounter": {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",
        "statusHistory": [
            {"status": "arrived", "period": {"start": "2024-03-05T08:00:00Z"}},
        ],
        "class": {"system": _TERMINOLOGY + "v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": SNOMED, "code": "185349003"}]}],
        "subject": PATIENT_REF,
        "participant": [{"individual": {"reference": "Practitioner/prac-1"}}],
        "period": {"start": "2024-03-05T08:00:00Z", "end": "2024-03-05T09:00:00Z"},
        "reasonCode": [{"text": "check-up"}],
        "location": [{"location": {"display": "Clinic A"}, "status": "completed"}],
    },
    "MedicationRequest": {
        "resourceType": "MedicationRequest",
        "id": "medreq-1",
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "category": [
            {
                "coding": [
                    {
                        "system": _TERMINOLOGY + "medicationrequest-category",
                        "code": "outpatient",
                    }
                ]
            }
        ],
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975"}]
        },
        "subject": PATIENT_REF,
        "authoredOn": "2024-03-05",
        "requester": {"reference": "Practitioner/prac-1"},
        "dosageInstruction": [
            {
                "text": "one tablet twice a day",
                "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 1, "unit": "tablet", "system": UCUM, "code": "1"}}
                ],
            }
        ],
    },
    "AllergyIntolerance": {
        "resourceType": "AllergyIntolerance",
        "id": "allergy-1",
        "clinicalStatus": {
            "coding": [{"system": _TERMINOLOGY + "allergyintolerance-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": _TERMINOLOGY + "allergyintolerance-verification",
                    "code": "confirmed",
                }
            ]
        },
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "code": {"coding": [{"system": SNOMED, "code": "764146007", "display": "Penicillin"}]},
        "patient": PATIENT_REF,
        "onsetDateTime": "2010",
        "recordedDate": "2015-02-03T10:00:00Z",
        "reaction": [
            {
                "manifestation": [{"coding": [{"system": SNOMED, "code": "247472004"}]}],
                "severity": "moderate",
            }
        ],
    },
    "Procedure": {
        "resourceType": "Procedure",
        "id": "proc-1",
        "status": "completed",
        "category": {"coding": [{"system": SNOMED, "code": "387713003"}]},
        "code": {"coding": [{"system": SNOMED, "code": "80146002", "display": "Appendectomy"}]},
        "subject": PATIENT_REF,
        "performedPeriod": {"start": "2023-01-10T09:00:00Z", "end": "2023-01-10T10:30:00Z"},
        "performer": [{"actor": {"reference": "Practitioner/prac-1"}}],
        "bodySite": [{"coding": [{"system": SNOMED, "code": "66754008"}]}],
    },
    "Immunization": {
        "resourceType": "Immunization",
        "id": "imm-1",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
        "patient": PATIENT_REF,
        "occurrenceDateTime": "2023-10-01",
        "primarySource": True,
        "lotNumber": "AB123",
        "doseQuantity": {"value": 0.5, "unit": "mL", "system": UCUM, "code": "mL"},
        "protocolApplied": [{"doseNumberPositiveInt": 1}],
    },
    "DiagnosticReport": {
        "resourceType": "DiagnosticReport",
        "id": "report-1",
        "status": "final",
        "category": [{"coding": [{"system": _TERMINOLOGY + "v2-0074", "code": "LAB"}]}],
        "code": {"coding": [{"system": LOINC, "code": "24323-8"}]},
        "subject": PATIENT_REF,
        "effectiveDateTime": "2024-03-05T08:30:00Z",
        "issued": "2024-03-05T12:00:00Z",
        "result": [{"reference": "Observation/obs-glucose"}],
        "conclusion": "within normal limits",
    },
    "DocumentReference": {
        "resourceType": "DocumentReference",
        "id": "doc-1",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": "34133-9"}]},
        "category": [{"coding": [{"system": LOINC, "code": "11488-4"}]}],
        "subject": PATIENT_REF,
        "date": "2024-03-05T12:00:00Z",
        "author": [{"reference": "Practitioner/prac-1"}],
        "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/doc-0"}}],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": "https://docs.example/doc-1.pdf",
                    "title": "Discharge summary",
                }
            }
        ],
    },
    "RiskAssessment": {
        "resourceType": "RiskAssessment",
        "id": "risk-1",
        "status": "final",
        "method": {"coding": [{"system": "https://medledger.dev/models", "code": "diabetes"}]},
        "code": {"coding": [{"system": SNOMED, "code": "225338004"}]},
        "subject": PATIENT_REF,
        "occurrenceDateTime": "2024-03-06T09:00:00Z",
        "basis": [{"reference": "Observation/obs-glucose"}],
        "prediction": [
            {
                "outcome": {"text": "disease progression"},
                "probabilityDecimal": 42.5,
                "whenRange": {
                    "high": {"value": 1, "unit": "a", "system": UCUM, "code": "a"},
                },
            },
            {
                "outcome": {"text": "hospital admission"},
                "probabilityRange": {
                    "low": {"value": 5, "unit": "%", "system": UCUM, "code": "%"},
                    "high": {"value": 10, "unit": "%", "system": UCUM, "code": "%"},
                },
            },
        ],
    },
    "Provenance": {
        "resourceType": "Provenance",
        "id": "prov-1",
        "target": [
            {"reference": "RiskAssessment/risk-1/_history/1"},
            {"reference": f"Patient/{PATIENT_ID}"},
        ],
        "recorded": "2024-03-06T09:00:01Z",
        "activity": {"coding": [{"system": _TERMINOLOGY + "v3-DataOperation", "code": "CREATE"}]},
        "agent": [
            {
                "type": {
                    "coding": [
                        {"system": _TERMINOLOGY + "provenance-participant-type", "code": "author"}
                    ]
                },
                "who": {"display": "medledger inference"},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": "Observation/obs-glucose"}}],
    },
}

RESOURCE_TYPES: Final = tuple(_SAMPLES)


def sample(resource_type: str) -> dict[str, Any]:
    """A fresh copy of the valid sample of ``resource_type``."""
    return copy.deepcopy(_SAMPLES[resource_type])


def samples() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(_SAMPLES)


def measured_observation(
    patient_id: str,
    system: str,
    code: str,
    value: float,
    unit: str,
    *,
    effective: str = "2026-10-01T08:00:00Z",
) -> dict[str, Any]:
    """A final Observation of ``patient_id``: ``value`` in the UCUM ``unit`` (also its code),
    coded ``system|code``, measured at ``effective``."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": effective,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
