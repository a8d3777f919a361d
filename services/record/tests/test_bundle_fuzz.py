"""A transaction Bundle's bad input is only ever INVALID_ARGUMENT located in the bundle, and
never repeats the client's values. Fuzzed: random JSON as a bundle, and valid bundles damaged
at a random element (the bundle's own or an entry's resource)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medledger.common.errors import to_rpc_status
from medledger.record.domain.resource_issues import ResourceInvalid
from medledger.record.domain.transaction_bundles import _entries, _validated
from medledger.testkit.fhir_samples import sample

from .test_fhir_fuzz import MARKER, MARKER_NUMBER, leaves, replaced

PATIENT_URL = "urn:uuid:6d0c2f0e-3b7a-4c55-9a51-1f2e3d4c5b6a"
OBSERVATION_URL = "urn:uuid:1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
TOP_LEVEL = {"resourceType", "type", "entry"}


def valid_bundle() -> dict[str, Any]:
    patient = sample("Patient")
    patient.pop("id", None)
    observation = sample("Observation")
    observation.pop("id", None)
    observation["subject"] = {"reference": PATIENT_URL}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PATIENT_URL,
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": OBSERVATION_URL,
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {
                    **sample("Provenance"),
                    "target": [{"reference": OBSERVATION_URL}, {"reference": PATIENT_URL}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            },
            {
                "resource": {**observation, "id": "obs-1"},
                "request": {"method": "PUT", "url": "Observation/obs-1", "ifMatch": 'W/"1"'},
            },
        ],
    }


def execute(document: object) -> None:
    """What ExecuteBundle does with a parsed bundle before it touches storage."""
    _validated(_entries(document, lambda count: [str(uuid.uuid4()) for _ in range(count)]))


def check_refusal(invalid: ResourceInvalid) -> None:
    status = to_rpc_status(invalid, service="record")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    text = status.SerializeToString()
    assert MARKER.encode() not in text
    assert repr(MARKER_NUMBER).encode() not in text
    for issue in invalid.issues:
        assert issue.location in TOP_LEVEL or issue.location.startswith("entry"), issue


def test_the_valid_bundle_passes() -> None:
    execute(valid_bundle())


def test_an_entry_naming_no_type_anywhere_is_refused() -> None:
    bundle = valid_bundle()
    del bundle["entry"][1]["resource"]["resourceType"]
    del bundle["entry"][1]["request"]["url"]
    try:
        execute(bundle)
    except ResourceInvalid as invalid:
        check_refusal(invalid)
        assert [i.location for i in invalid.issues] == ["entry[1].request.url"]
    else:
        raise AssertionError("accepted an entry of no type")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.just(MARKER),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_is_refused_in_the_bundle(value: object) -> None:
    for document in (value, {"resourceType": "Bundle", "type": "transaction", "entry": value}):
        try:
            execute(document)
        except ResourceInvalid as invalid:
            check_refusal(invalid)


BUNDLE_LEAVES = list(leaves(valid_bundle()))


DAMAGE = [MARKER, MARKER_NUMBER, None, [], {}, True, f"urn:uuid:{uuid.UUID(int=7)}", "_delete"]


def damaged(path: tuple[str | int, ...], value: object, bundle: dict[str, Any]) -> dict[str, Any]:
    if value != "_delete":
        return replaced(bundle, path, value)
    copy = replaced(bundle, path, None)
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]  # a member removed, or an array item
    return copy


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(BUNDLE_LEAVES), st.sampled_from(DAMAGE)), max_size=3))
def test_a_damaged_bundle_is_refused_at_its_entry(
    damages: list[tuple[tuple[str | int, ...], object]],
) -> None:
    bundle = valid_bundle()
    for path, value in damages:
        try:
            bundle = damaged(path, value, bundle)
        except (KeyError, IndexError, TypeError):  # an earlier damage removed that place
            continue
    try:
        execute(bundle)
    except ResourceInvalid as invalid:
        check_refusal(invalid)
