"""Pseudonymised exports: a patient's resources with the direct identifiers replaced.

What changes, in every resource of the export:

- resource ids, and every reference to a resource of the export, become pseudonyms (so the
  Bundle stays linked inside, and links to nothing outside);
- every ``identifier`` keeps its ``use`` only: its value becomes a pseudonym, its system
  :data:`PSEUDONYM_SYSTEM`, and its type is marked ``PSEUDED`` (HL7 v3 ObservationValue), so
  no reader mistakes it for a real medical record number;
- free text that may name the patient goes: ``text`` (the narrative), ``note``, and the
  ``display`` of every reference;
- on the Patient: ``name``, ``telecom``, ``address`` (except its country), ``photo``,
  ``contact`` and ``link`` are removed, ``birthDate`` and ``deceasedDateTime`` are cut to the
  year;
- ``meta.security`` gets the ``PSEUDED`` label, and ``meta.versionId``/``lastUpdated`` stay.

Pseudonyms are HMAC-SHA-256 under a key drawn for this export alone: the same value gets the
same pseudonym within one Bundle, and another in the next export, so two exports cannot be
joined on them. Clinical content (codes, values, dates of care) is kept: this is
pseudonymisation (GDPR Art. 4(5)), not anonymisation, and the Bundle is still personal data.
A pseudonymised Bundle carries no ledger proofs: its content is not what was committed, and
the commitment salts would let a reader test guesses of the removed names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any, Final

from medledger.record.domain.fhir_references import parse_relative

PSEUDONYM_SYSTEM: Final = "urn:medledger:pseudonymised"
SECURITY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
PSEUDED: Final = {"system": SECURITY_SYSTEM, "code": "PSEUDED", "display": "pseudonymized"}
_PATIENT_REMOVED: Final = ("name", "telecom", "photo", "contact", "link")
_FREE_TEXT: Final = ("text", "note")
_KEY_SIZE: Final = 32


class Pseudonymiser:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(_KEY_SIZE)

    def pseudonym(self, kind: str, value: str) -> str:
        """A FHIR id (40 hex digits) standing for ``value`` of ``kind`` in this export."""
        digest = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return digest.hexdigest()[:40]

    def resource(
        self, resource: Mapping[str, Any], members: set[tuple[str, str]]
    ) -> dict[str, Any]:
        """``resource`` pseudonymised; ``members`` are the (type, id) of every resource of
        the export, whose references are rewritten."""
        resource_type = str(resource.get("resourceType", ""))
        out = self._walk(resource, members)
        assert isinstance(out, dict)
        out["id"] = self.pseudonym(resource_type, str(resource.get("id", "")))
        if resource_type == "Patient":
            _patient(out)
        meta = dict(out.get("meta") or {})
        security = [label for label in meta.get("security", []) if label != PSEUDED]
        meta["security"] = [*security, dict(PSEUDED)]
        out["meta"] = meta
        return out

    def _walk(self, value: Any, members: set[tuple[str, str]]) -> Any:
        if isinstance(value, list):
            return [self._walk(item, members) for item in value]
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for name, member in value.items():
            if name in _FREE_TEXT:
                continue
            if name == "identifier":
                out[name] = self._identifiers(member)
            elif name == "reference" and isinstance(member, str):
                out[name] = self._reference(member, members)
            elif name == "display" and "reference" in value:
                continue
            else:
                out[name] = self._walk(member, members)
        return out

    def _identifiers(self, value: Any) -> Any:
        many = isinstance(value, list)
        found = value if many else [value]
        replaced = [self._identifier(item) for item in found if isinstance(item, dict)]
        return replaced if many else (replaced[0] if replaced else {})

    def _identifier(self, identifier: Mapping[str, Any]) -> dict[str, Any]:
        original = f"{identifier.get('system', '')}|{identifier.get('value', '')}"
        out: dict[str, Any] = {
            "type": {"coding": [dict(PSEUDED)], "text": "pseudonymised identifier"},
            "system": PSEUDONYM_SYSTEM,
            "value": self.pseudonym("identifier", original),
        }
        if "use" in identifier:
            out["use"] = identifier["use"]
        return out

    def _reference(self, reference: str, members: set[tuple[str, str]]) -> str:
        parsed = parse_relative(reference)
        if parsed is None:
            return reference
        inside = (parsed.resource_type, parsed.id) in members
        if not inside and parsed.resource_type != "Patient":  # a patient's id never in clear
            return reference
        pseudonym = self.pseudonym(parsed.resource_type, parsed.id)
        return str(parsed._replace(id=pseudonym))


def _patient(patient: dict[str, Any]) -> None:
    for name in _PATIENT_REMOVED:
        patient.pop(name, None)
    for name in ("birthDate", "deceasedDateTime"):
        value = patient.get(name)
        if isinstance(value, str) and len(value) >= 4:
            patient[name] = value[:4]
    addresses = patient.pop("address", None)
    if isinstance(addresses, list):
        countries = [
            {"country": a["country"]} for a in addresses if isinstance(a, dict) and "country" in a
        ]
        if countries:
            patient["address"] = countries
