"""`lab/lab up --ha` and `down --ha` for real: the Patroni cluster comes and goes whole, and
leaves the rest of the lab as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LAB

pytestmark = pytest.mark.integration


def _status() -> dict:  # type: ignore[type-arg]
    out = subprocess.run([str(LAB), "status", "--json"], capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _ha_processes() -> set[int]:
    """Every process whose command line names the HA directory: etcd, Patroni, PostgreSQL's
    postmasters (their children go with them)."""
    from labkit import ha

    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(ha.HA_DIR) in cmdline:
            found.add(int(pid))
    return found


def _rest_of_lab(info: dict) -> dict:  # type: ignore[type-arg]
    """The lab's own PostgreSQL and Redis (by PID: not restarted) and nodes."""
    from labkit import services

    return {
        "postgres": (info["postgres"]["up"], services.postgres_pid()),
        "redis": (info["redis"]["up"], services.redis_pid()),
        "nodes": [(n["name"], n["up"]) for n in info["nodes"]],
    }


def test_ha_comes_and_goes_whole_beside_the_lab(lab: dict) -> None:  # type: ignore[type-arg]
    from labkit import ha

    subprocess.run([str(LAB), "up", "--ha"], check=True)
    before = _status()
    assert before["ha"]["up"], before["ha"]
    assert sorted(m["role"] for m in before["ha"]["members"]) == ["primary", "replica"]
    env = subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    assert "export VMCTL_HA_DATABASE_URL='postgresql://vmctl:" in env
    assert "127.0.0.1:15441,127.0.0.1:15442/vmctl?target_session_attrs=read-write" in env
    running = _ha_processes()
    assert len(running) >= 5  # etcd, 2 Patroni, 2 postmasters

    subprocess.run([str(LAB), "down", "--ha"], check=True)
    after = _status()
    assert after["ha"] == {"up": False}
    assert not ha.HA_DIR.exists()
    assert not (running & _ha_processes())
    assert not any(os.path.exists(f"/proc/{pid}") for pid in running)
    assert (
        "VMCTL_HA_DATABASE_URL"
        not in subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    )
    assert _rest_of_lab(after) == _rest_of_lab(before)  # nothing else was touched

    subprocess.run([str(LAB), "up", "--ha"], check=True)  # and back, fresh
    again = _status()
    assert again["ha"]["up"] and _rest_of_lab(again) == _rest_of_lab(before)
