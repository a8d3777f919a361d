"""OAuth scopes: SMART App Launch v2 resource scopes plus medledger's own.

A SMART scope is ``context/resource.permissions[?query]``: context ``patient``, ``user`` or
``system``; a FHIR resource type or ``*``; permissions an ordered subset of ``cruds``
(create, read, update, delete, search); an optional query narrowing it (e.g.
``?category=laboratory``). SMART v1 permissions (``read``, ``write``, ``*``) are accepted
and rewritten as v2 (``rs``, ``cud``, ``cruds``), so one spelling is stored and issued.

A granted scope covers a requested one when the context is the same, the resource is the
same or ``*``, the permissions are a subset, and the query is the same or the granted
scope has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from medledger.common.errors import FieldViolation, InvalidArgument

# medledger scopes that are not about FHIR resources (consents are: SMART ``Consent`` scopes)
# are defined in common, where the services that demand them import them too.
from medledger.common.scopes import (
    ADMIN,
    CHECK_ACCESS,
    LEDGER_APPEND,
    LEDGER_READ,
    PLATFORM_SCOPES,
    WITNESS_ADD,
)

__all__ = [  # re-exported for identity's own modules
    "ADMIN",
    "CHECK_ACCESS",
    "LEDGER_APPEND",
    "LEDGER_READ",
    "PLATFORM_SCOPES",
    "WITNESS_ADD",
]

CONTEXTS: Final = ("patient", "user", "system")
PERMISSION_ORDER: Final = "cruds"
_V1_PERMISSIONS: Final = {"read": "rs", "write": "cud", "*": "cruds"}
_SMART = re.compile(
    r"^(?P<context>patient|user|system)/(?P<resource>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<permissions>[a-z]{1,5}|read|write|\*)"
    r"(?:\?(?P<query>[A-Za-z0-9_.-]{1,64}=[^\s&=]{1,256}(?:&[A-Za-z0-9_.-]{1,64}=[^\s&=]{1,256})*))?$"
)
MAX_SCOPES: Final = 64


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


def parse_scopes(texts: Iterable[str], field: str) -> list[Scope]:
    """The scopes, deduplicated in order; InvalidArgument names every bad one."""
    parsed: dict[str, Scope] = {}
    problems: list[FieldViolation] = []
    for index, text in enumerate(texts):
        try:
            scope = parse_scope(text)
        except ScopeError as exc:
            problems.append(FieldViolation(f"{field}[{index}]", str(exc)))
            continue
        parsed.setdefault(str(scope), scope)
    if len(parsed) > MAX_SCOPES:
        problems.append(FieldViolation(field, f"must hold at most {MAX_SCOPES} scopes"))
    if problems:
        raise InvalidArgument(problems)
    return list(parsed.values())


def covered(requested: Scope, granted: Sequence[Scope]) -> bool:
    if isinstance(requested, str):
        return requested in granted
    return any(isinstance(g, ResourceScope) and g.covers(requested) for g in granted)


def normalized(scopes: Iterable[Scope]) -> list[str]:
    return [str(s) for s in scopes]
