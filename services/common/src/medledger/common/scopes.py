"""OAuth scopes: medledger's platform scopes and the grammar of SMART App Launch v2
resource scopes, shared by the services that demand them and identity that grants them.

A SMART scope is ``context/resource.permissions[?query]``: context ``patient``, ``user`` or
``system``; a FHIR resource type or ``*``; permissions an ordered subset of ``cruds``
(create, read, update, delete, search); an optional query narrowing it (e.g.
``?category=laboratory``). SMART v1 permissions (``read``, ``write``, ``*``) are accepted
and rewritten as v2 (``rs``, ``cud``, ``cruds``), so one spelling is stored and issued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

ADMIN: Final = "admin"
LEDGER_APPEND: Final = "ledger.append"
LEDGER_READ: Final = "ledger.read"
CHECK_ACCESS: Final = "medledger/check-access"
# Telling identity about patients the record service holds: which organisation holds each
# one's record (RegisterPatientHolder), and erasing a patient (ErasePatientData).
PATIENT_DIRECTORY: Final = "medledger/patient-directory"
WITNESS_ADD: Final = "witness.add"
# Reading identity's directory (organisations, clients, users) without being an admin.
IDENTITY_READ: Final = "identity.read"
# Auditing identity: the break-glass accesses (who, when, on what; never why).
AUDIT_READ: Final = "audit.read"
# Scoring patients with the inference service's models (and reading the model cards);
# the patient's data is then read under CheckAccess with the token's SMART scopes.
INFERENCE_PREDICT: Final = "inference.predict"

PLATFORM_SCOPES: Final = frozenset(
    {
        ADMIN,
        LEDGER_APPEND,
        LEDGER_READ,
        CHECK_ACCESS,
        PATIENT_DIRECTORY,
        WITNESS_ADD,
        IDENTITY_READ,
        INFERENCE_PREDICT,
        AUDIT_READ,
    }
)

# The services' own clients (client id -> scopes), registered by identity at start-up with
# the public key of the service's Vault transit key (see vault_layout.SERVICE_CLIENT_KEYS);
# a client registered by an earlier release gets this release's scopes at the next start.
SERVICE_CLIENT_SCOPES: Final = {
    "ledger": (WITNESS_ADD,),
    "record": (LEDGER_APPEND, LEDGER_READ, CHECK_ACCESS, PATIENT_DIRECTORY),
    "inference": (LEDGER_APPEND, CHECK_ACCESS),
}


def service_client_id(service: str) -> str:
    return f"medledger-{service}"


CONTEXTS: Final = ("patient", "user", "system")
PERMISSION_ORDER: Final = "cruds"
_V1_PERMISSIONS: Final = {"read": "rs", "write": "cud", "*": "cruds"}
_SMART = re.compile(
    r"^(?P<context>patient|user|system)/(?P<resource>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<permissions>[a-z]{1,5}|read|write|\*)"
    r"(?:\?(?P<query>[A-Za-z0-9_.-]{1,64}=[^\s&=]{1,256}(?:&[A-Za-z0-9_.-]{1,64}=[^\s&=]{1,256})*))?$"
)


class ScopeError(ValueError):
    """A scope that is not SMART v2 nor a medledger scope; the message says why."""


@dataclass(frozen=True)
class ResourceScope:
    context: str
    resource: str
    permissions: str  # ordered subset of "cruds"
    query: str = ""

    def __str__(self) -> str:
        text = f"{self.context}/{self.resource}.{self.permissions}"
        return f"{text}?{self.query}" if self.query else text

    def covers(self, other: ResourceScope) -> bool:
        return (
            self.context == other.context
            and self.resource in ("*", other.resource)
            and set(other.permissions) <= set(self.permissions)
            and (not self.query or self.query == other.query)
        )


Scope = ResourceScope | str  # a str is one of PLATFORM_SCOPES


def parse_scope(text: str) -> Scope:
    if text in PLATFORM_SCOPES:
        return text
    match = _SMART.fullmatch(text)
    if match is None:
        raise ScopeError(
            "must be a SMART v2 scope (e.g. system/Observation.rs) or one of "
            + ", ".join(sorted(PLATFORM_SCOPES))
        )
    permissions = _V1_PERMISSIONS.get(match["permissions"], match["permissions"])
    ordered = "".join(p for p in PERMISSION_ORDER if p in permissions)
    if ordered != permissions:
        raise ScopeError("permissions must be an ordered subset of cruds, without repeats")
    return ResourceScope(match["context"], match["resource"], ordered, match["query"] or "")


def resource_scope(text: str) -> ResourceScope | None:
    """The SMART resource scope ``text`` is; None for platform scopes and malformed text."""
    try:
        scope = parse_scope(text)
    except ScopeError:
        return None
    return scope if isinstance(scope, ResourceScope) else None
