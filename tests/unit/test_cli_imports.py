"""What a command imports: `--version` and `--help` start fast because they leave the heavy
libraries alone, and `list` imports only what reading PostgreSQL needs.

A behaviour test in fresh interpreters (`sys.modules` after the command); it never times
anything. bench/cli_start.py measures the times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
NOT_FOR_HELP = (
    *("fastapi", "uvicorn", "fabric", "paramiko", "psycopg", "jinja2", "cryptography"),
    *("pydantic", "yaml", "rich", "redis"),  # the inventory, tables, the cache
)
NOT_FOR_LIST = (
    "fastapi",
    "uvicorn",
    "fabric",
    "paramiko",
    "jinja2",
    "cryptography",
    "redis",
    "yoyo",
    "yaml",
)
MARK = "IMPORTED:"

RUN = """
import json, sys
sys.argv = ["vmctl", *{args!r}]
from vmctl.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print({mark!r} + json.dumps({{"exit": code, "modules": sorted(sys.modules)}}))
"""
IMPORT = """
import json, sys
{imports}
print({mark!r} + json.dumps({{"exit": 0, "modules": sorted(sys.modules)}}))
"""


def run(code: str, env: dict[str, str] | None = None) -> tuple[object, set[str]]:
    """Run ``code`` in a fresh interpreter; its exit status and top-level packages imported."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    assert lines, f"no module list (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(lines[-1].removeprefix(MARK))
    return result["exit"], {name.split(".")[0] for name in result["modules"]}


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[object, set[str]]:
    return run(RUN.format(args=list(args), mark=MARK), env)


@pytest.mark.parametrize("args", [["--version"], ["--help"]], ids=" ".join)
def test_version_and_help_import_no_heavy_library(args: list[str]) -> None:
    code, imported = cli(*args)
    assert code in (0, None)
    assert sorted(imported & set(NOT_FOR_HELP)) == []


def test_help_of_a_command_imports_no_heavy_library() -> None:
    """pydantic is allowed here: typer coerces the root's options (`--inventory`, ...) through
    pydantic TypeAdapters whenever a command is named, even for its --help."""
    code, imported = cli("list", "--help")
    assert code in (0, None)
    assert sorted(imported & (set(NOT_FOR_HELP) - {"pydantic"})) == []


def test_what_list_needs_imports_no_ssh_template_or_web_library() -> None:
    """Settings, the VM service, the inventory and the PostgreSQL store."""
    imports = "\n".join(
        f"import {module}"
        for module in (
            "vmctl.cli",
            "vmctl.wiring",
            "vmctl.wiring.settings",
            "vmctl.services.vms",
            "vmctl.core.inventory",
            "vmctl.adapters.store",
        )
    )
    _, imported = run(IMPORT.format(imports=imports, mark=MARK))
    assert "psycopg" in imported  # the store was imported: the check below means something
    assert sorted(imported & set(NOT_FOR_LIST)) == []


@pytest.fixture(scope="module")
def list_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, set[str]]:
    """`vmctl list` in full, against a PostgreSQL that refuses connections (nothing listens on
    port 1): it imports everything a listing does, then stops at the connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    env.update(
        VMCTL_CONFIG=str(tmp_path_factory.mktemp("config") / "none.toml"),
        VMCTL_INVENTORY=str(REPO / "inventory.yaml"),
        VMCTL_DATABASE_URL="postgresql://vmctl@127.0.0.1:1/vmctl?connect_timeout=5",
    )
    return cli("list", env=env)


@pytest.mark.parametrize("module", NOT_FOR_LIST)
def test_list_imports_no_ssh_template_or_web_library(
    list_run: tuple[object, set[str]], module: str
) -> None:
    code, imported = list_run
    assert code == 6, "vmctl list should have stopped at PostgreSQL (exit 6, unavailable)"
    assert module not in imported
