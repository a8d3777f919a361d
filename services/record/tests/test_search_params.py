"""Search tokens of resources and of queries: what a query finds, and what it is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.record.domain.compartment import SUPPORTED_TYPES
from medledger.record.domain.fhir_validation import validate_resource
from medledger.record.domain.resource_issues import ResourceInvalid
from medledger.record.domain.search_params import (
    MAX_SEARCH_ALTERNATIVES,
    SEARCH_PARAMETERS,
    any_of_tokens,
    normalise_text,
    parse_search,
    search_values,
)
from medledger.testkit.fhir_samples import PATIENT_ID, RESOURCE_TYPES, sample


def tokens(resource: dict[str, Any]) -> dict[str, set[str]]:
    return search_values(validate_resource(json.dumps(resource)))


def plain(found: dict[str, set[str]]) -> dict[str, set[str]]:
    """The tokens an ``eq`` query matches (the ``~``/``=`` ones serve ranges)."""
    return {name: {t for t in values if t[0] not in "~="} for name, values in found.items()}


def finds(resource: dict[str, Any], **query: str) -> bool:
    """Whether an exact-match store would return the resource for the query."""
    indexed = tokens(resource)
    terms = parse_search(resource["resourceType"], query)
    return all(indexed.get(term[0], set()).intersection(any_of_tokens(term)) for term in terms)


def refused_fields(resource_type: str, **query: str) -> list[str]:
    with pytest.raises(ResourceInvalid) as caught:
        parse_search(resource_type, query)
    assert caught.value.reason == "SEARCH_INVALID"
    return caught.value.field_names


def test_every_stored_type_has_parameters_and_clinical_types_a_patient() -> None:
    assert set(SEARCH_PARAMETERS) == SUPPORTED_TYPES
    for resource_type in RESOURCE_TYPES:
        indexed = tokens(sample(resource_type))
        assert set(indexed) <= SEARCH_PARAMETERS[resource_type]
        if resource_type != "Patient":
            assert indexed["patient"] == {PATIENT_ID}


def test_patient_tokens() -> None:
    assert plain(tokens(sample("Patient"))) == {
        "identifier": {
            "urn:oid:2.16.840.1.113883.4.1|123-45-6789",
            "123-45-6789",
            "https://hospital.example/mrn|MRN0001",
            "MRN0001",
        },
        "family": {"lovelace", "byron"},
        "given": {"ada", "augusta"},
        "birthdate": {"1815", "1815-12", "1815-12-10"},
        "gender": {"female"},
    }


def test_observation_tokens() -> None:
    assert plain(tokens(sample("Observation"))) == {
        "patient": {PATIENT_ID},
        "code": {"http://loinc.org|2345-7", "2345-7"},
        "category": {
            "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "laboratory",
        },
        "status": {"final"},
        "date": {"2024", "2024-03", "2024-03-05"},
    }


@pytest.mark.parametrize(
    "query",
    [
        {"family": "lovelace"},
        {"family": "  LOVELACE "},
        {"given": "Augusta", "gender": "female"},
        {"identifier": "https://hospital.example/mrn|MRN0001"},
        {"identifier": "MRN0001"},
        {"birthdate": "1815"},
        {"birthdate": "1815-12"},
        {"birthdate": "eq1815-12-10"},
    ],
)
def test_patient_queries_that_find_the_sample(query: dict[str, str]) -> None:
    assert finds(sample("Patient"), **query)


@pytest.mark.parametrize(
    "query",
    [
        {"family": "lovelac"},  # whole parts, not prefixes
        {"identifier": "https://other.example|MRN0001"},
        {"identifier": "|MRN0001"},  # it has a system
        {"birthdate": "1815-11"},
        {"gender": "male"},
    ],
)
def test_patient_queries_that_do_not(query: dict[str, str]) -> None:
    assert not finds(sample("Patient"), **query)


def test_names_are_matched_without_case_accents_or_extra_spaces() -> None:
    patient = sample("Patient")
    patient["name"] = [{"family": "Núñez  García", "given": ["José-María", "ÉLODIE"]}]
    assert finds(patient, family="NUNEZ GARCIA", given="jose-maria")
    assert finds(patient, given="elodie")
    assert normalise_text("Straße") == normalise_text("STRASSE") == "strasse"


def test_a_code_without_a_system_is_found_as_code_and_as_bar_code() -> None:
    observation = sample("Observation")
    observation["code"] = {"coding": [{"code": "local-1"}]}
    assert finds(observation, code="local-1")
    assert finds(observation, code="|local-1")
    assert not finds(observation, code="http://loinc.org|local-1")


def test_escaped_bars_keep_system_and_code_apart() -> None:
    a = sample("Patient")
    a["identifier"] = [{"system": "urn:a", "value": "b|c"}]
    b = sample("Patient")
    b["identifier"] = [{"system": "urn:a|b", "value": "c"}]
    assert tokens(a)["identifier"].isdisjoint(tokens(b)["identifier"])
    assert finds(a, identifier=r"urn:a|b\|c")
    assert not finds(b, identifier=r"urn:a|b\|c")
    assert finds(b, identifier=r"urn:a\|b|c")


def test_an_escaped_comma_is_part_of_a_value_and_a_bare_one_separates_values() -> None:
    observation = sample("Observation")
    observation["code"] = {"coding": [{"system": "urn:lab", "code": "a,b"}]}
    assert finds(observation, code=r"urn:lab|a\,b")
    assert not finds(observation, code="urn:lab|a,urn:lab|b")
    (term,) = parse_search("Observation", {"code": r"urn:lab|a\,b,urn:lab|c,urn:lab|c"})
    assert term == ("code", ("urn:lab|a,b", "urn:lab|c"))  # each value once
    assert len(parse_search("Observation", {"code": ",".join(["x"] * 64)})) == 1
    for listed in ("a,", ",a", "a,,b"):
        with pytest.raises(ResourceInvalid) as caught:
            parse_search("Observation", {"code": listed})
        assert caught.value.field_names == ["params.code"]
        assert "empty" in caught.value.issues[0].diagnostics


@pytest.mark.parametrize(
    ("resource_type", "query", "found"),
    [
        ("Observation", {"patient": "Patient/pat-1", "code": "http://loinc.org|2345-7"}, True),
        ("Observation", {"patient": "pat-1", "date": "2024-03", "status": "final"}, True),
        ("Observation", {"patient": "pat-2"}, False),
        ("Observation", {"category": "laboratory"}, True),
        # Comma-separated values: any one matches (FHIR's OR).
        ("Observation", {"code": "http://loinc.org|2339-0,http://loinc.org|2345-7"}, True),
        ("Observation", {"code": "2339-0,2085-9"}, False),
        ("Observation", {"patient": "pat-2,Patient/pat-1", "status": "final,amended"}, True),
        ("Observation", {"date": "2019,ge2024-03-01"}, True),
        ("Observation", {"date": "2019,le2024-02-01"}, False),
        ("Condition", {"status": "active", "date": "2019-06"}, True),
        ("Condition", {"date": "2019-06-01"}, False),  # recorded to the month only
        ("Encounter", {"code": "185349003", "date": "2024-03-05"}, True),
        ("MedicationRequest", {"code": "860975", "date": "2024"}, True),
        ("AllergyIntolerance", {"category": "medication", "status": "active"}, True),
        (
            "AllergyIntolerance",
            {"category": "http://hl7.org/fhir/allergy-intolerance-category|medication"},
            True,
        ),
        ("Procedure", {"date": "2023-01-10", "category": "387713003"}, True),
        ("Immunization", {"code": "http://hl7.org/fhir/sid/cvx|140", "date": "2023-10"}, True),
        ("DiagnosticReport", {"category": "LAB", "status": "final"}, True),
        ("DocumentReference", {"code": "34133-9", "category": "11488-4"}, True),
        ("RiskAssessment", {"code": "225338004", "date": "2024-03-06"}, True),
        ("Provenance", {"patient": "pat-1", "date": "2024-03-06"}, True),
    ],
)
def test_clinical_queries(resource_type: str, query: dict[str, str], found: bool) -> None:
    assert finds(sample(resource_type), **query) is found


@pytest.mark.parametrize(
    ("resource_type", "query", "field"),
    [
        ("Observation", {"family": "x"}, "params.family"),
        ("Patient", {"code": "x"}, "params.code"),
        ("Immunization", {"category": "x"}, "params.category"),
        ("Observation", {"Some Name!": "x"}, "params"),
        ("Observation", {"date": "ne2024-01-01"}, "params.date"),
        ("Observation", {"date": "ap2024"}, "params.date"),
        ("Observation", {"date": "ge0000"}, "params.date"),
        ("Observation", {"date": "ge2024-13"}, "params.date"),
        ("Observation", {"date": "2024-02-30"}, "params.date"),
        ("Observation", {"date": "2024-01-01T10:00:00Z"}, "params.date"),
        ("Patient", {"birthdate": "18151210"}, "params.birthdate"),
        (
            "Observation",
            {"status": "http://hl7.org/fhir/observation-status|final"},
            "params.status",
        ),
        ("Observation", {"code": "http://loinc.org|"}, "params.code"),
        ("Observation", {"code": "a|b|c"}, "params.code"),
        ("Observation", {"code": "2345-7,"}, "params.code"),
        ("Observation", {"code": ",".join(["x"] * (MAX_SEARCH_ALTERNATIVES + 1))}, "params.code"),
        ("Observation", {"status": "final,a|b"}, "params.status"),
        ("Observation", {"code": r"bad\escape"}, "params.code"),
        ("Observation", {"code": ""}, "params.code"),
        ("Observation", {"code": "x" * 1025}, "params.code"),
        ("Observation", {"patient": "Group/1"}, "params.patient"),
        ("Patient", {"family": " - "}, "params.family"),
        ("Bundle", {"code": "x"}, "resource_type"),
    ],
)
def test_bad_queries_name_the_parameter(
    resource_type: str, query: dict[str, str], field: str
) -> None:
    assert refused_fields(resource_type, **query) == [field]


def test_every_bad_parameter_is_named_and_no_value_repeated() -> None:
    with pytest.raises(ResourceInvalid) as caught:
        parse_search(
            "Observation",
            {"date": "sa2024-Zq7Marker", "status": "a|Zq7Marker", "nope": "Zq7Marker"},
        )
    assert caught.value.field_names == ["params.date", "params.status", "params.nope"]
    assert "Zq7Marker" not in repr(caught.value.violations) + caught.value.message


def fhir_escape(part: str) -> str:
    return "".join("\\" + c if c in "\\|,$" else c for c in part)


parts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(parts.filter(lambda s: s.strip() == s and " " not in s), parts.filter(str.strip))
def test_any_identifier_is_found_by_its_escaped_query(system: str, value: str) -> None:
    patient = sample("Patient")
    patient["identifier"] = [{"system": "urn:x:" + system, "value": value.strip()}]
    try:
        indexed = tokens(patient)
    except ResourceInvalid:
        return  # not a valid FHIR uri or string: nothing stored, nothing to find
    query = f"{fhir_escape('urn:x:' + system)}|{fhir_escape(value.strip())}"
    assert parse_search("Patient", {"identifier": query}) == [
        ("identifier", (next(t for t in indexed["identifier"] if t.startswith("urn:x:")),))
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(SUPPORTED_TYPES)),
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
)
def test_random_queries_are_bad_input_at_worst(resource_type: str, query: dict[str, str]) -> None:
    try:
        pairs = parse_search(resource_type, query)
    except ResourceInvalid as error:
        assert len(error.violations) <= len(query)
    else:
        assert [name for name, _ in pairs] == list(query)


@given(st.text(max_size=40))
def test_name_normalisation_is_idempotent(text: str) -> None:
    assert normalise_text(normalise_text(text)) == normalise_text(text)
