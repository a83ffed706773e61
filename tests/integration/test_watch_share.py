"""Several `vmctl watch-ip --share` dividing the lab's nodes through PostgreSQL (issue 16).

The watchers run against a schema of their own in the lab's database (no other watcher sees its
VMs, and the lab's own watcher is not one of them), without Redis. A guest's DHCP exchange is
played by busybox's udhcpc on the node's guest bridge (guests.dhcp_exchange): no boot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, eventually, fresh_schema
from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.core import hostkeys
from vmctl.core.records import NewVm

pytestmark = pytest.mark.integration


@pytest.fixture
def schema_url(vmctl_env: dict[str, str]) -> Iterator[str]:
    with fresh_schema(vmctl_env["VMCTL_DATABASE_URL"]) as url:
        db.upgrade(url)
        yield url


class Watchers:
    """`vmctl watch-ip --share` processes of this test, by their heartbeat names."""

    def __init__(self, env: dict[str, str], url: str, logs: Path) -> None:
        self.env = {**env, "VMCTL_DATABASE_URL": url}
        self.env.pop("VMCTL_REDIS_URL", None)
        self.url = url
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> str:
        log = open(self.logs / f"watcher-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "vmctl"),
                "watch-ip",
                "--share",
                "--reconcile-every",
                "0",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        name = f"watch-ip@{os.uname().nodename}:{proc.pid}"
        self.procs[name] = proc
        return name

    def held(self) -> dict[str, set[str]]:
        """What each live watcher of this test said it watches (its last heartbeat)."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT process, detail FROM heartbeats WHERE kind = 'watch-ip'"
            ).fetchall()
        live = {name for name, p in self.procs.items() if p.poll() is None}
        return {
            process: set((detail if isinstance(detail, dict) else json.loads(detail))["held"])
            for process, detail in rows
            if process in live
        }

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _divided(held: dict[str, set[str]], nodes: set[str], watchers: int) -> bool:
    """Every node watched by exactly one of ``watchers`` live watchers, each with its share."""
    if len(held) != watchers or not all(held.values()):
        return False
    together = [node for nodes_held in held.values() for node in nodes_held]
    share = -(-len(nodes) // watchers)
    return sorted(together) == sorted(nodes) and all(len(h) <= share for h in held.values())


def test_when_one_of_two_watchers_dies_the_other_takes_its_nodes(
    lab: dict[str, Any], vmctl_env: dict[str, str], schema_url: str, tmp_path: Path
) -> None:
    import guests

    nodes = {n["name"]: n for n in lab["nodes"]}
    watchers = Watchers(vmctl_env, schema_url, tmp_path)
    try:
        first, second = watchers.start(), watchers.start()
        held = eventually(
            "two watchers divide the nodes",
            lambda: (h := watchers.held()) and _divided(h, set(nodes), 2) and h,
            timeout=60,
        )
        victim = first if len(held[first]) >= len(held[second]) else second
        survivor = second if victim == first else first
        orphan = sorted(held[victim])[0]

        watchers.procs[victim].send_signal(signal.SIGKILL)
        watchers.procs[victim].wait(timeout=10)

        # A new VM on a node the dead watcher had: its address is recorded by the survivor.
        mac = hostkeys.new_mac()
        name = f"share-{mac[-5:].replace(':', '')}"
        with PgStore(schema_url) as store:
            store.claim(NewVm(name, 256, 1, 1, 4, "debian-12", mac), lambda _u: orphan)
            hv = guests.hypervisor(nodes[orphan], lab)
            ip = guests.dhcp_exchange(hv, nodes[orphan], mac)
            assert ip is not None, "no DHCP lease on the node's guest network"
            recorded = eventually(
                f"{name}'s address {ip} recorded",
                lambda: (vm := store.get(name)).ip_state == "confirmed" and vm,
                timeout=15,
            )
            assert recorded.ip == ip
            events = store.events(name)
        assert [e["action"] for e in events if e["action"] == "ip"] == ["ip"]
        assert eventually(
            "the survivor holds every node",
            lambda: watchers.held().get(survivor) == set(nodes),
            timeout=15,
        )
        log = (tmp_path / f"watcher-{list(watchers.procs).index(survivor)}.log").read_text()
        assert f'msg="node taken" node={orphan}' in log

        # A third watcher joins: the nodes are divided again, none watched twice.
        watchers.start()
        eventually(
            "two live watchers divide the nodes again",
            lambda: _divided(watchers.held(), set(nodes), 2),
            timeout=30,
        )
    finally:
        watchers.stop()
