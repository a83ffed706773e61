import subprocess
import sys

import pytest

from vmctl import __version__

pytestmark = pytest.mark.unit


def vmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmctl", *args], capture_output=True, text=True)


def test_version() -> None:
    proc = vmctl("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"vmctl {__version__}\n"


def test_unknown_option_is_a_usage_error() -> None:
    proc = vmctl("--no-such-option")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr
    assert proc.stdout == ""


def test_every_command_has_help() -> None:
    import typer.main

    from vmctl.cli import app

    group = typer.main.get_command(app)
    names = list(group.commands)  # type: ignore[attr-defined]
    assert {"create", "list", "show", "delete", "nodes", "wait", "ssh", "db"} <= set(names)
    for name in names:
        proc = vmctl(name, "--help")
        assert proc.returncode == 0, name
        assert proc.stdout.startswith("Usage: "), name
        assert group.commands[name].help, f"{name} has no help text"  # type: ignore[attr-defined]
