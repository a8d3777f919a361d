"""The ``medledger`` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from medledger.cli.audit import app as ledger_app
from medledger.cli.consent import app as consent_app
from medledger.cli.demo import app as demo_app
from medledger.cli.dev import app as dev_app
from medledger.cli.ingest import app as ingest_app
from medledger.cli.models import app as models_app
from medledger.cli.predict import app as predict_app
from medledger.cli.record import app as record_app
from medledger.cli.record_duplicates import duplicates_command  # noqa: F401 (registers it)
from medledger.cli.report import report_app
from medledger.cli.report_access import access_command  # noqa: F401 (registers it)
from medledger.cli.report_summary import summary_command  # noqa: F401 (registers it)
from medledger.cli.token import token_command
from medledger.cli.trace import trace_command
from medledger.cli.verify import app as verify_app
from medledger.cli.verify_access import access_report_command  # noqa: F401 (registers it)

app = typer.Typer(
    name="medledger",
    help="medledger: shared medical records with a verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev_app, name="dev")
app.add_typer(verify_app, name="verify")
app.add_typer(ledger_app, name="ledger")
app.command("token")(token_command)
app.add_typer(consent_app, name="consent")
app.add_typer(record_app, name="record")
app.add_typer(demo_app, name="demo")
app.add_typer(models_app, name="models")
app.add_typer(predict_app, name="predict")
app.add_typer(report_app, name="report")
app.add_typer(ingest_app, name="ingest")
app.command("trace")(trace_command)

if __name__ == "__main__":
    app()
