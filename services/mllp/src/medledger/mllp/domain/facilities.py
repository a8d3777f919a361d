"""Which sending facility a connection speaks for, and as which medledger client.

A facility is known by the names in its client certificate (mTLS: the certificate's subject
common name or a DNS/URI subjectAltName) and by the MSH-4 namespace ids it sends as. Over
mTLS the certificate decides the facility and MSH-4 must be one of its own, so a facility
cannot write under another's name; without TLS (loopback only, for local use) MSH-4 alone
decides. Each facility writes as its own medledger client, so the organisation the records
land under is that client's, which identity enforces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# What a facility's client asks identity for: ADT creates and updates Patients and
# Encounters, ORU creates Observations and DiagnosticReports.
DEFAULT_SCOPE: Final = (
    "system/Patient.cu system/Encounter.cu system/Observation.c system/DiagnosticReport.c"
)


@dataclass(frozen=True)
class Facility:
    facility_id: str
    client_id: str
    key_file: Path
    sending_facilities: frozenset[str]
    certificate_names: frozenset[str] = frozenset()
    scope: str = DEFAULT_SCOPE


class FacilityDirectory:
    """The configured facilities, looked up by certificate name or MSH-4."""

    def __init__(self, facilities: Sequence[Facility]) -> None:
        self.facilities = tuple(facilities)
        self._by_certificate: dict[str, Facility] = {}
        self._by_sender: dict[str, Facility] = {}
        for facility in self.facilities:
            for name in facility.certificate_names:
                if self._by_certificate.setdefault(name, facility) is not facility:
                    raise ValueError(f"certificate name {name!r} is given to two facilities")
            for sender in facility.sending_facilities:
                if self._by_sender.setdefault(sender, facility) is not facility:
                    raise ValueError(f"MSH-4 {sender!r} is given to two facilities")

    def authenticate(
        self, certificate_names: Iterable[str] | None, sending_facility: str
    ) -> Facility | None:
        """The facility a message comes from, or None when it is not one we know.

        certificate_names: the peer certificate's names (None: no TLS on this listener)."""
        if certificate_names is None:
            return self._by_sender.get(sending_facility)
        for name in certificate_names:
            facility = self._by_certificate.get(name)
            if facility is not None:
                return facility if sending_facility in facility.sending_facilities else None
        return None
