"""`vmctl reconcile`: what differs between PostgreSQL, the nodes and Redis; `--fix` repairs what
is safe. Exit 0 clean (or everything repaired), 4 drift remains, 6 a node could not be surveyed
(docs/reconcile.md)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vmctl.cli.complete import node_names
from vmctl.cli.options import Format, output_options, vm_service
from vmctl.cli.output import emit
from vmctl.core.errors import ExitStatus

app = typer.Typer()

DRIFT_COLUMNS = [
    ("kind", "KIND"),
    ("node", "NODE"),
    ("vm", "VM"),
    ("subject", "SUBJECT"),
    ("detail", "DETAIL"),
    ("fix", "FIX"),
]
DONE_COLUMNS = [
    ("kind", "KIND"),
    ("node", "NODE"),
    ("vm", "VM"),
    ("subject", "SUBJECT"),
    ("result", "RESULT"),
    ("detail", "DETAIL"),
]


@app.command()
@output_options
def reconcile(
    fix: Annotated[
        bool, typer.Option("--fix", help="Repair what is safe, print what was done.")
    ] = False,
    node: Annotated[
        str | None, typer.Option(help="Only this node.", autocompletion=node_names)
    ] = None,
    *,
    fmt: Format,
) -> None:
    """Compare PostgreSQL with the nodes and Redis; report drift (exit 4), or repair it (--fix).

    Never touches a domain or directory without this installation's mark. Exit codes: 0 clean,
    4 drift remains, 6 a node could not be surveyed."""
    svc = vm_service()
    outcome = svc.reconcile_fix(node) if fix else svc.reconcile_report(node)
    data = outcome.as_dict()
    if fmt is Format.table:
        if fix:
            emit(data["done"], DONE_COLUMNS, fmt)
            sys.stdout.write("\n")
        emit(data["drift"], DRIFT_COLUMNS, fmt)
    else:
        emit(data, [], fmt)
    for item in outcome.foreign:
        print(f"vmctl: not vmctl's, left alone: {item.subject} ({item.detail})", file=sys.stderr)
    for name, error in sorted(outcome.unreachable.items()):
        print(f"vmctl: error: node {name} could not be surveyed: {error}", file=sys.stderr)
    fixed = sum(1 for a in outcome.actions if a.result == "fixed")
    summary = f"{len(outcome.drift)} drift item(s)" + (" left" if fix else "")
    if fix:
        summary = f"{fixed} repaired, {summary}"
    print(f"vmctl: {summary}", file=sys.stderr)
    if outcome.unreachable:
        raise typer.Exit(ExitStatus.UNAVAILABLE)
    if outcome.drift:
        raise typer.Exit(ExitStatus.DRIFT)
