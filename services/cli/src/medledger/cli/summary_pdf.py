"""The patient summary (:mod:`medledger.cli.summary_document`) as a PDF for people: the
patient, then each section as a table, each line ending with the version it shows and the
ledger leaf that version was recorded at.

Deterministic: the same summary gives the same bytes. reportlab's ``invariant`` mode fixes
what it would otherwise take from the clock and randomness (the creation date, the document
ID); the text comes from the summary alone. The standard PDF fonts (Helvetica) are used, so
nothing is embedded: they cover Latin-1, and other characters show as missing glyphs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Final
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.flowables import Flowable

from medledger.cli.summary_document import TITLE, Section, Summary, time_text

MARGIN: Final = 16 * mm
LEDGER_WIDTH: Final = 30 * mm
# The share of the width left after the ledger column that each other column takes.
_COLUMN_SHARES: Final[dict[str, tuple[float, ...]]] = {
    "problems": (0.55, 0.25, 0.20),
    "past_problems": (0.55, 0.25, 0.20),
    "medications": (0.40, 0.12, 0.30, 0.18),
    "allergies": (0.24, 0.20, 0.14, 0.26, 0.16),
    "results": (0.52, 0.26, 0.22),
    "vital_signs": (0.40, 0.38, 0.22),
    "risk_assessments": (0.25, 0.35, 0.18, 0.22),
}
_INK: Final = colors.HexColor("#1a1a1a")
_MUTED: Final = colors.HexColor("#5a5a5a")
_RULE: Final = colors.HexColor("#b8c4d0")
_HEAD: Final = colors.HexColor("#e6edf4")

_STYLES: Final = {
    "title": ParagraphStyle(
        "title", fontName="Helvetica-Bold", fontSize=18, leading=22, textColor=_INK
    ),
    "patient": ParagraphStyle(
        "patient", fontName="Helvetica-Bold", fontSize=12, leading=15, textColor=_INK
    ),
    "body": ParagraphStyle("body", fontName="Helvetica", fontSize=9, leading=11.5, textColor=_INK),
    "note": ParagraphStyle(
        "note", fontName="Helvetica", fontSize=7.5, leading=9.5, textColor=_MUTED
    ),
    "section": ParagraphStyle(
        "section",
        fontName="Helvetica-Bold",
        fontSize=11.5,
        leading=14,
        textColor=_INK,
        spaceBefore=4,
    ),
    "cell": ParagraphStyle(
        "cell", fontName="Helvetica", fontSize=8, leading=10, textColor=_INK, alignment=TA_LEFT
    ),
    "head": ParagraphStyle(
        "head", fontName="Helvetica-Bold", fontSize=8, leading=10, textColor=_INK
    ),
    "ledger": ParagraphStyle(
        "ledger", fontName="Helvetica", fontSize=7, leading=9, textColor=_MUTED
    ),
    "empty": ParagraphStyle(
        "empty", fontName="Helvetica-Oblique", fontSize=8.5, leading=11, textColor=_MUTED
    ),
}


def _text(value: str) -> str:
    """Plain text as reportlab paragraph markup (which reads ``<``, ``>`` and ``&``)."""
    return escape(value)


def _patient_block(summary: Summary) -> list[Flowable]:
    patient = summary.patient
    facts = [
        f"born {patient.birth_date}" if patient.birth_date else "",
        patient.gender,
        f"Patient/{patient.patient_id}",
    ]
    lines: list[Flowable] = [
        Paragraph(_text(patient.name or "(no name recorded)"), _STYLES["patient"]),
        Paragraph(_text(" · ".join(f for f in facts if f)), _STYLES["body"]),
    ]
    if patient.identifiers:
        lines.append(
            Paragraph(_text("Identifiers: " + "; ".join(patient.identifiers)), _STYLES["body"])
        )
    lines.append(
        Paragraph(
            _text(
                f"The record as exported at {time_text(summary.timestamp)} (export "
                f"{summary.export_id}). Each line names the version of the resource it comes "
                "from and the ledger leaf where that version was recorded; the FHIR document "
                f"of this summary (Bundle {summary.bundle_id}) carries each one's ledger proof, "
                "which medledger verify summary checks with the ledger's public key."
            ),
            _STYLES["note"],
        )
    )
    return lines


def _section_block(section: Section, width: float) -> list[Flowable]:
    spec = section.spec
    code = spec.code
    system = "LOINC" if code["system"] == "http://loinc.org" else "medledger"
    heading = Paragraph(
        f"{_text(spec.title)} <font size=7 color='#5a5a5a'>"
        f"{_text(system)} {_text(code['code'])}</font>",
        _STYLES["section"],
    )
    if not section.items:
        empty = Paragraph(
            _text("None in the record as exported (emptyReason: unavailable)."), _STYLES["empty"]
        )
        return [KeepTogether([heading, Spacer(1, 1.5 * mm), empty]), Spacer(1, 3 * mm)]
    shares = _COLUMN_SHARES[spec.key]
    rest = width - LEDGER_WIDTH
    widths = [rest * share for share in shares] + [LEDGER_WIDTH]
    rows: list[list[Any]] = [[Paragraph(_text(c), _STYLES["head"]) for c in spec.columns]]
    for item in section.items:
        *cells, ledger = item.cells
        rows.append(
            [Paragraph(_text(c), _STYLES["cell"]) for c in cells]
            + [Paragraph(_text(ledger), _STYLES["ledger"])]
        )
    table = Table(rows, colWidths=widths, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), _HEAD),
                ("LINEBELOW", (0, 0), (-1, -1), 0.4, _RULE),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
            ]
        )
    )
    return [heading, Spacer(1, 1.5 * mm), table, Spacer(1, 4 * mm)]


def _footer(summary: Summary) -> Any:
    patient = summary.patient
    who = " · ".join(p for p in (patient.name, patient.birth_date) if p)

    def draw(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(_MUTED)
        canvas.drawString(MARGIN, 9 * mm, f"{TITLE} · {who}")
        canvas.drawRightString(A4[0] - MARGIN, 9 * mm, f"page {document.page}")
        canvas.restoreState()

    return draw


def render_pdf(summary: Summary) -> bytes:
    """The summary as PDF bytes (A4), the same for the same summary."""
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=TITLE,
        author="medledger report summary",
        subject=f"Patient/{summary.patient.patient_id}",
        creator="medledger",
        invariant=1,
    )
    # The frame's own padding (6 points a side) narrows what a table may take.
    width = document.width - 12
    story: Sequence[Flowable] = [
        Paragraph(_text(TITLE), _STYLES["title"]),
        Spacer(1, 2 * mm),
        *_patient_block(summary),
        Spacer(1, 5 * mm),
        *(f for section in summary.sections for f in _section_block(section, width)),
    ]
    footer = _footer(summary)
    document.build(list(story), onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
