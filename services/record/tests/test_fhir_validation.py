"""FHIR R4 validation: every stored type, the checks fhir.resources skips, and error shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from google.rpc import error_details_pb2

from medledger.common.errors import MAX_REPORTED_VIOLATIONS, InvalidArgument, to_rpc_status
from medledger.record.domain.compartment import SUPPORTED_TYPES
from medledger.record.domain.fhir_references import LiteralReference
from medledger.record.domain.fhir_validation import (
    MAX_RESOURCE_BYTES,
    MAX_RESOURCE_DEPTH,
    MAX_RESOURCE_OBJECTS,
    MAX_RESOURCE_VALUES,
    validate_resource,
)
from medledger.record.domain.resource_issues import DOCUMENT, ResourceInvalid, operation_outcome
from medledger.testkit.fhir_samples import PATIENT_ID, RESOURCE_TYPES, UCUM, sample
from medledger.verify.commitment import canonical_json, check_opening, commit

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"


def refused(resource: object, *, expected_type: str | None = None) -> ResourceInvalid:
    text = resource if isinstance(resource, str) else json.dumps(resource)
    with pytest.raises(ResourceInvalid) as caught:
        validate_resource(text, expected_type=expected_type)
    error = caught.value
    assert isinstance(error, InvalidArgument)
    assert error.reason == "RESOURCE_INVALID"
    return error


def locations(resource: object, **kwargs: Any) -> set[str]:
    return {issue.location for issue in refused(resource, **kwargs).issues}


def test_the_samples_cover_every_stored_type() -> None:
    assert set(RESOURCE_TYPES) == SUPPORTED_TYPES


@pytest.mark.parametrize("resource_type", RESOURCE_TYPES)
def test_every_stored_type_accepts_a_valid_resource_unchanged(resource_type: str) -> None:
    resource = sample(resource_type)
    valid = validate_resource(json.dumps(resource), expected_type=resource_type)
    assert valid.resource_type == resource_type
    assert valid.id == resource["id"]
    assert valid.resource == resource  # the client's JSON, not the model's re-serialisation
    assert valid.patient_id == PATIENT_ID


def test_a_resource_without_id_is_accepted_and_a_new_patient_has_no_compartment_id_yet() -> None:
    patient = sample("Patient")
    del patient["id"]
    valid = validate_resource(json.dumps(patient))
    assert (valid.id, valid.patient_id) == (None, None)
    observation = sample("Observation")
    del observation["id"]
    assert validate_resource(json.dumps(observation)).patient_id == PATIENT_ID


def test_decimals_keep_the_json_numbers_as_sent() -> None:
    text = json.dumps(sample("Observation")).replace("5.4", "5.40")
    assert validate_resource(text).resource["valueQuantity"]["value"] == 5.4


# -- the document -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '"Patient"',
        "null",
        '{"resourceType": "Patient", "birthDate": NaN}',
        '{"resourceType": "Patient", "multipleBirthInteger": 1e400}',
        '{"resourceType": "Patient", "gender": "male", "gender": "female"}',
        '{"resourceType": "Patient"',
    ],
)
def test_text_that_is_not_one_json_object_is_refused_as_a_whole(text: str) -> None:
    assert locations(text) == {DOCUMENT}


def test_size_and_nesting_are_bounded() -> None:
    big = sample("Patient")
    big["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml">' + "a" * MAX_RESOURCE_BYTES
    big["text"]["div"] += "</div>"
    error = refused(big)
    assert [(i.code, i.location) for i in error.issues] == [("too-long", DOCUMENT)]
    deep = '{"resourceType": "Patient", "extension": ' + "[" * (MAX_RESOURCE_DEPTH + 5)
    assert [i.code for i in refused(deep).issues] == ["too-costly"]
    many = sample("Patient")
    many["identifier"] = [{"value": str(i)} for i in range(MAX_RESOURCE_OBJECTS)]
    assert [i.code for i in refused(many).issues] == ["too-costly"]
    many["identifier"] = many["identifier"][: MAX_RESOURCE_OBJECTS - 100]
    validate_resource(json.dumps(many))
    many = sample("Patient")
    many["name"][0]["given"] = [""] * MAX_RESOURCE_VALUES
    assert [i.code for i in refused(many).issues] == ["too-costly"]


def test_resource_type_must_be_stored_here_and_match_the_request() -> None:
    assert locations({"resourceType": "Bundle", "type": "collection"}) == {"resourceType"}
    assert locations({"resourceType": "Nonsense"}) == {"resourceType"}
    assert locations({"id": "x"}) == {"resourceType"}
    assert locations({"resourceType": 7}) == {"resourceType"}
    assert locations(sample("Patient"), expected_type="Observation") == {"resourceType"}


# -- structure, as fhir.resources reports it, in FHIR paths -------------------------------------


def with_changes(resource_type: str, change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    resource = sample(resource_type)
    change(resource)
    return resource


STRUCTURE_CASES: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    (
        "Observation",
        lambda r: r["valueQuantity"].update(value="abc"),
        "valueQuantity.value",
        "value",
    ),
    ("Observation", lambda r: r.pop("status"), "status", "required"),
    ("Observation", lambda r: r.update(valueString="x"), "value[x]", "structure"),
    ("Immunization", lambda r: r.pop("occurrenceDateTime"), "occurrence[x]", "required"),
    (
        "Observation",
        lambda r: r.update(effectiveDateTime="2024-13-01"),
        "effectiveDateTime",
        "value",
    ),
    (
        "Observation",
        lambda r: r["code"]["coding"][0].update(system=5),
        "code.coding[0].system",
        "structure",
    ),
    ("Observation", lambda r: r.update(note={"text": "x"}), "note", "structure"),
    ("Patient", lambda r: r.update(birthDate="1815-02-30"), "birthDate", "value"),
    ("Patient", lambda r: r.update(multipleBirthInteger=2**40), "multipleBirthInteger", "value"),
    ("Provenance", lambda r: r.pop("target"), "target", "required"),
    (
        "Observation",
        lambda r: r["referenceRange"][0].update(bogus=1),
        "referenceRange[0]",
        "structure",
    ),
]


@pytest.mark.parametrize(("resource_type", "change", "location", "code"), STRUCTURE_CASES)
def test_structure_errors_are_located_by_fhir_path(
    resource_type: str, change: Callable[[dict[str, Any]], object], location: str, code: str
) -> None:
    error = refused(with_changes(resource_type, change))
    assert (code, location) in {(i.code, i.location) for i in error.issues}


def test_an_unknown_element_is_reported_at_its_parent_without_its_name() -> None:
    resource = sample("Patient")
    resource["ZqxUnknownElement"] = 1
    error = refused(resource)
    assert error.field_names == [DOCUMENT]
    assert "ZqxUnknownElement" not in repr(error.violations) + error.message


# -- what fhir.resources skips ------------------------------------------------------------------


def coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


RULE_CASES: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    # Required value set bindings, one per stored type and on data types.
    ("Patient", lambda r: r.update(gender="f"), "gender", "code-invalid"),
    ("Patient", lambda r: r["contact"][0].update(gender="x"), "contact[0].gender", "code-invalid"),
    (
        "Patient",
        lambda r: r["identifier"][0].update(use="main"),
        "identifier[0].use",
        "code-invalid",
    ),
    ("Patient", lambda r: r["name"][1].update(use="birth"), "name[1].use", "code-invalid"),
    (
        "Patient",
        lambda r: r["telecom"][0].update(system="pigeon"),
        "telecom[0].system",
        "code-invalid",
    ),
    (
        "Patient",
        lambda r: r["address"][0].update(type="virtual"),
        "address[0].type",
        "code-invalid",
    ),
    ("Patient", lambda r: r["text"].update(status="made"), "text.status", "code-invalid"),
    ("Observation", lambda r: r.update(status="done"), "status", "code-invalid"),
    (
        "Observation",
        lambda r: r["valueQuantity"].update(comparator="~"),
        "valueQuantity.comparator",
        "code-invalid",
    ),
    (
        "Condition",
        lambda r: r.update(clinicalStatus=coding(TERMINOLOGY + "condition-clinical", "gone")),
        "clinicalStatus.coding[0].code",
        "code-invalid",
    ),
    (
        "Condition",
        lambda r: r.update(clinicalStatus={"text": "active"}),
        "clinicalStatus.coding",
        "code-invalid",
    ),
    (
        "Condition",
        lambda r: r.update(verificationStatus=coding("http://other.example", "confirmed")),
        "verificationStatus.coding",
        "code-invalid",
    ),
    ("Encounter", lambda r: r.update(status="done"), "status", "code-invalid"),
    (
        "Encounter",
        lambda r: r["statusHistory"][0].update(status="x"),
        "statusHistory[0].status",
        "code-invalid",
    ),
    (
        "Encounter",
        lambda r: r["location"][0].update(status="x"),
        "location[0].status",
        "code-invalid",
    ),
    ("MedicationRequest", lambda r: r.update(status="x"), "status", "code-invalid"),
    ("MedicationRequest", lambda r: r.update(intent="wish"), "intent", "code-invalid"),
    ("MedicationRequest", lambda r: r.update(priority="later"), "priority", "code-invalid"),
    (
        "MedicationRequest",
        lambda r: r["dosageInstruction"][0]["timing"]["repeat"].update(periodUnit="day"),
        "dosageInstruction[0].timing.repeat.periodUnit",
        "code-invalid",
    ),
    (
        "AllergyIntolerance",
        lambda r: r.update(clinicalStatus=coding(TERMINOLOGY + "allergyintolerance-clinical", "x")),
        "clinicalStatus.coding[0].code",
        "code-invalid",
    ),
    (
        "AllergyIntolerance",
        lambda r: r.update(
            verificationStatus=coding(TERMINOLOGY + "allergyintolerance-verification", "x")
        ),
        "verificationStatus.coding[0].code",
        "code-invalid",
    ),
    (
        "AllergyIntolerance",
        lambda r: r.update(category=["medication", "pollen"]),
        "category[1]",
        "code-invalid",
    ),
    ("AllergyIntolerance", lambda r: r.update(criticality="x"), "criticality", "code-invalid"),
    ("AllergyIntolerance", lambda r: r.update(type="x"), "type", "code-invalid"),
    (
        "AllergyIntolerance",
        lambda r: r["reaction"][0].update(severity="x"),
        "reaction[0].severity",
        "code-invalid",
    ),
    ("Procedure", lambda r: r.update(status="finished"), "status", "code-invalid"),
    ("Immunization", lambda r: r.update(status="given"), "status", "code-invalid"),
    ("DiagnosticReport", lambda r: r.update(status="x"), "status", "code-invalid"),
    ("DocumentReference", lambda r: r.update(status="x"), "status", "code-invalid"),
    ("DocumentReference", lambda r: r.update(docStatus="x"), "docStatus", "code-invalid"),
    (
        "DocumentReference",
        lambda r: r["relatesTo"][0].update(code="x"),
        "relatesTo[0].code",
        "code-invalid",
    ),
    ("RiskAssessment", lambda r: r.update(status="x"), "status", "code-invalid"),
    ("Provenance", lambda r: r["entity"][0].update(role="x"), "entity[0].role", "code-invalid"),
    # Reference formats and ref-1.
    (
        "Observation",
        lambda r: r["encounter"].update(reference="Encounter/has space"),
        "encounter.reference",
        "value",
    ),
    (
        "Observation",
        lambda r: r["encounter"].update(reference="Encounter?identifier=1"),
        "encounter.reference",
        "value",
    ),
    (
        "Observation",
        lambda r: r["encounter"].update(reference="Nonsense/1"),
        "encounter.reference",
        "value",
    ),
    (
        "Observation",
        lambda r: r["encounter"].update(reference="Encounter/" + "a" * 65),
        "encounter.reference",
        "value",
    ),
    (
        "Observation",
        lambda r: r["performer"][0].update(reference="#elsewhere"),
        "performer[0].reference",
        "invariant",
    ),
    (
        "Condition",
        lambda r: r["evidence"][0]["detail"][0].update(reference="ftp://x/1"),
        "evidence[0].detail[0].reference",
        "value",
    ),
    # The compartment reference.
    ("Observation", lambda r: r.pop("subject"), "subject", "required"),
    (
        "Observation",
        lambda r: r["subject"].update(reference="Group/g1"),
        "subject.reference",
        "value",
    ),
    (
        "Observation",
        lambda r: r["subject"].update(reference="Patient/pat-1/_history/2"),
        "subject.reference",
        "value",
    ),
    (
        "Observation",
        lambda r: r["subject"].update(reference="https://other.example/Patient/pat-1"),
        "subject.reference",
        "value",
    ),
    ("Observation", lambda r: r["subject"].pop("reference"), "subject.reference", "value"),
    (
        "AllergyIntolerance",
        lambda r: r["patient"].update(reference="#p"),
        "patient.reference",
        "value",
    ),
    (
        "Immunization",
        lambda r: r["patient"].update(reference="Practitioner/x"),
        "patient.reference",
        "value",
    ),
    ("Provenance", lambda r: r["target"].pop(), "target", "invariant"),
    (
        "Provenance",
        lambda r: r["target"].append({"reference": "Patient/pat-2"}),
        "target",
        "invariant",
    ),
    (
        "Provenance",
        lambda r: r["target"].append({"reference": "https://x.example/Observation/1"}),
        "target[2].reference",
        "value",
    ),
    (
        "Provenance",
        lambda r: r["target"].append({"reference": "Practitioner/p"}),
        "target[2].reference",
        "value",
    ),
    # Invariants.
    (
        "RiskAssessment",
        lambda r: r["prediction"][0].update(probabilityDecimal=100.5),
        "prediction[0].probabilityDecimal",
        "invariant",
    ),
    (
        "RiskAssessment",
        lambda r: r["prediction"][1]["probabilityRange"]["low"].update(code="1"),
        "prediction[1].probabilityRange.low",
        "invariant",
    ),
    ("Condition", lambda r: r.update(abatementDateTime="2020"), "clinicalStatus", "invariant"),
    (
        "Condition",
        lambda r: r.update(
            verificationStatus=coding(TERMINOLOGY + "condition-ver-status", "entered-in-error")
        ),
        "clinicalStatus",
        "invariant",
    ),
    ("AllergyIntolerance", lambda r: r.pop("clinicalStatus"), "clinicalStatus", "invariant"),
    (
        "Observation",
        lambda r: r.update(dataAbsentReason={"text": "lost"}),
        "dataAbsentReason",
        "invariant",
    ),
    (
        "Patient",
        lambda r: r["extension"][0].update(extension=[{"url": "u", "valueString": "x"}]),
        "extension[0]",
        "invariant",
    ),
    (
        "Observation",
        lambda r: r["contained"][0].update(
            contained=[{"resourceType": "Organization", "name": "x"}]
        ),
        "contained[0].contained",
        "invariant",
    ),
    (
        "Observation",
        lambda r: r["contained"].append({"resourceType": "Nonsense"}),
        "contained[1].resourceType",
        "value",
    ),
    ("Patient", lambda r: r.update(id="a" * 65), "id", "value"),
    # No empty elements, no nulls; integers the canonical form can hold; Unicode text.
    ("Observation", lambda r: r.update(category=[]), "category", "structure"),
    ("Observation", lambda r: r.update(code={}), "code", "structure"),
    ("Observation", lambda r: r["code"].update(text=""), "code.text", "value"),
    (
        "Observation",
        lambda r: r["code"]["coding"][0].update(system=""),
        "code.coding[0].system",
        "structure",
    ),
    ("Observation", lambda r: r.update(issued=None), "issued", "structure"),
    ("Provenance", lambda r: r.update(target=[]), "target", "structure"),
    (
        "Patient",
        lambda r: r["name"][0].update(given=["Ada", None]),
        "name[0].given[1]",
        "structure",
    ),
    (
        "Observation",
        lambda r: r["valueQuantity"].update(value=2**60),
        "valueQuantity.value",
        "value",
    ),
    (
        "Observation",
        lambda r: r.update(valueQuantity=None, valueString="\ud800"),
        "valueString",
        "value",
    ),
]


@pytest.mark.parametrize(("resource_type", "change", "location", "code"), RULE_CASES)
def test_checks_fhir_resources_skips_are_located_by_fhir_path(
    resource_type: str, change: Callable[[dict[str, Any]], object], location: str, code: str
) -> None:
    resource = with_changes(resource_type, change)
    if resource.get("valueQuantity", "") is None:
        del resource["valueQuantity"]
    error = refused(resource)
    assert (code, location) in {(i.code, i.location) for i in error.issues}, error.issues


def test_nulls_that_align_primitive_arrays_with_their_extensions_are_allowed() -> None:
    patient = sample("Patient")
    patient["name"][0]["given"] = [None, "Augusta"]
    patient["name"][0]["_given"] = [
        {"extension": [{"url": "https://x.example/e", "valueCode": "x"}]},
        None,
    ]
    validate_resource(json.dumps(patient))


def test_references_in_every_form_are_accepted() -> None:
    observation = sample("Observation")
    observation["basedOn"] = [
        {"reference": "ServiceRequest/sr-1"},
        {"reference": "https://other.example/fhir/ServiceRequest/9"},
        {"reference": "urn:uuid:9d3b4c9e-4c9a-4b3b-8a6e-2b8e2b1c0f11"},
        {"identifier": {"system": "https://orders.example", "value": "o-1"}},
    ]
    observation["hasMember"] = [{"reference": "Observation/obs-2/_history/3"}]
    validate_resource(json.dumps(observation))


def test_a_provenance_lists_the_other_targets_the_store_must_place_in_the_compartment() -> None:
    provenance = sample("Provenance")
    provenance["target"].insert(0, {"reference": "Observation/obs-glucose"})
    valid = validate_resource(json.dumps(provenance))
    assert valid.patient_id == PATIENT_ID
    assert valid.compartment_members == (
        LiteralReference("Observation", "obs-glucose"),
        LiteralReference("RiskAssessment", "risk-1", "1"),
    )


def test_a_probability_range_in_percent_and_a_probability_of_100_pass() -> None:
    risk = sample("RiskAssessment")
    risk["prediction"][0]["probabilityDecimal"] = 100
    assert risk["prediction"][1]["probabilityRange"]["low"]["system"] == UCUM
    validate_resource(json.dumps(risk))


# -- errors as clients see them -----------------------------------------------------------------


def test_issues_become_a_bad_request_capped_by_the_error_layer() -> None:
    patient = sample("Patient")
    patient["identifier"] = [{"use": "bogus", "value": str(i)} for i in range(50)]
    error = refused(patient)
    assert len(error.issues) == 50
    status = to_rpc_status(error, service="record")
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert len(bad.field_violations) == MAX_REPORTED_VIOLATIONS
    assert bad.field_violations[3].field == "identifier[3].use"
    assert bad.field_violations[3].description.startswith("code-invalid: ")
    assert "and 30 more" in status.message


def test_issues_as_an_operation_outcome_are_valid_fhir() -> None:
    error = refused(with_changes("Observation", lambda r: r.update(status="x", category=[])))
    outcome = operation_outcome(error.issues)
    OperationOutcome.model_validate(outcome)
    assert [i["expression"] for i in outcome["issue"]] == [["category"], ["status"]]


@pytest.mark.parametrize("resource_type", RESOURCE_TYPES)
def test_an_exported_resource_opens_the_commitment_to_what_was_validated(
    resource_type: str,
) -> None:
    text = json.dumps(sample(resource_type)).replace("5.4", "5.40").replace("42.5", "4.25e1")
    salt = bytes(range(32))
    commitment = commit(salt, canonical_json(validate_resource(text).resource))
    exported = json.dumps(json.loads(text), indent=2, sort_keys=True)  # any formatting
    check_opening(commitment, salt, canonical_json(json.loads(exported)))


def test_numbers_and_booleans_sent_as_strings_are_refused() -> None:
    """FHIR JSON carries decimals, integers and booleans as JSON numbers and booleans; the
    models would accept ``"141"`` and ``"true"`` and the store would keep the string."""
    observation = sample("Observation")
    observation["valueQuantity"] = {"value": "141", "unit": "mg/dL"}
    assert locations(observation) == {"valueQuantity.value"}
    patient = sample("Patient")
    patient["active"] = "true"
    patient["multipleBirthInteger"] = "2"
    problems = refused(patient).issues
    assert {(i.location, i.diagnostics) for i in problems} == {
        ("active", "a boolean is JSON true or false, not a string or number"),
        ("multipleBirthInteger", "an integer is a JSON number without a fraction, not a string"),
    }
    patient["active"], patient["multipleBirthInteger"] = True, 2
    observation["valueQuantity"]["value"] = 141.5
    for document in (patient, observation):
        assert validate_resource(json.dumps(document)).resource == document
