"""The ``medledger`` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import typer
from medledger.cli.dev import app as dev_app

app = typer.Typer(
    name="medledger",
    help="medledger: shared medical records with a verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev_app, name="dev")

if __name__ == "__main__":
    app()
