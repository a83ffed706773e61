"""The import contracts of `make lint` (import-linter, pyproject.toml): the tree as it is keeps
them, and an import that goes up a layer breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

LINT = REPO / ".venv" / "bin" / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(
        REPO / "vmctl", tmp_path / "vmctl", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_its_layers(tmp_path: Path) -> None:
    proc = lint(copy_of_the_package(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert "2 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "imports", "broken"),
    [
        ("core/placement.py", "vmctl.services.vms", "layers"),
        ("services/create.py", "vmctl.adapters.store", "layers"),
        ("adapters/cache.py", "vmctl.wiring", "layers"),
        ("services/vms.py", "paramiko", "no I/O library"),
    ],
)
def test_an_import_up_a_layer_breaks_the_contract(
    tmp_path: Path, module: str, imports: str, broken: str
) -> None:
    tree = copy_of_the_package(tmp_path)
    with (tree / "vmctl" / module).open("a") as f:
        f.write(f"\nimport {imports}  # noqa\n")
    proc = lint(tree)
    assert proc.returncode == 1, proc.stdout
    name = module.removesuffix(".py").replace("/", ".")
    assert f"vmctl.{name} -> {imports}" in proc.stdout
    assert any(broken in line and "BROKEN" in line for line in proc.stdout.splitlines())
