"""The patient summary as a FHIR document Bundle (medledger.cli.summary_document), built from
the fixed fixture export (medledger.cli.report_fixtures: the demo's hospital-a-1 with an
earlier glucose, an allergy, a resolved problem and a risk assessment, every entry with a
ledger proof that verifies under the fixture's log key)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from medledger.cli.main import app
from medledger.cli.report_fixtures import (
    FIXTURE_ORIGIN,
    fixture_export,
    fixture_policy,
    fixture_signer,
)
from medledger.cli.summary_document import (
    LIST_EMPTY_REASON,
    SummaryError,
    build_summary,
    document_problems,
    parse_time,
    proven_entries,
    resolve,
    summary_bundle,
)
from medledger.verify.export import EntryInvalid, verify_export

GLUCOSE = "2345-7"


@pytest.fixture(scope="module")
def export() -> dict[str, Any]:
    return fixture_export()


def fresh(export: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(export))


def section(document: Mapping[str, Any], code: str) -> dict[str, Any]:
    composition = document["entry"][0]["resource"]
    found = [s for s in composition["section"] if s["code"]["coding"][0]["code"] == code]
    assert len(found) == 1, code
    return found[0]  # type: ignore[no-any-return]


def section_resources(document: Mapping[str, Any], code: str) -> list[dict[str, Any]]:
    entries = document["entry"]
    resolved = [resolve(e["reference"], entries) for e in section(document, code).get("entry", [])]
    assert all(r is not None for r in resolved)
    return [r["resource"] for r in resolved if r is not None]


def loinc(resource: Mapping[str, Any]) -> str:
    return str(resource["code"]["coding"][0]["code"])


def entry_of(export: dict[str, Any], predicate: Any) -> dict[str, Any]:
    found = [e for e in export["entry"] if predicate(e["resource"])]
    assert len(found) == 1
    return found[0]  # type: ignore[no-any-return]


def test_it_is_a_valid_r4b_document_bundle(export: dict[str, Any]) -> None:
    document = summary_bundle(build_summary(export))
    parsed = Bundle.model_validate(document)
    assert parsed.type == "document"
    assert parsed.identifier is not None
    assert parsed.identifier.system == "urn:ietf:rfc:3986"
    assert parsed.timestamp is not None
    assert document["timestamp"] == export["timestamp"]
    assert document_problems(document) == []
    composition = document["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "60591-5",
        "display": "Patient summary Document",
    }
    urls = [e["fullUrl"] for e in document["entry"]]
    assert len(set(urls)) == len(urls)
    assert all(url.startswith("urn:uuid:") for url in urls)


def test_the_sections_carry_the_ips_codes_in_order(export: dict[str, Any]) -> None:
    composition = summary_bundle(build_summary(export))["entry"][0]["resource"]
    codes = [s["code"]["coding"][0]["code"] for s in composition["section"]]
    assert codes == [
        "11450-4",  # problems
        "11348-0",  # past problems (the fixture has a resolved one)
        "10160-0",  # medications
        "48765-2",  # allergies
        "30954-2",  # results
        "8716-3",  # vital signs
        "risk-assessments",
    ]
    for each in composition["section"]:
        assert each["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')


def test_every_reference_of_the_composition_resolves_inside_the_bundle(
    export: dict[str, Any],
) -> None:
    document = summary_bundle(build_summary(export))
    entries = document["entry"]
    composition = entries[0]["resource"]
    subject = resolve(composition["subject"]["reference"], entries)
    assert subject is not None
    assert subject["resource"]["resourceType"] == "Patient"
    author = resolve(composition["author"][0]["reference"], entries)
    assert author is not None
    assert author["resource"]["resourceType"] == "Device"
    # The resources' own references (Patient/<id>, Encounter/<id>, a risk assessment's
    # versioned basis) land on entries too: what they refer to is carried along.
    for entry in entries[1:]:
        for reference in _references(entry["resource"]):
            assert resolve(reference, entries) is not None, reference
    # A reference to what is not there is reported.
    broken = copy.deepcopy(document)
    broken["entry"][0]["resource"]["section"][0]["entry"][0]["reference"] = "urn:uuid:absent"
    assert document_problems(broken) == [
        "the Composition's reference urn:uuid:absent resolves to no entry"
    ]


def _references(value: object) -> list[str]:
    if isinstance(value, dict):
        own = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return own + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def test_each_section_holds_what_it_should(export: dict[str, Any]) -> None:
    document = summary_bundle(build_summary(export))
    problems = section_resources(document, "11450-4")
    assert {p["code"]["text"] for p in problems} == {
        "Type 2 diabetes mellitus without complications",
        "Hyperlipidemia, unspecified",
        "Obesity, unspecified",
    }
    assert [p["code"]["text"] for p in section_resources(document, "11348-0")] == [
        "Asthma (childhood)"
    ]
    medications = section_resources(document, "10160-0")
    assert {m["resourceType"] for m in medications} == {"MedicationRequest"}
    assert len(medications) == 3
    allergies = section_resources(document, "48765-2")
    assert [a["code"]["coding"][0]["display"] for a in allergies] == ["Penicillin"]
    risks = section_resources(document, "risk-assessments")
    assert [r["code"]["text"] for r in risks] == ["Diabetes progression at one year"]
    vital = section_resources(document, "8716-3")
    assert {loinc(v) for v in vital} == {"8302-2", "29463-7", "39156-5", "85354-9", "8867-4"}
    results = section_resources(document, "30954-2")
    assert GLUCOSE in {loinc(r) for r in results}
    assert not {loinc(r) for r in results} & {loinc(v) for v in vital}


def test_results_hold_the_latest_observation_of_each_code(export: dict[str, Any]) -> None:
    glucoses = [
        e["resource"]
        for e in export["entry"]
        if e["resource"]["resourceType"] == "Observation" and loinc(e["resource"]) == GLUCOSE
    ]
    assert len(glucoses) == 2
    results = section_resources(summary_bundle(build_summary(export)), "30954-2")
    codes = [loinc(r) for r in results]
    assert len(codes) == len(set(codes)), "one line per code"
    shown = [r for r in results if loinc(r) == GLUCOSE]
    assert [g["valueQuantity"]["value"] for g in shown] == [141]
    # Make the other one the more recent: it is the one shown.
    changed = fresh(export)
    older = entry_of(
        changed,
        lambda r: (
            r["resourceType"] == "Observation"
            and loinc(r) == GLUCOSE
            and r["valueQuantity"]["value"] == 118
        ),
    )
    older["resource"]["effectiveDateTime"] = "2026-01-05T07:00:00+02:00"
    results = section_resources(summary_bundle(build_summary(changed)), "30954-2")
    assert [r["valueQuantity"]["value"] for r in results if loinc(r) == GLUCOSE] == [118]


def test_what_was_entered_in_error_is_left_out(export: dict[str, Any]) -> None:
    changed = fresh(export)
    newest = entry_of(
        changed,
        lambda r: (
            r["resourceType"] == "Observation"
            and loinc(r) == GLUCOSE
            and r["valueQuantity"]["value"] == 118
        ),
    )
    newest["resource"]["effectiveDateTime"] = "2026-01-30T00:00:00Z"
    newest["resource"]["status"] = "entered-in-error"
    results = section_resources(summary_bundle(build_summary(changed)), "30954-2")
    assert [r["valueQuantity"]["value"] for r in results if loinc(r) == GLUCOSE] == [141]


def test_an_empty_section_carries_an_empty_reason(export: dict[str, Any]) -> None:
    changed = fresh(export)
    changed["entry"] = [
        e
        for e in changed["entry"]
        if e["resource"]["resourceType"] not in {"AllergyIntolerance", "RiskAssessment"}
    ]
    document = summary_bundle(build_summary(changed))
    assert document_problems(document) == []
    Bundle.model_validate(document)
    for code in ("48765-2", "risk-assessments"):
        empty = section(document, code)
        assert "entry" not in empty
        assert empty["emptyReason"]["coding"][0]["system"] == LIST_EMPTY_REASON
        assert empty["emptyReason"]["coding"][0]["code"] == "unavailable"
        assert "None in the record as exported" in empty["text"]["div"]
    # The optional past-problems section is left out when empty, not emptied.
    changed["entry"] = [
        e
        for e in changed["entry"]
        if e["resource"].get("code", {}).get("text") != "Asthma (childhood)"
    ]
    composition = summary_bundle(build_summary(changed))["entry"][0]["resource"]
    assert "11348-0" not in {s["code"]["coding"][0]["code"] for s in composition["section"]}


def test_each_line_carries_its_ledger_proof_and_verifies(export: dict[str, Any]) -> None:
    document = summary_bundle(build_summary(export))
    originals = {e["fullUrl"]: e for e in export["entry"]}
    composition = document["entry"][0]["resource"]
    lines = [e["reference"] for s in composition["section"] for e in s.get("entry", [])]
    assert lines
    for entry in document["entry"]:
        if entry["fullUrl"] in originals:
            # Byte for byte what the export holds: resource and proof.
            assert entry == originals[entry["fullUrl"]]
    proven = {e["fullUrl"] for e in proven_entries(document)["entry"]}
    assert set(lines) <= proven
    verified = verify_export(proven_entries(document), fixture_policy())
    assert len(verified.entries) == len(proven)
    # The Provenance names each source line.
    provenance = next(
        e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Provenance"
    )
    sources = {e["what"]["reference"] for e in provenance["entity"]}
    assert set(lines) <= sources
    # One changed value in a line no longer verifies.
    changed = copy.deepcopy(document)
    glucose = next(
        e
        for e in changed["entry"]
        if e["resource"]["resourceType"] == "Observation" and loinc(e["resource"]) == GLUCOSE
    )
    glucose["resource"]["valueQuantity"]["value"] = 99
    with pytest.raises(EntryInvalid) as failure:
        verify_export(proven_entries(changed), fixture_policy())
    assert failure.value.check == "commitment"


def test_the_same_export_gives_the_same_document(export: dict[str, Any]) -> None:
    first = json.dumps(summary_bundle(build_summary(export)), sort_keys=False)
    second = json.dumps(summary_bundle(build_summary(fixture_export())), sort_keys=False)
    assert first == second
    reordered = fresh(export)
    reordered["entry"] = [reordered["entry"][0], *reversed(reordered["entry"][1:])]
    assert summary_bundle(build_summary(reordered))["entry"][0] == json.loads(first)["entry"][0]
    other = fresh(export)
    other["id"] = "another-export"
    assert summary_bundle(build_summary(other))["id"] != json.loads(first)["id"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(type="searchset"), "a FHIR Bundle of type collection"),
        (
            lambda b: b.update(
                meta={
                    "security": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                            "code": "PSEUDED",
                        }
                    ]
                }
            ),
            "pseudonymised",
        ),
        (lambda b: b.update(entry=b["entry"][1:]), "0 Patient resources"),
    ],
)
def test_what_cannot_be_summarised_is_refused(
    export: dict[str, Any], change: Any, message: str
) -> None:
    changed = fresh(export)
    change(changed)
    with pytest.raises(SummaryError, match=message):
        build_summary(changed)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", "2024-01-01T00:00:00+00:00"),
        ("2024-05", "2024-05-01T00:00:00+00:00"),
        ("2024-05-06", "2024-05-06T00:00:00+00:00"),
        ("2024-05-06T10:11:12.5+02:00", "2024-05-06T08:11:12.500000+00:00"),
        ("2024-05-06T10:11Z", "2024-05-06T10:11:00+00:00"),
        ("2024-13-01", None),
        ("yesterday", None),
    ],
)
def test_fhir_times_compare_in_utc(text: str, expected: str | None) -> None:
    parsed = parse_time(text)
    assert (parsed.isoformat() if parsed else None) == expected


runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


def verify_summary_cli(document: Mapping[str, Any], folder: Path) -> tuple[int, str]:
    path = folder / "summary.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    vkey = str(fixture_signer().verifier_key)
    done = runner.invoke(app, ["verify", "summary", str(path), "--vkey", vkey])
    return done.exit_code, " ".join(done.output.split())


def test_verify_summary_checks_every_line_offline(export: dict[str, Any], tmp_path: Path) -> None:
    document = summary_bundle(build_summary(export))
    code, output = verify_summary_cli(document, tmp_path)
    assert code == 0, output
    # Every exported resource but the earlier glucose, which no line shows.
    assert len(export["entry"]) == 25
    assert "verifies: 24 resource(s) behind its lines" in output
    assert f"checkpoint {FIXTURE_ORIGIN}, tree size 26" in output

    changed = copy.deepcopy(document)
    glucose = next(
        e
        for e in changed["entry"]
        if e["resource"]["resourceType"] == "Observation" and loinc(e["resource"]) == GLUCOSE
    )
    glucose["resource"]["valueQuantity"]["value"] = 99
    code, output = verify_summary_cli(changed, tmp_path)
    assert code == 1, output
    assert (
        f"does NOT verify: Observation/{glucose['resource']['id']} version 1 "
        "(commitment check failed)"
    ) in output

    unproven = copy.deepcopy(document)
    allergy = next(
        e for e in unproven["entry"] if e["resource"]["resourceType"] == "AllergyIntolerance"
    )
    del allergy["extension"]
    code, output = verify_summary_cli(unproven, tmp_path)
    assert code == 1, output
    assert (
        f"section 'Allergies and intolerances': the line {allergy['fullUrl']} has no ledger proof"
    ) in output

    not_a_document = {**document, "type": "collection"}
    code, output = verify_summary_cli(not_a_document, tmp_path)
    assert code == 1, output
    assert "not a well-formed summary document: not a Bundle of type document" in output
