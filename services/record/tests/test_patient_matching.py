"""Duplicate detection's pure parts: the facts read from a Patient, the blocking keys, the
score of known pairs (duplicates with the usual faults above the default threshold; twins,
spouses and namesakes below it), precision and recall counted right, and both measured on a
small generated population with known duplicates (``bench/duplicates`` measures a larger one
through the service)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from medledger.record.domain.patient_matching import (
    DEFAULT_MIN_SCORE,
    PatientFacts,
    block_in_memory,
    blocking_keys,
    candidate_pairs,
    patient_facts,
    probability,
    score_pair,
    score_pairs,
)
from medledger.testkit.patient_population import accuracy, population

BASE: dict[str, Any] = {
    "resourceType": "Patient",
    "identifier": [
        {"system": "urn:test:mrn", "value": "MRN-001"},
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
    ],
    "name": [{"family": "Fitzgerald", "given": ["Katherine", "Anne"]}],
    "gender": "female",
    "birthDate": "1968-04-09",
    "telecom": [{"system": "phone", "value": "(415) 555-0142"}],
    "address": [{"line": ["17 Chestnut Street"], "city": "Salem", "postalCode": "01970"}],
}


def changed(**changes: Any) -> dict[str, Any]:
    """BASE as a second record: its own record number, and ``changes`` (None drops)."""
    document = copy.deepcopy(BASE)
    document["identifier"] = [{"system": "urn:test:mrn", "value": "MRN-002"}]
    for element, value in changes.items():
        if value is None:
            document.pop(element, None)
        else:
            document[element] = value
    return document


def facts(document: dict[str, Any]) -> PatientFacts:
    return patient_facts(document)


def name(family: str, *given: str) -> list[dict[str, Any]]:
    return [{"family": family, "given": list(given)}]


DUPLICATES = {
    "nickname": changed(name=name("Fitzgerald", "Kate")),
    "transposed birth date": changed(birthDate="1968-09-04"),
    "one digit of the birth date": changed(birthDate="1966-04-09"),
    "family name typo": changed(name=name("Fitzgerlad", "Katherine")),
    "given name typo": changed(name=name("Fitzgerald", "Katherin")),
    "missing fields": changed(birthDate=None, gender=None, address=None),
    "moved": changed(
        address=[{"line": ["4 Oak Lane"], "city": "Dover", "postalCode": "03820"}],
        telecom=[{"system": "phone", "value": "(603) 555-0199"}],
    ),
    "nickname, transposed date, moved": changed(
        name=name("Fitzgerald", "Katie"),
        birthDate="1968-09-04",
        address=[{"line": ["4 Oak Lane"], "city": "Dover", "postalCode": "03820"}],
    ),
    "accents and case": changed(name=[{"family": "FITZGÉRALD", "given": ["katherine"]}]),
    "names swapped": changed(name=name("Katherine", "Fitzgerald")),
}

NOT_DUPLICATES = {
    "twin sister": changed(name=name("Fitzgerald", "Margaret")),
    "husband": changed(name=name("Fitzgerald", "Thomas"), gender="male", birthDate="1965-11-23"),
    "namesake elsewhere": changed(
        birthDate="1971-02-17",
        address=[{"line": ["90 Pine Road"], "city": "Clinton", "postalCode": "10460"}],
        telecom=[{"system": "phone", "value": "(212) 555-0100"}],
    ),
    "another person with her social security number mistyped": changed(
        name=name("Okonkwo", "Chidi"),
        gender="male",
        birthDate="1990-01-01",
        identifier=[{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6780"}],
    ),
}


def test_patient_facts_are_normalised() -> None:
    found = facts(changed(name=[{"family": "O'Brien-Smith", "given": ["José", "M."]}]))
    assert found.names[0].family == "obriensmith"
    assert found.names[0].given == ("jose", "m")
    assert found.birth is not None
    assert (found.birth.year, found.birth.month, found.birth.day) == (1968, 4, 9)
    assert found.phones == {"4155550142"}
    assert found.addresses[0].postal_code == "01970"
    assert facts({"resourceType": "Observation", "name": BASE["name"]}) == PatientFacts()
    assert facts({"resourceType": "Patient", "name": "not a list"}) == PatientFacts()


@pytest.mark.parametrize("fault", sorted(DUPLICATES))
def test_a_duplicate_shares_a_blocking_key_and_scores_high(fault: str) -> None:
    original, duplicate = facts(BASE), facts(DUPLICATES[fault])
    assert blocking_keys(original) & blocking_keys(duplicate)
    match = score_pair(original, duplicate)
    assert match.score >= DEFAULT_MIN_SCORE, (fault, match)
    assert score_pair(duplicate, original) == match  # symmetric


@pytest.mark.parametrize("who", sorted(NOT_DUPLICATES))
def test_another_person_scores_low(who: str) -> None:
    match = score_pair(facts(BASE), facts(NOT_DUPLICATES[who]))
    assert match.score < DEFAULT_MIN_SCORE, (who, match)


def test_the_fields_that_matched_are_named() -> None:
    moved = score_pair(facts(BASE), facts(DUPLICATES["moved"]))
    assert moved.matched_fields == ("name.family", "name.given", "birthDate", "gender")
    same_ssn = changed(identifier=BASE["identifier"], name=name("Fitzgerald", "Kate"), telecom=None)
    match = score_pair(facts(BASE), facts(same_ssn))
    assert match.matched_fields == (
        "name.family",
        "name.given",
        "birthDate",
        "gender",
        "identifier",
        "address.postalCode",
        "address.line",
    )
    assert score_pair(facts(BASE), facts(changed(telecom=None))).matched_fields[-2:] == (
        "address.postalCode",
        "address.line",
    )


def test_the_score_is_a_probability_of_the_evidence() -> None:
    assert probability(-1000) == pytest.approx(0.0, abs=1e-15)
    assert probability(1000) == pytest.approx(1.0)
    assert probability(0) < probability(10) < probability(20)
    assert score_pair(facts(BASE), facts(BASE)).score > 0.999
    assert score_pair(PatientFacts(), PatientFacts()).score < 0.01  # nothing known


def test_pairs_come_highest_first_once_each() -> None:
    people = {
        "a": facts(BASE),
        "b": facts(DUPLICATES["nickname"]),
        "c": facts(DUPLICATES["moved"]),
        "d": facts(NOT_DUPLICATES["husband"]),
    }
    pairs = candidate_pairs([["b", "a", "d"], ["a", "b"], ["c", "a"]])
    assert pairs == {("a", "b"), ("a", "d"), ("b", "d"), ("a", "c")}
    scored = score_pairs(pairs, people, DEFAULT_MIN_SCORE)
    assert [(p.first, p.second) for p in scored] == sorted(
        [(p.first, p.second) for p in scored],
        key=lambda ids: -score_pair(people[ids[0]], people[ids[1]]).score,
    )
    assert {(p.first, p.second) for p in scored} == {("a", "b"), ("a", "c")}
    assert all(p.score >= DEFAULT_MIN_SCORE for p in scored)


def test_precision_and_recall_are_counted_on_unordered_pairs() -> None:
    truth = [(1, 2), (3, 4), (5, 6), (7, 8)]
    counted = accuracy([(2, 1), (3, 4), (9, 10), (4, 3), (5, 5)], truth)
    assert (counted.true_positives, counted.false_positives, counted.false_negatives) == (2, 1, 2)
    assert counted.precision == pytest.approx(2 / 3)
    assert counted.recall == pytest.approx(0.5)
    nothing = accuracy([], [])
    assert (nothing.precision, nothing.recall) == (1.0, 1.0)


def test_a_small_population_meets_the_targets() -> None:
    generated = population(400, seed=7)
    assert len(generated.patients) == 400
    assert len(generated.truth) >= 30
    assert population(400, seed=7) == generated  # deterministic
    people = {str(i): patient_facts(p) for i, p in enumerate(generated.patients)}
    scored = score_pairs(candidate_pairs(block_in_memory(people)), people, DEFAULT_MIN_SCORE)
    found = [(int(p.first), int(p.second)) for p in scored]
    measured = accuracy(found, generated.truth)
    assert measured.precision >= 0.95, measured
    assert measured.recall >= 0.90, measured
    # And the score is what does it: taking every blocked pair ruins the precision.
    everything = [(int(a), int(b)) for a, b in candidate_pairs(block_in_memory(people))]
    assert accuracy(everything, generated.truth).precision < 0.5
