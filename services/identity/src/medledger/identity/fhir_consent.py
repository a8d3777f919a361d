"""A consent as a FHIR R4 Consent resource (scope patient-privacy, provision permit).

fhir.resources ships R4B, whose Consent is the R4 Consent unchanged; every export is
validated with it before it leaves the service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir.resources.R4B.consent import Consent as FhirConsent

from medledger.identity.domain.consent import Consent, ConsentStatus, GranteeKind

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
LOINC = "http://loinc.org"
PATIENT_CONSENT_LOINC = "59284-0"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
# Identifier systems of medledger's own ids.
CONSENT_ID_SYSTEM = "urn:medledger:consent"
CLIENT_ID_SYSTEM = "urn:medledger:client"
USER_ID_SYSTEM = "urn:medledger:user"
# Where a category code comes from, for the codes FHIR R4 defines.
CATEGORY_SYSTEMS = {
    **dict.fromkeys(
        (
            "social-history",
            "vital-signs",
            "imaging",
            "laboratory",
            "procedure",
            "survey",
            "exam",
            "therapy",
            "activity",
        ),
        "http://terminology.hl7.org/CodeSystem/observation-category",
    ),
    **dict.fromkeys(
        ("problem-list-item", "encounter-diagnosis"),
        "http://terminology.hl7.org/CodeSystem/condition-category",
    ),
    **dict.fromkeys(
        ("LAB", "RAD", "PAT", "MB", "CH", "HM", "CUS", "CT", "NMR", "US", "EC", "GE", "SP"),
        "http://terminology.hl7.org/CodeSystem/v2-0074",
    ),
}


def _instant(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _grantee_reference(consent: Consent) -> dict[str, Any]:
    grantee = consent.terms.grantee
    if grantee.kind is GranteeKind.ORGANIZATION:
        return {"reference": f"Organization/{grantee.id}"}
    if grantee.kind is GranteeKind.CLIENT:  # a partner application
        return {"type": "Device", "identifier": {"system": CLIENT_ID_SYSTEM, "value": grantee.id}}
    return {"identifier": {"system": USER_ID_SYSTEM, "value": grantee.id}}


def _proxy(consent: Consent) -> dict[str, Any]:
    """The proxy who signed, as a contained RelatedPerson with its v3 RoleCode relation; known
    by that relation only (``granted_by`` is the record holder who entered the form)."""
    terms = consent.terms
    return {
        "resourceType": "RelatedPerson",
        "id": "proxy",
        "patient": {"reference": f"Patient/{terms.patient_id}"},
        "relationship": [{"coding": [{"system": ROLE_CODE, "code": terms.proxy_relationship}]}],
    }


def _category_coding(code: str) -> dict[str, str]:
    system = CATEGORY_SYSTEMS.get(code)
    return {"system": system, "code": code} if system else {"code": code}


def consent_resource(consent: Consent, now: datetime) -> dict[str, Any]:
    """The FHIR R4 Consent for ``consent`` as its status is at ``now`` (JSON-ready)."""
    terms = consent.terms
    period = {"start": _instant(terms.period_start)}
    if terms.period_end is not None:
        period["end"] = _instant(terms.period_end)
    provision: dict[str, Any] = {
        "type": "permit",
        "period": period,
        "actor": [
            {
                "role": {"coding": [{"system": PARTICIPATION_TYPE, "code": "IRCP"}]},
                "reference": _grantee_reference(consent),
            }
        ],
        "purpose": [{"system": ACT_REASON, "code": purpose.value} for purpose in terms.purposes],
    }
    classes = [{"system": RESOURCE_TYPES, "code": t} for t in terms.resource_types]
    classes += [_category_coding(c) for c in terms.categories]
    provision["class"] = classes
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent.consent_id,
        "identifier": [{"system": CONSENT_ID_SYSTEM, "value": consent.consent_id}],
        "status": "active" if consent.status(now) is ConsentStatus.ACTIVE else "inactive",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": LOINC, "code": PATIENT_CONSENT_LOINC}]}],
        "patient": {"reference": f"Patient/{terms.patient_id}"},
        "dateTime": _instant(consent.create_time),
        "performer": [{"reference": f"Patient/{terms.patient_id}"}],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
    }
    if terms.proxy_relationship:
        resource["contained"] = [_proxy(consent)]
        resource["performer"] = [{"reference": "#proxy"}]
    return resource


def consent_json(consent: Consent, now: datetime) -> str:
    """The validated FHIR R4 Consent JSON of ``consent``."""
    return FhirConsent.model_validate(consent_resource(consent, now)).model_dump_json()
