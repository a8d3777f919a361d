"""Render the first page of each report, made from the fixed fixture patient
(medledger.cli.report_fixtures), as the PNG the README shows, so the pictures can be made
again after a change to a report's layout:

    .venv/bin/python scripts/render-report-images.py            # every report
    .venv/bin/python scripts/render-report-images.py summary    # only those named

Each report is a function returning its PDF's bytes (:data:`REPORTS`); its page goes to
docs/images/report-<name>.png. The PDFs are deterministic; the pictures depend on pypdfium2's
rasteriser too, so regenerate them with the locked version.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pypdfium2

from medledger.cli.access_report_fixture import fixture_access_report
from medledger.cli.access_report_pdf import render_pdf as render_access_pdf
from medledger.cli.report_fixtures import fixture_export
from medledger.cli.summary_document import build_summary
from medledger.cli.summary_pdf import render_pdf
from medledger.verify.access_report import count_untestable

IMAGES: Final = Path(__file__).resolve().parent.parent / "docs" / "images"
# Pixels per PDF point: 1.5 gives an A4 page 893 pixels wide, legible on GitHub.
SCALE: Final = 1.5


def summary_pdf() -> bytes:
    return render_pdf(build_summary(fixture_export()))


def access_pdf() -> bytes:
    report = fixture_access_report()
    hint = "medledger verify access-report access.json --vkey LEDGER_VKEY"
    return render_access_pdf(report, untestable=count_untestable(report), verify_hint=hint)


REPORTS: Final[dict[str, Callable[[], bytes]]] = {"summary": summary_pdf, "access": access_pdf}


def render_first_page(pdf: bytes, path: Path) -> None:
    document = pypdfium2.PdfDocument(pdf)
    try:
        page = document[0]
        image = page.render(scale=SCALE).to_pil()
        image.save(path, format="PNG", optimize=True)
    finally:
        document.close()


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - REPORTS.keys())
    if unknown:
        print(f"unknown report(s) {', '.join(unknown)}; known: {', '.join(REPORTS)}")
        return 2
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in names or list(REPORTS):
        path = IMAGES / f"report-{name}.png"
        render_first_page(REPORTS[name](), path)
        print(f"{path.relative_to(IMAGES.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
