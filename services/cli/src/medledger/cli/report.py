"""``medledger report``: documents made from a patient's record and the ledger, for people to
read (PDF) and for programs to check (FHIR or JSON).

Each report lives in its own module (``report_summary``, ``report_access``) and registers its
command on :data:`report_app` when imported; ``main`` imports those modules.
"""

from __future__ import annotations

import typer

report_app = typer.Typer(
    help="Reports about a patient: their summary (IPS-shaped) and who accessed their record.",
    no_args_is_help=True,
)
