"""vmctl from a wheel works on its own: the wheel holds the cloud-init templates, the node scripts
and the migrations, and an installed vmctl finds them inside its package, not in a checkout.

The wheel is built the way an operator (or the Ansible role) does, offline, from a copy of the
repository's files (what a clone has: tracked and untracked files, nothing git ignores, so no
stale build/ and no writes into the shared working tree), then installed into a fresh venv and
run from a folder outside the repository. Needs no lab; about 10 s.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path

import pytest

from vmctl.core import cloudinit
from vmctl.core.resources import node_script

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("templates/cloud-init", "scripts")


def _files(top: str) -> list[str]:
    """The repository's files under `top`, relative to the repository."""
    return sorted(
        str(path.relative_to(REPO))
        for path in (REPO / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def _env(**extra: str) -> dict[str, str]:
    """The environment without anything that could lead Python back to the repository."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VMCTL_TEMPLATES_DIR")
        and not k.startswith("VIRTUAL_ENV")
    }
    env.update(PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1", **extra)
    return env


def _run(argv: Sequence[str | Path], cwd: Path, **extra: str) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_env(**extra),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("wheel")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(work: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    src = work / "src"
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # (a tracked file deleted in the working tree is listed too)
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / name)
    out = work / "dist"
    # The project venv's setuptools (the dev extra), no index: the machine may well be offline.
    setuptools = version("setuptools")
    assert int(setuptools.split(".")[0]) >= 77, (
        f"setuptools {setuptools} cannot read pyproject.toml: pip install -e '.[dev]' first"
    )
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src],
        work,
    )
    (built,) = out.glob("vmctl-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(work: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel; the dependencies come from the project venv's site-packages
    (offline), after the venv's own, as one line of a .pth file: that folder's editable-install
    hook (a .pth of its own) is never run, so only the wheel's vmctl can be imported."""
    venv = work / "venv"
    _run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv], cwd=work)
    pip: list[str | Path] = [venv / "bin/python", "-m", "pip"]
    _run([*pip, "install", "-q", "--no-deps", "--no-index", wheel], cwd=work)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    project_site = next(p for p in deps if p.resolve().is_relative_to(Path(sys.prefix).resolve()))
    (site / "vmctl-test-deps.pth").write_text(f"{project_site}\n")
    return venv


def test_the_wheel_holds_templates_scripts_and_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        entries = {info.filename: info for info in zf.infolist()}
    expected = [name for top in SHIPPED for name in _files(top)]
    assert expected and any(n.startswith("scripts/lib/") for n in expected)
    for name in expected:
        entry = entries.get(f"vmctl/_shipped/{name}")
        assert entry is not None, f"{name} is not in {wheel.name}"
        # Modes kept: the executable node scripts stay executable.
        assert bool((entry.external_attr >> 16) & stat.S_IXUSR) == os.access(REPO / name, os.X_OK)
    migrations = _files("vmctl/adapters/migrations")
    assert any(m.endswith(".sql") for m in migrations)
    assert [m for m in migrations if m.endswith((".sql", ".py"))] == sorted(
        n for n in entries if n.startswith("vmctl/adapters/migrations/")
    )
    # Nothing lands outside the package (no top-level templates/ or scripts/ in site-packages).
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    assert {n.split("/")[0] for n in entries} == {"vmctl", dist_info}


_PROBE = """
import json, os, sys
import vmctl
from vmctl.adapters import db
from vmctl.core import cloudinit, resources
from yoyo import read_migrations

names = json.loads(sys.argv[1])
seed = cloudinit.Seed(hostname="web-1", instance_id="web-1-abc", user="debian",
                      ssh_authorized_keys=["ssh-ed25519 AAAA op@desk"], mac="52:54:00:01:02:03")
out = {
    "vmctl": vmctl.__file__,
    "templates": str(resources.templates_dir()),
    "scripts_dir": str(resources.scripts_dir()),
    "scripts": {name: resources.node_script(name) for name in names},
    "rendered": cloudinit.render(seed),
    "migrations_dir": str(db.MIGRATIONS_DIR),
    "migrations": sorted(m.id for m in read_migrations(str(db.MIGRATIONS_DIR))),
}
os.environ["VMCTL_TEMPLATES_DIR"] = "/elsewhere/cloud-init"
out["override"] = str(resources.templates_dir())
print(json.dumps(out))
"""


def test_the_installed_wheel_finds_its_own_files(venv: Path, work: Path) -> None:
    outside = work / "elsewhere"
    outside.mkdir(exist_ok=True)
    names = sorted(p.name for p in (REPO / "scripts").glob("*.sh"))
    got = json.loads(_run([venv / "bin/python", "-c", _PROBE, json.dumps(names)], cwd=outside))

    package = Path(got["vmctl"]).parent
    assert package.is_relative_to(venv), got["vmctl"]  # the wheel's vmctl, not the checkout's
    for key in ("templates", "scripts_dir", "migrations_dir"):
        path = Path(got[key])
        assert path.is_relative_to(package) and not path.is_relative_to(REPO), (key, path)
    assert Path(got["templates"]) == package / "_shipped/templates/cloud-init"
    assert Path(got["scripts_dir"]) == package / "_shipped/scripts"
    # The same text as the repository's, scripts/lib/ helpers ahead of each script.
    assert got["scripts"] == {name: node_script(name) for name in names}
    assert all("\n" in text for text in got["scripts"].values())
    seed = cloudinit.Seed(
        hostname="web-1",
        instance_id="web-1-abc",
        user="debian",
        ssh_authorized_keys=["ssh-ed25519 AAAA op@desk"],
        mac="52:54:00:01:02:03",
    )
    assert got["rendered"] == cloudinit.render(seed)
    folder = REPO / "vmctl/adapters/migrations"
    sql = sorted(p.stem for p in [*folder.glob("*.sql"), *folder.glob("[0-9]*.py")])
    assert got["migrations"] == sql
    assert got["override"] == "/elsewhere/cloud-init"  # VMCTL_TEMPLATES_DIR still wins


def test_the_installed_vmctl_command_runs(venv: Path, work: Path) -> None:
    outside = work / "elsewhere"
    outside.mkdir(exist_ok=True)
    from vmctl import __version__

    assert _run([venv / "bin/vmctl", "--version"], cwd=outside).strip() == f"vmctl {__version__}"
    assert _run([venv / "bin/python", "-m", "vmctl", "--version"], cwd=outside).strip() == (
        f"vmctl {__version__}"
    )
