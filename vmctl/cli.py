"""The vmctl command line: a thin layer over the library core.

Library errors become messages on stderr and exit codes here, in one place.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vmctl import __version__
from vmctl.errors import ExitStatus, VmctlError

app = typer.Typer(
    name="vmctl",
    help="Run a small private cloud of KVM hosts over SSH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """vmctl: create, list, show and delete VMs on KVM nodes."""
    _state["debug"] = debug


_state: dict[str, bool] = {"debug": False}


def main() -> None:
    """Entry point: run the app, turning vmctl errors into a message and an exit code.

    Usage errors are reported by typer itself (exit 2); everything else ends here.
    """
    try:
        app()
    except VmctlError as exc:
        if _state["debug"]:
            raise
        print(f"vmctl: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except Exception as exc:
        if _state["debug"]:
            raise
        print(
            f"vmctl: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        sys.exit(ExitStatus.ERROR)


if __name__ == "__main__":
    main()
