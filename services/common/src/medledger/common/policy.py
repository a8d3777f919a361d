"""Who may call each RPC, declared beside each servicer for every method of its service.

A method is :class:`Public` (no token) or names what the caller's token must hold:
:class:`Scopes` (one of these platform scopes) or :class:`ResourceAccess` (a SMART resource
scope that could grant the access; the handler then decides for the patient and resource at
hand, through identity's CheckAccess or the consent rules). Rules combine with ``|``.

Declarations are keyed by the generated method descriptors, so a renamed or removed RPC
fails at import, and a new one is caught at start-up: :func:`undeclared_methods` names every
method a declaration misses, and the server refuses to start while there is one. The auth
interceptor denies any method it was not given a policy for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import cast

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from medledger.common.scopes import PERMISSION_ORDER, resource_scope


def method_path(method: MethodDescriptor) -> str:
    """The full method name gRPC routes by: ``/package.Service/Method``."""
    return f"/{method.containing_service.full_name}/{method.name}"


@dataclass(frozen=True)
class Public:
    """Callable without a token: how one gets a token, and how one checks it."""

    def describe(self) -> str:
        return "public"


class _Rule:
    def admits(self, scopes: frozenset[str]) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __or__(self, other: Rule) -> AnyOf:
        return AnyOf((cast(Rule, self), other))  # every subclass is one of Rule's kinds


@dataclass(frozen=True, init=False)
class Scopes(_Rule):
    """The token must hold at least one of these platform scopes."""

    any_of: frozenset[str]

    def __init__(self, *scopes: str) -> None:
        if not scopes:
            raise ValueError("Scopes needs at least one scope")
        object.__setattr__(self, "any_of", frozenset(scopes))

    def admits(self, scopes: frozenset[str]) -> bool:
        return not self.any_of.isdisjoint(scopes)

    def describe(self) -> str:
        return " or ".join(sorted(self.any_of))


@dataclass(frozen=True)
class ResourceAccess(_Rule):
    """Decided in the handler per patient and resource (CheckAccess, consent rules); the
    token must hold a SMART resource scope, in any context, granting ``permissions`` (an
    ordered subset of ``cruds``; empty: any) on ``resource`` (``*``: the type comes with the
    request, so a scope on any type will do here). A token without one could never be
    permitted, so it is refused before the handler runs."""

    resource: str
    permissions: str

    def __post_init__(self) -> None:
        ordered = "".join(p for p in PERMISSION_ORDER if p in self.permissions)
        if ordered != self.permissions:
            raise ValueError(f"permissions must be an ordered subset of {PERMISSION_ORDER}")

    def admits(self, scopes: frozenset[str]) -> bool:
        for text in scopes:
            scope = resource_scope(text)
            if (
                scope is not None
                and (self.resource == "*" or scope.resource in ("*", self.resource))
                and set(self.permissions) <= set(scope.permissions)
            ):
                return True
        return False

    def describe(self) -> str:
        return f"a SMART scope {{patient,user,system}}/{self.resource}.{self.permissions or '*'}"


@dataclass(frozen=True)
class AnyOf(_Rule):
    """Any one of the rules admits the token."""

    rules: tuple[Rule, ...]

    def admits(self, scopes: frozenset[str]) -> bool:
        return any(rule.admits(scopes) for rule in self.rules)

    def describe(self) -> str:
        return " or ".join(rule.describe() for rule in self.rules)

    def __or__(self, other: Rule) -> AnyOf:
        return AnyOf((*self.rules, other))


Rule = Scopes | ResourceAccess | AnyOf
MethodPolicy = Public | Rule

PUBLIC = Public()


@dataclass(frozen=True)
class ServiceAccess:
    """The policy of every method of one gRPC service, declared beside its servicer."""

    service: ServiceDescriptor
    methods: Mapping[MethodDescriptor, MethodPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))

    def problems(self) -> list[str]:
        """Every method of the service left undeclared, and every declared method that is
        not the service's; empty when the declaration is complete."""
        found = [
            f"{method.full_name} is not declared"
            for method in self.service.methods
            if method not in self.methods
        ]
        found += [
            f"{method.full_name} is declared for {self.service.full_name}"
            for method in self.methods
            if method.containing_service is not self.service
        ]
        return found

    def by_path(self) -> dict[str, MethodPolicy]:
        return {method_path(method): policy for method, policy in self.methods.items()}


def undeclared_methods(declarations: Iterable[ServiceAccess]) -> list[str]:
    """What keeps the declarations from covering exactly their services' methods."""
    return [problem for access in declarations for problem in access.problems()]


def policies_by_path(declarations: Iterable[ServiceAccess]) -> dict[str, MethodPolicy]:
    """Full method name -> policy, for the auth interceptor."""
    paths: dict[str, MethodPolicy] = {}
    for access in declarations:
        paths.update(access.by_path())
    return paths
