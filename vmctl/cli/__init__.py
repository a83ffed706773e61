"""The vmctl command line: a thin layer over the services.

Each command parses, calls a service, and hands records to `output.emit`. Library errors become a
message on stderr and an exit code (`ExitStatus`) in `main`, and only there. Commands import
what they use when they run, so `--help`, `--version` and `list` start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vmctl import __version__
from vmctl.cli import (
    ansible,
    daemons,
    images,
    jobs,
    lifecycle,
    monitoring,
    move,
    reconcile,
    snapshots,
    tokens,
    vms,
)
from vmctl.cli.options import STATE
from vmctl.core.errors import ExitStatus, VmctlError

app = typer.Typer(
    name="vmctl",
    help="Run a small private cloud of KVM hosts over SSH.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.registered_commands += (
    vms.app.registered_commands
    + lifecycle.app.registered_commands
    + move.app.registered_commands
    + daemons.app.registered_commands
    + reconcile.app.registered_commands
    + ansible.app.registered_commands
)
app.add_typer(daemons.db_app, name="db")
app.add_typer(tokens.app, name="token")
app.add_typer(snapshots.app, name="snapshot")
app.add_typer(images.app, name="images")
app.add_typer(monitoring.app, name="monitoring")
app.add_typer(jobs.app, name="job")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    inventory: Annotated[Path | None, typer.Option(help="inventory.yaml [VMCTL_INVENTORY]")] = None,
    database_url: Annotated[str | None, typer.Option(help="[VMCTL_DATABASE_URL]")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[VMCTL_REDIS_URL]")] = None,
) -> None:
    """vmctl: create, list, show and delete VMs on KVM nodes."""
    STATE["debug"] = debug
    STATE["flags"] = {"inventory": inventory, "database_url": database_url, "redis_url": redis_url}


def main() -> None:
    """Entry point: run the app, turning vmctl errors into a message and an exit code.

    Usage errors are reported by typer itself (exit 2); everything else ends here.
    """
    try:
        app()
    except BrokenPipeError:  # `vmctl events | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitStatus.ERROR)
    except VmctlError as exc:
        if STATE["debug"]:
            raise
        print(f"vmctl: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except Exception as exc:
        if STATE["debug"]:
            raise
        print(
            f"vmctl: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        sys.exit(ExitStatus.ERROR)


if __name__ == "__main__":
    main()
