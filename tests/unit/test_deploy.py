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


def _haproxy_sections() -> dict[str, list[str]]:
    """deploy/haproxy/haproxy.cfg as section header → its lines (comment lines left out)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in (DEPLOY / "haproxy" / "haproxy.cfg").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def test_haproxy_serves_metrics_only_on_its_monitoring_frontend() -> None:
    sections = _haproxy_sections()
    monitoring = sections["frontend monitoring"]
    assert monitoring[0] == 'bind "${VMCTL_MONITORING_BIND}"'
    assert "http-request use-service prometheus-exporter if { path /metrics }" in monitoring
    assert "http-request deny deny_status 404 unless { path /metrics/cloud }" in monitoring
    assert monitoring[-1] == "default_backend api"
    # the external frontend refuses /metrics and everything under it, before the rate limit
    external = sections["frontend external"]
    deny = "http-request deny deny_status 404 if { path_beg /metrics }"
    assert deny in external
    assert external.index(deny) < external.index("default_backend api")
    # the internal one passes only the phone-home and IP paths
    assert "http-request deny deny_status 404 unless internal_path" in sections["frontend internal"]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing")
def test_this_haproxy_has_the_prometheus_exporter() -> None:
    proc = subprocess.run(["haproxy", "-vv"], capture_output=True, text=True, check=True)
    assert "Built with the Prometheus exporter as a service" in proc.stdout
