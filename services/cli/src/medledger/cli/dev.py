"""``medledger dev up|down|status``: the local stack of real servers on fixed ports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medledger.cli.demo import SeedError, seed_demo, seeded_table
from medledger.cli.demo_models import (
    ModelRegistrationError,
    RegisteredDemoModel,
    register_demo_models,
    registered_table,
)
from medledger.devstack.devstack import ComponentStatus, DevStack
from medledger.devstack.paths import StackPaths
from medledger.devstack.probes import Health
from medledger.devstack.process import StackError
from medledger.devstack.services import StackKeys

app = typer.Typer(help="Run the local stack (Mongo, Vault, Triton and the services).")
console = Console()
errors = Console(stderr=True)

_HEALTH_STYLE = {Health.SERVING: "green", Health.NOT_SERVING: "yellow", Health.DOWN: "red"}


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _table(statuses: list[ComponentStatus], title: str) -> Table:
    table = Table(title=title)
    table.add_column("component")
    table.add_column("address", overflow="fold")
    table.add_column("pid", justify="right")
    table.add_column("status", overflow="fold")
    table.add_column("log file", overflow="fold")
    for s in statuses:
        style = _HEALTH_STYLE[s.health]
        status = f"[{style}]{s.health.value}[/{style}]" + (f" ({s.note})" if s.note else "")
        table.add_row(
            s.name, s.address, str(s.pid) if s.pid else "-", status, _relative(s.log_file)
        )
    return table


def _keys_table(keys: StackKeys) -> Table:
    """The public keys a verifier needs (``medledger verify``, another witness, an auditor)."""
    table = Table(title="verifier keys (C2SP vkeys)")
    table.add_column("key of")
    table.add_column("vkey", overflow="fold")
    table.add_row("ledger checkpoints", keys.ledger_vkey)
    for name, vkey in keys.witness_vkeys.items():
        table.add_row(f"{name} cosignatures", vkey)
    return table


def _show(stack: DevStack, table: Table) -> None:
    console.print(table)
    keys = stack.trust_keys()
    if keys is not None:
        console.print(_keys_table(keys))


def _say(message: str) -> None:
    console.print(f"[dim]•[/dim] {message}")


@app.command()
def up(
    deps_only: Annotated[
        bool, typer.Option("--deps-only", hidden=True, help="Start Mongo, Vault, Triton only.")
    ] = False,
) -> None:
    """Start the stack (what already runs is left alone) and wait until all of it serves."""
    stack = DevStack(StackPaths.from_env())
    started = time.monotonic()
    try:
        statuses = stack.up(deps_only=deps_only, say=_say)
    except StackError as exc:
        errors.print(f"[red bold]medledger dev up failed:[/red bold] {exc}", highlight=False)
        errors.print("Fix it and run `medledger dev up` again (or `medledger dev down`).")
        raise typer.Exit(1) from exc
    serving = all(s.health is Health.SERVING for s in statuses)
    seeded = None
    seed_error = None
    models: list[RegisteredDemoModel] = []
    model_error = None
    if serving and not deps_only:
        try:
            seeded = seed_demo(
                stack.service_address("identity"),
                stack.paths,
                record=stack.service_address("record"),
                say=_say,
            )
        except SeedError as exc:
            seed_error = exc
        models, model_error = _register_models(stack)
    elapsed = time.monotonic() - started
    _show(stack, _table(statuses, f"medledger local stack (up in {elapsed:.1f}s)"))
    if stack.trace_ui_enabled and not deps_only:
        console.print(
            f"Traces: [bold]{stack.trace_ui.url}[/bold] (Arize Phoenix); "
            "[bold]./medledger trace TRACE_ID[/bold] prints a trace's page, --open opens it."
        )
    if seeded is not None:
        console.print(seeded_table(seeded))
        console.print(
            "Try it: [bold]./medledger --help[/bold] from the repository root (no uv or .venv "
            "on PATH needed); [bold]./medledger demo patients[/bold] lists the demo patients' "
            "ids; the README walks through tokens, consent, records and receipts."
        )
    if models:
        console.print(registered_table(models))
    if seed_error is not None:
        errors.print(
            f"[red bold]medledger dev up: demo seeding failed:[/red bold] {seed_error}",
            highlight=False,
        )
        errors.print(
            "The stack runs; fix it and run `medledger demo seed --record "
            f"{stack.service_address('record')}` (or `dev up`) again."
        )
    if model_error is not None:
        errors.print(
            f"[red bold]medledger dev up: model registration failed:[/red bold] {model_error}",
            highlight=False,
        )
        errors.print("The stack runs; fix it and run `medledger dev up` again.")
    if not serving or seed_error is not None or model_error is not None:
        raise typer.Exit(1)


def _register_models(
    stack: DevStack,
) -> tuple[list[RegisteredDemoModel], ModelRegistrationError | None]:
    """Registers the models the stack's Triton serves (what is registered stays as it is)."""
    try:
        models = register_demo_models(
            stack.service_address("identity"),
            stack.service_address("inference"),
            stack.paths,
            stack.triton.model_repository,
            say=_say,
        )
    except ModelRegistrationError as exc:
        return [], exc
    return models, None


@app.command()
def down() -> None:
    """Stop everything `dev up` started (by the pids in its pid files), services first."""
    stack = DevStack(StackPaths.from_env())
    try:
        stopped = stack.down(say=_say)
    except StackError as exc:
        errors.print(f"[red bold]medledger dev down failed:[/red bold] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if not stopped:
        console.print("nothing was running")


@app.command()
def status() -> None:
    """Show each component: pid (if running), address and health."""
    stack = DevStack(StackPaths.from_env())
    _show(stack, _table(stack.status(), f"medledger local stack ({stack.paths.home})"))
