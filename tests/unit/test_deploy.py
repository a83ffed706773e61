"""The files in deploy/ that real hosts use: they must at least be valid for their tools."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_watch_ip_unit_runs_the_watcher_and_restarts_it() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "vmctl-watch-ip.service")
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[0].endswith("/vmctl") and exec_start[1] == "watch-ip"
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["KillSignal"] == "SIGTERM"  # the watcher stops cleanly on it
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for unit in (DEPLOY / "systemd").glob("*.service"):
        proc = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path
        )
        problems = [
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if line.strip() and "is not executable: No such file or directory" not in line
        ]
        assert problems == [], unit.name
