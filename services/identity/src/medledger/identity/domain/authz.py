"""Who may call identity's own RPCs: the ``admin`` scope, or membership of the
organisation concerned."""

from __future__ import annotations

from medledger.common.errors import PermissionDenied, Unauthenticated
from medledger.common.interceptors import Principal
from medledger.identity.domain.scopes import ADMIN


def authenticated(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthenticated("a bearer token is required", reason="TOKEN_MISSING")
    return principal


def require_admin(principal: Principal | None) -> Principal:
    caller = authenticated(principal)
    if ADMIN not in caller.scopes:
        raise PermissionDenied("this call needs the admin scope", reason="ADMIN_SCOPE_REQUIRED")
    return caller


def organization_filter(principal: Principal | None, requested: str) -> str:
    """The organisation a listing may cover: any for admins, the caller's own otherwise
    (an empty request then means the caller's organisation)."""
    caller = authenticated(principal)
    if ADMIN in caller.scopes:
        return requested
    if not caller.organization or requested not in ("", caller.organization):
        raise PermissionDenied(
            "only admins may look into another organization", reason="ORGANIZATION_MISMATCH"
        )
    return caller.organization
