"""`vmctl reconcile` on the lab, with drift made by hand (no guest is booted): a marked domain
without a row, an orphan marked directory, a staging directory, a DHCP reservation in vmctl's
range, a stale Redis key, a `creating` row that no process holds, a row whose domain is shut off,
a row without a domain, and a domain without vmctl's mark that must never be touched.

The lab may hold other people's VMs and drift: every assertion looks at this test's names
(prefix `rec-`) only, and only on node2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LAB, REPO, run_vmctl

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO / "lab"))

NODE = "node2"
STORAGE = "/var/lib/libvirt/images/vmctl"
NETWORK = "vmnet"
ORPHAN_RES = ("52:54:00:ec:0a:01", "10.213.12.97")
NAMES = [
    "rec-dom",
    "rec-orphan",
    "rec-stg",
    "rec-res",
    "rec-cache",
    "rec-stuck",
    "rec-state",
    "rec-nodom",
    "rec-foreign",
]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The lab's environment (the lab is up already; this test never brings it up or down)."""
    import os

    out = subprocess.run([str(LAB), "env"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("the lab is not up")
    environment = dict(os.environ)
    for line in out.stdout.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        environment[key] = value.strip("'")
    return environment


@pytest.fixture(scope="module")
def hv(env: dict[str, str]) -> Any:
    import guests

    info = guests.status()
    node = next(n for n in info["nodes"] if n["name"] == NODE)
    return guests.hypervisor(node, info)


@pytest.fixture(scope="module")
def store(env: dict[str, str]) -> Iterator[Any]:
    from vmctl.adapters.store import PgStore

    with PgStore(env["VMCTL_DATABASE_URL"]) as s:
        yield s


def sh(hv: Any, script: str, *args: str) -> str:
    return str(hv.runner.run(["bash", "-c", script, "rec-test", *args]).stdout)


def define(hv: Any, name: str, mark: Any, mac: str) -> None:
    """Define (not start) a domain; with ``mark``, vmctl's ownership mark in its metadata."""
    from vmctl.core.domainxml import GuestSpec, render

    spec = GuestSpec(
        name=name,
        ram_mb=128,
        cpu=1,
        storage_dir=STORAGE,
        network=NETWORK,
        mac=mac,
        image="debian-12",
        virt_type="qemu",
        mark=mark,
    )
    hv.runner.put(render(spec).encode(), f"/tmp/{name}.xml")
    sh(hv, 'virsh -q define "$1" >/dev/null && rm -f "$1"', f"/tmp/{name}.xml")


def marked_dir(hv: Any, name: str, installation: str, record_id: int) -> None:
    sh(
        hv,
        'mkdir -p "$1" && printf "installation=%s\\nid=%s\\n" "$2" "$3" >"$1/.vmctl" && '
        'touch "$1/root.qcow2" "$1/seed.iso"',
        f"{STORAGE}/{name}",
        installation,
        str(record_id),
    )


def claim(store: Any, env: dict[str, str], name: str, mac: str) -> Any:
    from vmctl.core.inventory import load_inventory
    from vmctl.core.records import NewVm

    inventory = load_inventory(Path(env["VMCTL_INVENTORY"]))
    new = NewVm(name=name, ram_mb=128, cpu=1, disk_gb=1, root_gb=4, image="debian-12", mac=mac)
    return store.claim(
        new, lambda _usage: NODE, pool_of=lambda node: inventory.node(node).network.pool()
    )


def reconcile(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = run_vmctl(env, "reconcile", "--node", NODE, "-o", "json", *args)
    assert result.returncode in (0, 4), result.stderr
    return result.returncode, json.loads(result.stdout)


def mine(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """This test's items, by (kind, vm)."""
    return {(d["kind"], d["vm"]): d for d in items if (d["vm"] or "") in NAMES}


def cleanup(hv: Any, store: Any, env: dict[str, str]) -> None:
    import redis

    for name in NAMES:
        sh(
            hv,
            'virsh -q destroy "$1" >/dev/null 2>&1; virsh -q undefine "$1" >/dev/null 2>&1; '
            'rm -rf -- "$2/$1" "$2/.staging/$1".*; true',
            name,
            STORAGE,
        )
        store.delete(name)
    for scope in ("--live", "--config"):
        sh(
            hv,
            "virsh -q net-update vmnet delete ip-dhcp-host \"<host mac='$1' ip='$2'/>\" \"$3\" "
            ">/dev/null 2>&1; true",
            *ORPHAN_RES,
            scope,
        )
    redis.Redis.from_url(env["VMCTL_REDIS_URL"]).delete("vmctl:vm:rec-cache:node")


def test_reconcile_reports_and_repairs_each_kind_and_leaves_foreign_alone(
    env: dict[str, str], hv: Any, store: Any
) -> None:
    import redis

    from vmctl.core import hostkeys
    from vmctl.core.records import Mark

    installation = store.installation_id()
    rds = redis.Redis.from_url(env["VMCTL_REDIS_URL"], decode_responses=True)
    cleanup(hv, store, env)
    try:
        # A domain (shut off) with our mark whose row is gone, and its directory.
        define(
            hv, "rec-dom", Mark(installation, 999_001, "rec-dom", "rec-test"), hostkeys.new_mac()
        )
        marked_dir(hv, "rec-dom", installation, 999_001)
        # A marked directory with neither row nor domain (disks and seed of a dead create).
        marked_dir(hv, "rec-orphan", installation, 999_002)
        # A staging directory of a create that died.
        sh(hv, 'mkdir -p "$1"', f"{STORAGE}/.staging/rec-stg.abcd1234")
        # A DHCP reservation in vmctl's range that no row has.
        mac, ip = ORPHAN_RES
        for scope in ("--live", "--config"):
            sh(
                hv,
                "virsh -q net-update vmnet add-last ip-dhcp-host "
                "\"<host mac='$1' name='rec-res' ip='$2'/>\" \"$3\" >/dev/null",
                mac,
                ip,
                scope,
            )
        # A cache key for a VM that does not exist.
        rds.set("vmctl:vm:rec-cache:node", NODE)
        # A create that died after claiming its row (nobody holds its lock).
        claim(store, env, "rec-stuck", hostkeys.new_mac())
        # A row recorded running whose domain is shut off.
        state_mac = hostkeys.new_mac()
        row = claim(store, env, "rec-state", state_mac)
        store.set_state("rec-state", "running")
        define(hv, "rec-state", Mark(installation, row.id, "rec-state", "rec-test"), state_mac)
        marked_dir(hv, "rec-state", installation, row.id)
        # A row recorded stopped whose domain does not exist.
        claim(store, env, "rec-nodom", hostkeys.new_mac())
        store.set_state("rec-nodom", "stopped")
        # A domain defined by hand, without vmctl's mark.
        define(hv, "rec-foreign", None, hostkeys.new_mac())

        code, report = reconcile(env)
        found = mine(report["drift"])
        assert code == 4
        assert set(found) == {
            ("domain-without-row", "rec-dom"),
            ("orphan-dir", "rec-orphan"),
            ("orphan-staging", "rec-stg"),
            ("orphan-reservation", "rec-res"),
            ("stale-cache-key", "rec-cache"),
            ("stuck-creating", "rec-stuck"),
            ("wrong-state", "rec-state"),
            ("row-without-domain", "rec-nodom"),
        }, report["drift"]
        assert all(d["fixable"] for d in found.values())
        assert [f["subject"] for f in report["foreign"]].count("domain rec-foreign") == 1
        assert report["done"] == []
        assert "rec-dom" in hv.domains()  # a report changes nothing

        code, fixed = reconcile(env, "--fix")
        done = {(a["kind"], a["vm"]): a["result"] for a in fixed["done"] if a["vm"] in NAMES}
        assert done == {key: "fixed" for key in found}, fixed["done"]
        assert mine(fixed["drift"]) == {}

        # What was repaired, checked where it lives.
        domains = hv.domains()
        assert "rec-dom" not in domains
        assert "rec-foreign" in domains  # never touched
        assert "rec-state" in domains
        listing = sh(hv, 'ls -A "$1" "$1/.staging"', STORAGE).split()
        assert not {"rec-dom", "rec-orphan", "rec-stg.abcd1234"} & set(listing)
        for flag in ("", "--inactive"):
            xml = sh(hv, "virsh -q net-dumpxml vmnet $1", flag)
            assert ip not in xml and mac not in xml
        assert rds.get("vmctl:vm:rec-cache:node") is None
        rows = {r.name: r.state for r in store.list() if r.name in NAMES}
        assert rows == {"rec-state": "stopped", "rec-nodom": "error"}
        events = [e for e in store.events(vm="rec-stuck") if e["action"] == "reconcile"]
        assert events and events[0]["result"] == "ok"

        # Again: nothing of this test's is left; exit 0 unless someone else's drift is there.
        code, again = reconcile(env)
        assert mine(again["drift"]) == {}
        assert code == (4 if again["drift"] else 0)
        assert "rec-foreign" in hv.domains()
    finally:
        cleanup(hv, store, env)


def test_a_node_that_does_not_answer_exits_6(env: dict[str, str], tmp_path: Path) -> None:
    inventory = Path(env["VMCTL_INVENTORY"]).read_text()
    broken = tmp_path / "inventory.yaml"
    broken.write_text(inventory.replace("host: 10.213.0.12", "host: 10.213.0.254"))
    result = run_vmctl({**env, "VMCTL_INVENTORY": str(broken)}, "reconcile", "-o", "json")
    assert result.returncode == 6, result.stderr
    data = json.loads(result.stdout)
    assert [u["node"] for u in data["unreachable"]] == [NODE]
    assert not any(d["node"] == NODE for d in data["drift"])
    assert "node2 could not be surveyed" in result.stderr
