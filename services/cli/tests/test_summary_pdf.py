"""The patient summary's PDF (medledger.cli.summary_pdf), read back with pypdf: its text holds
the patient, every section and the values of the fixture export, and the same summary gives
the same bytes."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from pypdf import PdfReader

from medledger.cli.report_fixtures import fixture_export
from medledger.cli.summary_document import build_summary
from medledger.cli.summary_pdf import render_pdf


@pytest.fixture(scope="module")
def export() -> dict[str, Any]:
    return fixture_export()


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)


def test_the_pdf_holds_the_patient_the_sections_and_the_values(export: dict[str, Any]) -> None:
    summary = build_summary(export)
    text = pdf_text(render_pdf(summary))
    assert "Patient summary" in text
    assert "Bex Testerson" in text
    assert "born 1961-08-08 · female" in text
    assert f"Patient/{summary.patient.patient_id}" in text
    for heading in (
        "Active problems LOINC 11450-4",
        "Past problems LOINC 11348-0",
        "Medications LOINC 10160-0",
        "Allergies and intolerances LOINC 48765-2",
        "Results (latest of each test) LOINC 30954-2",
        "Vital signs (latest of each) LOINC 8716-3",
        "Risk assessments (decision support, not a diagnosis) medledger risk-assessments",
    ):
        assert heading in text, heading
    for value in (
        "Type 2 diabetes mellitus without complications",
        "Asthma (childhood)",
        "metformin hydrochloride 500 MG Oral Tablet",
        "Penicillin",
        "Hives (moderate)",
        "Glucose [Mass/volume] in Serum or Plasma 141 mg/dL 2026-01-01 09:00 UTC",
        "Systolic blood pressure 119 mmHg",
        "Diabetes progression at one year",
        "value 182.4",
    ):
        assert value in text, value
    # The earlier glucose is not a latest result.
    assert "118 mg/dL" not in text
    # Each line names its version and ledger leaf; the risk assessment its prediction's leaf.
    for section in summary.sections:
        for item in section.items:
            assert item.ledger.leaf_index is not None
            assert f"v1, leaf {item.ledger.leaf_index}" in text
    assert "prediction leaf 40" in text
    assert f"Bundle {summary.bundle_id}" in text


def test_an_empty_section_says_so(export: dict[str, Any]) -> None:
    changed = copy.deepcopy(export)
    changed["entry"] = [
        e for e in changed["entry"] if e["resource"]["resourceType"] != "AllergyIntolerance"
    ]
    text = pdf_text(render_pdf(build_summary(changed)))
    assert (
        "Allergies and intolerances LOINC 48765-2 None in the record as exported "
        "(emptyReason: unavailable)."
    ) in text
    assert "Penicillin" not in text


def test_the_same_summary_gives_the_same_bytes(export: dict[str, Any]) -> None:
    first = render_pdf(build_summary(export))
    second = render_pdf(build_summary(fixture_export()))
    assert first.startswith(b"%PDF-")
    assert first == second
    # And the bytes do follow the record: one changed value changes them.
    changed = copy.deepcopy(export)
    changed["entry"][0]["resource"]["name"][0]["family"] = "Testersen"
    assert render_pdf(build_summary(changed)) != first


def test_text_that_looks_like_markup_is_printed_as_text(export: dict[str, Any]) -> None:
    changed = copy.deepcopy(export)
    condition = next(
        e["resource"] for e in changed["entry"] if e["resource"]["resourceType"] == "Condition"
    )
    condition["code"]["text"] = "Pain <b>left</b> & right"
    text = pdf_text(render_pdf(build_summary(changed)))
    assert "Pain <b>left</b> & right" in text
