"""Shared fixtures. Lab fixtures bring the lab up (idempotent) and share booted guests."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab" / "lab"
sys.path.insert(0, str(REPO / "lab"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `lab_teardown` take the lab down: run them last."""
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_teardown: takes the lab down; runs last")


@pytest.fixture(scope="session")
def lab() -> dict:  # type: ignore[type-arg]
    import guests

    subprocess.run([str(LAB), "up"], check=True)
    info = guests.status()
    assert info["running"], info
    return info


@pytest.fixture(scope="session")
def guest_known_hosts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "known_hosts"
    path.touch()
    return path


@pytest.fixture(scope="session")
def booted(lab: dict, guest_known_hosts: Path) -> Iterator[list]:  # type: ignore[type-arg]
    """One guest on each of the first two nodes (one keeps VM disks in files, the other in Ceph),
    booted concurrently and shared by every test that only looks."""
    import guests

    made = []
    try:
        for node in lab["nodes"][:2]:
            made.append(guests.boot(lab, node, f"t-{node['name']}", ram_mb=384, cpu=1, data_gb=1))
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(lambda g: guests.wait_ssh(g, lab, guest_known_hosts, 300), made))
        yield made
    finally:
        from labkit import config

        if config.STATE_FILE.exists():  # else the lab_teardown test removed the lab already
            for guest in made:
                guests.delete(guest)


@pytest.fixture(scope="session")
def vmctl_env(lab: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """The environment `lab/lab env` prints, for running vmctl against the lab."""
    import os

    out = subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value.strip("'")
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    return env


def lab_daemons_up() -> None:
    """The lab's watch-ip (serving its metrics) and both API replicas running, whatever a test
    before stopped or restarted otherwise (each start is a no-op when it runs already)."""
    from labkit import api as lab_api
    from labkit import cli, watcher

    watcher.start(cli.vmctl_settings())
    lab_api.start(cli.vmctl_settings())


def run_vmctl(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "vmctl"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def eventually(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """``check()``'s first true result, asked every 0.5 s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)


_HYPERVISORS: dict[str, object] = {}


def leftovers(lab: dict, env: dict[str, str], names: list[str]) -> dict[str, list[str]]:  # type: ignore[type-arg]
    """Everything of these VMs that exists anywhere: domains, VM directories, DHCP reservations,
    images in the lab's Ceph pool (with their snapshots and clones), rows, cache keys."""
    import guests
    import redis

    from vmctl.adapters.store import PgStore

    found: dict[str, list[str]] = {
        "domains": [],
        "dirs": [],
        "rows": [],
        "cache": [],
        "staging": [],
        "reservations": [],
    }
    for node in lab["nodes"]:
        if node["name"] not in _HYPERVISORS:
            _HYPERVISORS[node["name"]] = guests.hypervisor(node, lab)
        hv = _HYPERVISORS[node["name"]]
        runner = hv.runner
        domains = hv.domains()
        found["domains"] += [f"{node['name']}:{d}" for d in domains if d in names]
        listing = runner.run(["ls", "-A", guests.STORAGE]).stdout.split()
        found["dirs"] += [f"{node['name']}:{d}" for d in listing if d in names]
        staging = runner.run(["ls", "-A", f"{guests.STORAGE}/.staging"], check=False).stdout
        # a staging directory is NAME.RANDOM: only this test's names count (a used lab may hold
        # someone else's, e.g. from an interrupted create)
        found["staging"] += [
            f"{node['name']}:{s}" for s in staging.split() if s.rpartition(".")[0] in names
        ]
        network = runner.run(["virsh", "-q", "net-dumpxml", node["guest_network"]]).stdout
        found["reservations"] += [f"{node['name']}:{n}" for n in names if f"name='{n}'" in network]
    found["images"] = [
        f"{pool}/{image}"
        for pool, image in rbd_images()
        if image.count(".") == 2 and image.split(".")[1] in names
    ]
    with PgStore(env["VMCTL_DATABASE_URL"]) as store:
        found["rows"] = [vm.name for vm in store.list() if vm.name in names]
    client = redis.Redis.from_url(env["VMCTL_REDIS_URL"])
    found["cache"] = [
        k.decode() for k in client.keys("vmctl:*") if any(f":{n}:" in k.decode() for n in names)
    ]
    return {k: v for k, v in found.items() if v}


def rbd(*args: str) -> str:
    """`rbd` as the lab's Ceph admin (from the manager)."""
    from labkit import ceph

    proc = subprocess.run(
        ["rbd", "-c", str(ceph.CONF), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def rbd_images() -> list[tuple[str, str]]:
    """(pool, image) of every image in the lab's pool, snapshots as IMAGE@SNAP too."""
    from labkit import ceph

    found = []
    for line in json.loads(rbd("ls", "-l", "--format", "json", ceph.POOL) or "[]"):
        name = line["image"] + (f"@{line['snapshot']}" if "snapshot" in line else "")
        found.append((ceph.POOL, name))
    return found


@contextmanager
def fresh_schema(base_url: str) -> Iterator[str]:
    """A new, empty schema of the lab's database, as a conninfo whose search_path makes it the only
    one its connections see; dropped (CASCADE) on leaving. The lab's `vmctl` role may not CREATE
    DATABASE but owns database `vmctl`, so this is how tests get a database of their own."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    schema = f"vmctl_test_{secrets.token_hex(6)}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_conninfo(base_url, options=f"-csearch_path={schema}")
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
