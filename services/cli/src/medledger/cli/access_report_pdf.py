"""The access report (:mod:`medledger.verify.access_report`) as a PDF for people: the patient's
id, the checkpoint the report is complete up to, one line per ledger entry about the patient
(when, what happened, who, which organisation, for what purpose, on what; break-glass
accesses flagged), and how to verify it.

What it names: the patient by the id the report was asked for, never by name (the access
report is made from the ledger and the record's openings alone and reads no resource's
content), actors by the ids the ledger holds (client and user ids, organisation ids), and
resources by type and id. A line the patient made shows "the patient".

Deterministic: the same report gives the same bytes (reportlab's ``invariant`` mode; the text
comes from the report alone, its time included). Standard PDF fonts (Helvetica), nothing
embedded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Final
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import Flowable

from medledger.verify.access_report import (
    FOUND_BY_LEGACY,
    PATIENT_ACTOR,
    AccessReport,
    ListedEntry,
    unverified_checkpoint,
)

TITLE: Final = "Access report"
MARGIN: Final = 14 * mm
COLUMNS: Final = ("leaf", "when (UTC)", "event", "who", "organisation", "purpose", "what", "")
# Shares of the table's width.
_SHARES: Final = (0.05, 0.13, 0.12, 0.15, 0.10, 0.07, 0.28, 0.10)
_INK: Final = colors.HexColor("#1a1a1a")
_MUTED: Final = colors.HexColor("#5a5a5a")
_RULE: Final = colors.HexColor("#b8c4d0")
_HEAD: Final = colors.HexColor("#e6edf4")
_GLASS: Final = colors.HexColor("#fbe3e0")
_STYLES: Final = {
    "title": ParagraphStyle(
        "title", fontName="Helvetica-Bold", fontSize=18, leading=22, textColor=_INK
    ),
    "body": ParagraphStyle("body", fontName="Helvetica", fontSize=9, leading=11.5, textColor=_INK),
    "cell": ParagraphStyle("cell", fontName="Helvetica", fontSize=7.5, leading=9, textColor=_INK),
    "head": ParagraphStyle(
        "head", fontName="Helvetica-Bold", fontSize=7.5, leading=9, textColor=_INK
    ),
    "mono": ParagraphStyle("mono", fontName="Courier", fontSize=7.5, leading=9, textColor=_INK),
    "muted": ParagraphStyle(
        "muted", fontName="Helvetica", fontSize=8, leading=10, textColor=_MUTED
    ),
}


def _text(value: str) -> str:
    return escape(value)


def what(entry: ListedEntry) -> str:
    """The resource an entry is about, as far as the report opens it."""
    if not entry.resource_type:
        return "-"
    if not entry.salt:
        return f"{entry.resource_type} (not opened)"
    if not entry.resource_id:  # e.g. the patient's AuditEvent: their access log was read
        return entry.resource_type
    version = f" v{entry.resource_version}" if entry.resource_version else ""
    return f"{entry.resource_type}/{entry.resource_id}{version}"


def who(entry: ListedEntry) -> str:
    return "the patient" if entry.actor == PATIENT_ACTOR else entry.actor


def flag(entry: ListedEntry) -> str:
    if entry.break_glass:
        return "BREAK-GLASS"
    if entry.purpose == "ETREAT":
        return "emergency"
    return ""


def _row(entry: ListedEntry) -> list[Flowable]:
    cells = (
        str(entry.leaf_index),
        entry.time.replace("T", " ").removesuffix("Z"),
        entry.event,
        who(entry),
        entry.organization,
        entry.purpose,
        what(entry),
        flag(entry),
    )
    return [Paragraph(_text(cell), _STYLES["cell"]) for cell in cells]


def _table(entries: Sequence[ListedEntry], width: float) -> Table:
    rows: list[list[Any]] = [[Paragraph(_text(c), _STYLES["head"]) for c in COLUMNS]]
    rows += [_row(entry) for entry in entries]
    table = Table(rows, colWidths=[width * share for share in _SHARES], repeatRows=1)
    style: list[Any] = [
        ("BACKGROUND", (0, 0), (-1, 0), _HEAD),
        ("LINEBELOW", (0, 0), (-1, -1), 0.4, _RULE),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    for position, entry in enumerate(entries, start=1):
        if entry.break_glass:
            style.append(("BACKGROUND", (0, position), (-1, position), _GLASS))
    table.setStyle(TableStyle(style))
    return table


def _footer(canvas: Canvas, document: SimpleDocTemplate) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 7)
    canvas.setFillColor(_MUTED)
    canvas.drawString(MARGIN, 8 * mm, f"{TITLE}, page {document.page}")
    canvas.restoreState()


def render_pdf(report: AccessReport, *, untestable: int, verify_hint: str) -> bytes:
    """The report as PDF bytes (A4 landscape), the same for the same report.
    ``untestable``: entries about some patient without a nonce, that nobody can attribute;
    ``verify_hint``: the command that verifies the report's JSON form."""
    checkpoint = unverified_checkpoint(report.checkpoint)
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=landscape(A4),
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=TITLE,
        author="medledger report access",
        subject=f"Patient/{report.patient_id}",
        creator="medledger",
        invariant=1,
    )
    width = document.width - 12
    covered = (
        f"leaves {report.first_index} to {checkpoint.size - 1} (continuing the report up to "
        f"size {report.first_index})"
        if report.first_index
        else f"every leaf, 0 to {checkpoint.size - 1}"
    )
    glass = sum(1 for e in report.entries if e.break_glass)
    story: list[Flowable] = [
        Paragraph(_text(TITLE), _STYLES["title"]),
        Spacer(1, 2 * mm),
        Paragraph(
            _text(f"Patient/{report.patient_id}, made {report.generated_at}"), _STYLES["body"]
        ),
        Spacer(1, 2 * mm),
        Paragraph(
            _text(
                f"{len(report.entries)} ledger entries about this patient "
                f"({glass} break-glass) among {covered} of the ledger, complete up to its "
                "checkpoint:"
            ),
            _STYLES["body"],
        ),
        Paragraph(_text(f"origin {checkpoint.origin}"), _STYLES["mono"]),
        Paragraph(_text(f"tree size {checkpoint.size}"), _STYLES["mono"]),
        Paragraph(_text(f"root hash {checkpoint.root_hash.hex()}"), _STYLES["mono"]),
        Spacer(1, 3 * mm),
        _table(report.entries, width),
        Spacer(1, 3 * mm),
    ]
    legacy = sum(1 for e in report.entries if e.found_by == FOUND_BY_LEGACY)
    if legacy:
        story.append(
            Paragraph(
                _text(
                    f"{legacy} of these entries were written before this patient had a scan "
                    "secret: whoever holds the deployment's subject key and the patient's id "
                    "can find them in the ledger, even after the patient's erasure."
                ),
                _STYLES["muted"],
            )
        )
    if untestable:
        story.append(
            Paragraph(
                _text(
                    f"{untestable} older ledger entries (from before per-entry nonces) are "
                    "about some patient and cannot be attributed by anyone: they are not "
                    "checkable, and any of them might be about this patient."
                ),
                _STYLES["muted"],
            )
        )
    story += [
        Paragraph(
            _text(
                "How to verify: this PDF is a rendering. The report's JSON form holds the "
                "signed checkpoint and every ledger leaf it covers; anyone with the ledger's "
                "public key checks offline that the entries above are all and only this "
                f"patient's, up to the checkpoint: {verify_hint}"
            ),
            _STYLES["muted"],
        ),
        Paragraph(
            _text(
                "'the patient': an entry the patient made; '(not opened)': an entry another "
                "service made (consents, break-glass, logins), whose resource this report does "
                "not reveal; 'emergency': a use with purpose ETREAT."
            ),
            _STYLES["muted"],
        ),
    ]
    document.build(story, onFirstPage=_footer, onLaterPages=_footer)
    return buffer.getvalue()
