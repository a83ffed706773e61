"""The node scripts refuse bad arguments before touching anything (run locally, no libvirt)."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def create(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    for f in ("domain.xml", "user-data", "meta-data"):
        (staging / f).write_text("x")
    args = {
        "name": "web-1",
        "base": str(tmp_path / "base.qcow2"),
        "root-gb": "4",
        "data-gb": "1",
        "storage": str(tmp_path / "vms"),
        "staging": str(staging),
    }
    args.update(overrides)
    argv = ["bash", str(SCRIPTS / "create-vm.sh")]
    for k, v in args.items():
        argv += [f"--{k}", v]
    return subprocess.run(argv, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a;reboot"),
        ("name", "$(id)"),
        ("name", "../x"),
        ("name", "-rf"),
        ("name", ""),
        ("name", "x" * 64),
        ("name", "Web"),
        ("name", "wéb"),
        ("root-gb", "0"),
        ("root-gb", "abc"),
        ("data-gb", "-5"),
        ("storage", "relative/path"),
        ("storage", "/srv/../etc"),
    ],
)
def test_create_refuses_bad_arguments(tmp_path: Path, field: str, value: str) -> None:
    proc = create(tmp_path, **{field: value})
    assert proc.returncode == 2, proc.stderr
    assert f"--{field}" in proc.stderr
    assert not (tmp_path / "vms").exists()


def test_create_reports_missing_base_image(tmp_path: Path) -> None:
    proc = create(tmp_path)
    assert proc.returncode == 3
    assert "base image" in proc.stderr
    assert not (tmp_path / "vms").exists()


def test_delete_refuses_bad_name() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "delete-vm.sh"), "--name", "x;y", "--storage", "/srv"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "invalid --name" in proc.stderr
