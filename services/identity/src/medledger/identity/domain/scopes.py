"""OAuth scopes: SMART App Launch v2 resource scopes plus medledger's own.

The grammar (``context/resource.permissions[?query]``, SMART v1 spellings rewritten as v2)
and the platform scopes live in :mod:`medledger.common.scopes`, where the auth interceptor
reads them too; this module adds what identity does with them when it grants them.

A granted scope covers a requested one when the context is the same, the resource is the
same or ``*``, the permissions are a subset, and the query is the same or the granted
scope has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.scopes import (
    ADMIN,
    CHECK_ACCESS,
    CONTEXTS,
    IDENTITY_READ,
    INFERENCE_PREDICT,
    LEDGER_APPEND,
    LEDGER_READ,
    PERMISSION_ORDER,
    PLATFORM_SCOPES,
    WITNESS_ADD,
    ResourceScope,
    Scope,
    ScopeError,
    parse_scope,
)

__all__ = [  # re-exported for identity's own modules
    "ADMIN",
    "CHECK_ACCESS",
    "CONTEXTS",
    "IDENTITY_READ",
    "INFERENCE_PREDICT",
    "LEDGER_APPEND",
    "LEDGER_READ",
    "PERMISSION_ORDER",
    "PLATFORM_SCOPES",
    "WITNESS_ADD",
    "ResourceScope",
    "Scope",
    "ScopeError",
    "covered",
    "normalized",
    "parse_scope",
    "parse_scopes",
]

MAX_SCOPES: Final = 64


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
