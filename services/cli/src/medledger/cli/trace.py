"""``medledger trace TRACE_ID``: where the local trace UI shows a trace (``--open``: open it).

Trace ids are in the services' JSON log lines (``trace_id``) and in every ledger entry a
request caused (``LedgerEntry.trace_id``); the trace UI is the one ``medledger dev up``
starts (Arize Phoenix on 127.0.0.1:8020, unless ``MEDLEDGER_TRACE_UI=0``).
"""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer
from rich.console import Console

from medledger.devstack.devstack import DevStack
from medledger.devstack.paths import StackPaths
from medledger.devstack.probes import Health
from medledger.devstack.trace_ui import trace_url

errors = Console(stderr=True)


def trace_command(
    trace_id: Annotated[
        str, typer.Argument(help="The trace's id: 32 hexadecimal digits (W3C trace context).")
    ],
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open it in the browser instead of printing it.")
    ] = False,
) -> None:
    """Print (or open) the local trace UI's page of a trace."""
    stack = DevStack(StackPaths.from_env())
    try:
        url = trace_url(stack.trace_ui.url, trace_id.strip().lower())
    except ValueError as exc:
        errors.print(f"[red bold]medledger trace:[/red bold] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if stack.trace_ui.health() is not Health.SERVING:
        errors.print(
            f"the local trace UI does not answer at {stack.trace_ui.url}: `make up` starts it "
            "(unless MEDLEDGER_TRACE_UI=0)",
            highlight=False,
        )
        print(url)
        raise typer.Exit(1)
    if open_browser and webbrowser.open(url):
        return
    print(url)
