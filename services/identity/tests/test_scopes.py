"""SMART v2 scope parsing and coverage (a parser: property-tested)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.errors import InvalidArgument
from medledger.identity.domain.scopes import (
    PERMISSION_ORDER,
    ResourceScope,
    ScopeError,
    covered,
    parse_scope,
    parse_scopes,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("system/Observation.rs", "system/Observation.rs"),
        ("patient/*.r", "patient/*.r"),
        ("system/*.cruds", "system/*.cruds"),
        ("user/Patient.read", "user/Patient.rs"),
        ("user/Patient.write", "user/Patient.cud"),
        ("system/*.*", "system/*.cruds"),
        (
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=laboratory",
        ),
        ("admin", "admin"),
        ("ledger.append", "ledger.append"),
        ("medledger/check-access", "medledger/check-access"),
    ],
)
def test_accepted_scopes_and_their_one_spelling(text: str, normal: str) -> None:
    assert str(parse_scope(text)) == normal


@pytest.mark.parametrize(
    "text",
    [
        "",
        "openid",
        "system/observation.rs",  # resource types are capitalised
        "group/Observation.rs",
        "system/Observation.sr",  # permissions in cruds order
        "system/Observation.rr",
        "system/Observation.x",
        "system/Observation",
        "system/Observation.rs?",
        "system/Observation.rs?category",
        "system/Observation.rs extra",
    ],
)
def test_refused_scopes(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_coverage() -> None:
    granted = parse_scopes(
        ["system/*.rs", "patient/Observation.cruds?category=vital-signs", "admin"], "s"
    )
    assert covered(parse_scope("system/Observation.r"), granted)
    assert covered(parse_scope("system/Patient.rs"), granted)
    assert not covered(parse_scope("system/Patient.c"), granted)
    assert not covered(parse_scope("user/Patient.r"), granted)
    assert covered(parse_scope("patient/Observation.c?category=vital-signs"), granted)
    assert not covered(parse_scope("patient/Observation.c"), granted)  # wider than granted
    assert not covered(parse_scope("patient/Observation.c?category=laboratory"), granted)
    assert covered(parse_scope("admin"), granted)
    assert not covered(parse_scope("ledger.read"), granted)


def test_parse_scopes_names_every_bad_one_and_deduplicates() -> None:
    assert [str(s) for s in parse_scopes(["admin", "admin", "system/*.read"], "s")] == [
        "admin",
        "system/*.rs",
    ]
    with pytest.raises(InvalidArgument) as bad:
        parse_scopes(["admin", "nope", "system/x.r"], "allowed_scopes")
    assert [v.field for v in bad.value.violations] == ["allowed_scopes[1]", "allowed_scopes[2]"]


permissions = st.sets(st.sampled_from(PERMISSION_ORDER), min_size=1).map(
    lambda chosen: "".join(p for p in PERMISSION_ORDER if p in chosen)
)
resource_scopes = st.builds(
    ResourceScope,
    context=st.sampled_from(["patient", "user", "system"]),
    resource=st.one_of(st.just("*"), st.from_regex(r"[A-Z][A-Za-z]{0,20}", fullmatch=True)),
    permissions=permissions,
    query=st.one_of(st.just(""), st.from_regex(r"[a-z]{1,8}=[a-z0-9|:/.-]{1,20}", fullmatch=True)),
)


@given(resource_scopes)
def test_printing_and_parsing_round_trip(scope: ResourceScope) -> None:
    assert parse_scope(str(scope)) == scope
    assert scope.covers(scope)


@given(resource_scopes, permissions)
def test_coverage_follows_permission_subsets(scope: ResourceScope, asked: str) -> None:
    requested = ResourceScope(scope.context, scope.resource, asked, scope.query)
    assert scope.covers(requested) == set(asked).issubset(scope.permissions)
    wildcard = ResourceScope(scope.context, "*", "cruds")
    assert wildcard.covers(requested)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parsed = parse_scope(text)
    except ScopeError:
        return
    assert parse_scope(str(parsed)) == parsed
