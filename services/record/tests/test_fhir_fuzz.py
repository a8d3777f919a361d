"""Bad input is only ever INVALID_ARGUMENT, and never repeats the client's values.

Fuzzed: random text, random JSON, and valid resources of every stored type damaged at a
random element. Anything accepted must have a canonical form (the commitment needs one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medledger.common.errors import to_rpc_status
from medledger.record.domain.compartment import SUPPORTED_TYPES
from medledger.record.domain.fhir_validation import validate_document, validate_resource
from medledger.record.domain.resource_issues import ResourceInvalid
from medledger.testkit.fhir_samples import RESOURCE_TYPES, sample
from medledger.verify.commitment import canonical_json

MARKER = "Zq7Marker"
MARKER_NUMBER = 987654.321
Path = tuple[str | int, ...]


def leaves(value: object, path: Path = ()) -> Iterator[Path]:
    if isinstance(value, dict):
        for key, member in value.items():
            yield from leaves(member, (*path, key))
    elif isinstance(value, list):
        for index, element in enumerate(value):
            yield from leaves(element, (*path, index))
    else:
        yield path


def containers(value: object, path: Path = ()) -> Iterator[Path]:
    if isinstance(value, dict):
        yield path
        for key, member in value.items():
            yield from containers(member, (*path, key))
    elif isinstance(value, list):
        yield path
        for index, element in enumerate(value):
            yield from containers(element, (*path, index))


def at(document: Any, path: Path) -> Any:
    for step in path:
        document = document[step]
    return document


def replaced(resource: dict[str, Any], path: Path, value: object) -> dict[str, Any]:
    copy = json.loads(json.dumps(resource))
    at(copy, path[:-1])[path[-1]] = value
    return copy


def outcome(text: str) -> ResourceInvalid | None:
    """None when accepted (then its canonical form exists), else the error."""
    try:
        valid = validate_resource(text)
    except ResourceInvalid as error:
        return error
    canonical_json(valid.resource)
    return None


def client_view(error: ResourceInvalid) -> str:
    """Everything a client or a log could see of the error."""
    status = to_rpc_status(error, service="record")
    return " ".join(
        [str(error), error.message, repr(error.violations), repr(error.issues), str(status)]
    )


def assert_no_echo(error: ResourceInvalid | None, *markers: str) -> None:
    if error is None:
        return
    seen = client_view(error)
    for marker in markers:
        assert marker not in seen


@pytest.mark.parametrize("resource_type", RESOURCE_TYPES)
def test_no_value_of_any_element_is_ever_repeated(resource_type: str) -> None:
    resource = sample(resource_type)
    refusals = 0
    for path in leaves(resource):
        original = at(resource, path)
        variants: list[object] = [MARKER, MARKER_NUMBER, f"{original} {MARKER}", [MARKER], {}]
        for variant in variants:
            error = outcome(json.dumps(replaced(resource, path, variant)))
            refusals += error is not None
            assert_no_echo(error, MARKER, "987654")
    assert refusals > 0


@pytest.mark.parametrize("resource_type", RESOURCE_TYPES)
def test_no_unknown_element_name_is_ever_repeated(resource_type: str) -> None:
    resource = sample(resource_type)
    for path in containers(resource):
        copy = json.loads(json.dumps(resource))
        target = at(copy, path)
        if isinstance(target, dict):
            target[MARKER] = MARKER
        else:
            target.append({MARKER: 1})
        error = outcome(json.dumps(copy))
        assert error is not None
        assert_no_echo(error, MARKER)


def test_a_resource_full_of_bad_values_is_refused_without_any_of_them() -> None:
    for resource_type in RESOURCE_TYPES:
        resource = sample(resource_type)
        for index, path in enumerate(leaves(resource)):
            if path[-1] != "resourceType" and path[-1] != "reference":
                at(resource, path[:-1])[path[-1]] = f"{MARKER}{index}"
        error = outcome(json.dumps(resource))
        assert error is not None
        assert_no_echo(error, MARKER)


# -- hypothesis ---------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", " ", MARKER, "Patient/x", "#", "2024-02-30", "final", "\ud800"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(["id", "coding", "reference"])),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@FUZZ
@given(st.text(max_size=200))
def test_random_text_is_bad_input_at_worst(text: str) -> None:
    outcome(text)


@FUZZ
@given(
    st.sampled_from(sorted(SUPPORTED_TYPES)),
    st.dictionaries(st.text(max_size=20), json_values, max_size=6),
)
def test_random_json_of_a_stored_type_is_bad_input_at_worst(
    resource_type: str, members: dict[str, Any]
) -> None:
    try:
        valid = validate_document({**members, "resourceType": resource_type})
    except ResourceInvalid as error:
        assert_no_echo(error, MARKER)
    else:
        canonical_json(valid.resource)


@st.composite
def damaged_resources(draw: st.DrawFn) -> dict[str, Any]:
    resource = sample(draw(st.sampled_from(RESOURCE_TYPES)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in containers(resource)] + [p for p in leaves(resource) if p]
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = at(resource, path[:-1])
        action = draw(st.sampled_from(["replace", "delete", "wrap", "unwrap", "empty"]))
        current = parent[path[-1]]
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "wrap":
            parent[path[-1]] = [current]
        elif action == "unwrap" and isinstance(current, list) and current:
            parent[path[-1]] = current[0]
        else:
            parent[path[-1]] = type(current)() if isinstance(current, (dict, list, str)) else None
    return resource


@FUZZ
@given(damaged_resources())
def test_damaged_valid_resources_are_bad_input_at_worst(resource: dict[str, Any]) -> None:
    assert_no_echo(outcome(json.dumps(resource)), MARKER)


@FUZZ
@given(damaged_resources(), st.integers(min_value=0, max_value=40))
def test_damaged_json_text_is_bad_input_at_worst(resource: dict[str, Any], cut: int) -> None:
    text = json.dumps(resource)
    outcome(text[: len(text) - cut])
    outcome(text.replace('"', "", 1 + cut % 3))
