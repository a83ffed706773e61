"""vmctl create / list / show / delete on the lab's real nodes, booting real guests."""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import leftovers, run_vmctl

pytestmark = pytest.mark.e2e


def test_create_wait_login_list_delete(
    lab: dict,
    vmctl_env: dict[str, str],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    from vmctl.adapters.store import PgStore

    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        earlier = len(store.events("e2e-web-1"))  # the log keeps earlier runs' events
    extra = tmp_path / "user-data"
    extra.write_text(
        "#cloud-config\nwrite_files:\n  - path: /etc/vmctl-e2e\n    content: from --user-data\n"
    )
    create = ["create", "e2e-web-1", "--ram", "512", "--cpu", "2", "--disk", "2"]
    create += ["--user-data", str(extra), "--ssh-key", f"{vmctl_env['LAB_SSH_KEY']}.pub"]
    proc = run_vmctl(vmctl_env, *create, "--wait", "--timeout", "300", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    vm = json.loads(proc.stdout)
    try:
        node = next(n for n in lab["nodes"] if n["name"] == vm["node"])
        assert vm["state"] == "running" and vm["ip_state"] == "confirmed"
        assert ipaddress.IPv4Address(vm["ip"]) in ipaddress.IPv4Network(node["guest_subnet"])
        assert (vm["ram_mb"], vm["cpu"], vm["disk_gb"]) == (512, 2, 2)

        # Inside the guest: what was asked for (host key verified against the one vmctl made,
        # handed to ssh without any known_hosts file: none appears at the old predictable path).
        predictable = Path(tempfile.gettempdir()) / f"vmctl-known_hosts-{os.getuid()}"
        predictable.unlink(missing_ok=True)
        inside = run_vmctl(
            vmctl_env,
            "ssh",
            "e2e-web-1",
            "--",
            "hostname; nproc; "
            "awk '/MemTotal/{print $2}' /proc/meminfo; lsblk -bdno SIZE /dev/vdb; "
            "findmnt -no FSTYPE,LABEL /dataxfs",
        )
        assert inside.returncode == 0, inside.stderr
        assert not predictable.exists()
        hostname, cpus, mem_kib, data_bytes, fstype, label = inside.stdout.split()
        assert hostname == "e2e-web-1"
        assert int(cpus) == 2
        assert 0.8 * 512 * 1024 < int(mem_kib) <= 512 * 1024
        assert int(data_bytes) == 2 * 2**30
        assert (fstype, label) == ("xfs", "DATA_XFS")
        # --user-data was merged after vmctl's own cloud-config.
        extra_out = run_vmctl(
            vmctl_env,
            "ssh",
            "e2e-web-1",
            "--",
            "cloud-init status --wait >/dev/null; cat /etc/vmctl-e2e; echo; "
            "systemctl is-active qemu-guest-agent",
        )
        assert extra_out.stdout.split() == ["from", "--user-data", "active"], extra_out.stderr

        listed = json.loads(run_vmctl(vmctl_env, "list", "-o", "json").stdout)
        assert [(v["name"], v["ip"]) for v in listed if v["name"] == "e2e-web-1"] == [
            ("e2e-web-1", vm["ip"])
        ]
        table = run_vmctl(vmctl_env, "list").stdout
        assert "e2e-web-1" in table and vm["ip"] in table
        shown = yaml.safe_load(run_vmctl(vmctl_env, "show", "e2e-web-1", "-o", "yaml").stdout)
        assert shown["name"] == "e2e-web-1" and shown["node"] == vm["node"]
        assert leftovers(lab, vmctl_env, ["e2e-web-1"]).get("cache") == ["vmctl:vm:e2e-web-1:node"]
    finally:
        gone = run_vmctl(vmctl_env, "delete", "e2e-web-1", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert leftovers(lab, vmctl_env, ["e2e-web-1"]) == {}
    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        steps = [(e["action"], e["result"]) for e in store.events("e2e-web-1")[earlier:]]
    # The address was recorded once, by the watcher, between create and delete.
    assert steps == [("create", "started"), ("create", "ok"), ("ip", "ok"), ("delete", "ok")]


def _inventory_with(lab_inventory: Path, tmp_path: Path, change: dict) -> Path:  # type: ignore[type-arg]
    data = yaml.safe_load(lab_inventory.read_text())
    for node in data["nodes"]:
        for key, value in change.get(node["name"], {}).items():
            node[key] = value
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_failing_node_script_leaves_nothing(
    lab: dict,
    vmctl_env: dict[str, str],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    # The domain is defined, then `virsh start` fails: its network does not exist on the node.
    broken = _inventory_with(
        Path(vmctl_env["VMCTL_INVENTORY"]),
        tmp_path,
        {
            "node1": {
                "network": {
                    "name": "no-such-net",
                    "subnet": "10.213.11.0/24",
                    "gateway": "10.213.11.1",
                    "managed": True,
                }
            }
        },
    )
    env = {**vmctl_env, "VMCTL_INVENTORY": str(broken)}
    proc = run_vmctl(env, "create", "e2e-broken", "--node", "node1")
    assert proc.returncode == 1
    assert "on node node1" in proc.stderr and "no-such-net" in proc.stderr
    assert leftovers(lab, vmctl_env, ["e2e-broken"]) == {}
    from vmctl.adapters.store import PgStore

    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        events = store.events("e2e-broken")
    assert [(e["action"], e["result"]) for e in events][-1] == ("create", "failed")
    assert "no-such-net" in events[-1]["detail"]["cause"]


def test_a_missing_base_image_on_the_node_leaves_nothing(
    lab: dict,
    vmctl_env: dict[str, str],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    data = yaml.safe_load(Path(vmctl_env["VMCTL_INVENTORY"]).read_text())
    data["images"]["debian-12"]["path"] = "/var/lib/libvirt/images/base/missing.qcow2"
    broken = tmp_path / "inventory.yaml"
    broken.write_text(yaml.safe_dump(data))
    run_vmctl(vmctl_env, "delete", "--yes", "e2e-nobase")  # left by an interrupted run, if any
    # on node1, whose disks are files (on an RBD node the base image is in the pool, not a path)
    env = {**vmctl_env, "VMCTL_INVENTORY": str(broken)}
    proc = run_vmctl(env, "create", "e2e-nobase", "--node", "node1")
    assert proc.returncode == 1
    assert "exited 3" in proc.stderr and "missing.qcow2 does not exist" in proc.stderr
    # the script is named by its name and arguments, not by its whole text
    assert "`create-vm.sh --name e2e-nobase " in proc.stderr
    assert "set -Eeuo pipefail" not in proc.stderr
    assert leftovers(lab, vmctl_env, ["e2e-nobase"]) == {}


def test_everything_works_with_redis_down(lab: dict, vmctl_env: dict[str, str]) -> None:  # type: ignore[type-arg]
    env = {**vmctl_env, "VMCTL_REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing listens there
    made = run_vmctl(env, "create", "e2e-noredis")
    try:
        assert made.returncode == 0, made.stderr
        assert made.stderr.count("warning: Redis at 127.0.0.1:1 is unavailable") == 1
        listed = run_vmctl(env, "list", "--json")
        assert listed.returncode == 0
        assert "e2e-noredis" in [vm["name"] for vm in json.loads(listed.stdout)]
        assert listed.stderr.count("warning:") <= 1
        for verb in (["stop", "--timeout", "5", "--force"], ["start"], ["events"]):
            done = run_vmctl(env, *verb, *(["e2e-noredis"]))
            assert done.returncode == 0, (verb, done.stderr)
            assert done.stderr.count("warning:") <= 1, done.stderr
    finally:
        gone = run_vmctl(env, "delete", "e2e-noredis", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert gone.stderr.count("warning: Redis") == 1
    assert leftovers(lab, vmctl_env, ["e2e-noredis"]) == {}


def test_ten_concurrent_creates_for_room_for_five(
    lab: dict,
    vmctl_env: dict[str, str],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    small = _room_for_five(lab, vmctl_env, tmp_path)
    env = {**vmctl_env, "VMCTL_INVENTORY": str(small)}
    names = [f"e2e-race-{i}" for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(lambda n: run_vmctl(env, "create", n, "--ram", "256", "-o", "json"), names)
        )
    try:
        ok = [json.loads(r.stdout) for r in results if r.returncode == 0]
        refused = [r for r in results if r.returncode != 0]
        assert len(ok) == 5, [r.stderr for r in refused]
        assert all(r.returncode == 5 and "no node has room" in r.stderr for r in refused)
        # Every VM got its own reserved address, even though the creates raced.
        addresses = [(vm["node"], vm["ip"]) for vm in ok]
        assert all(vm["ip_state"] == "expected" for vm in ok)
        assert len(set(addresses)) == len(addresses) == 5
        per_node: dict[str, int] = {}
        for vm in ok:
            per_node[vm["node"]] = per_node.get(vm["node"], 0) + vm["ram_mb"]
        assert per_node == {"node1": 768, "node2": 512}
    finally:
        made = [vm["name"] for vm in ok]
        if made:
            run_vmctl(env, "delete", "--yes", *made)
    assert leftovers(lab, vmctl_env, names) == {}


def test_create_count_four_for_room_for_two_side_by_side(
    lab: dict,
    vmctl_env: dict[str, str],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    """`create --count 4` with room for two, one per node: the VMs are made side by side in one
    process (its threads share one SSH connection per node), two are refused and leave nothing,
    the two made get their addresses (their waits overlap), and the summary names the failures.
    (Two boots, not five: five emulated guests booting at once on 2 cores took 3.5-5 min to
    their leases, against a 300 s timeout.)"""
    env = {**vmctl_env, "VMCTL_INVENTORY": str(_room_for(lab, vmctl_env, tmp_path, 1, 1))}
    names = [f"e2e-count-{i}" for i in range(1, 5)]
    create = ["create", "e2e-count", "--count", "4", "--ram", "256", "--wait-for", "ip"]
    proc = run_vmctl(env, *create, "--timeout", "300", "-o", "json")
    made = [vm["name"] for vm in json.loads(proc.stdout or "[]")]
    try:
        assert proc.returncode == 1, proc.stderr
        assert len(made) == 2, proc.stderr
        refused = sorted(set(names) - set(made))
        assert f"vmctl: 2 of 4 VMs failed to create ({', '.join(refused)})." in proc.stderr
        assert proc.stderr.count("failed: no node has room") == 2
        vms = json.loads(proc.stdout)
        assert all(vm["ip_state"] == "confirmed" for vm in vms)  # waited for, each of them
        assert sorted(vm["node"] for vm in vms) == ["node1", "node2"]
        # both waits were under way before either address came: they overlapped
        lines = proc.stderr.splitlines()
        first_address = min(i for i, line in enumerate(lines) if ": address " in line)
        waiting = [i for i, line in enumerate(lines) if ": waiting for ip" in line]
        assert len(waiting) == 2 and max(waiting) < first_address, proc.stderr
        assert leftovers(lab, vmctl_env, refused) == {}
    finally:
        if made:
            run_vmctl(env, "delete", "--yes", *made)
    assert leftovers(lab, vmctl_env, names) == {}


def _room_for_five(lab: dict, vmctl_env: dict[str, str], tmp_path: Path) -> Path:  # type: ignore[type-arg]
    """Room for 3 VMs of 256 MiB on node1, 2 on node2, none elsewhere."""
    return _room_for(lab, vmctl_env, tmp_path, 3, 2)


def _room_for(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    tmp_path: Path,
    on_node1: int,
    on_node2: int,
) -> Path:
    """An inventory in which 256 MiB VMs find room for ``on_node1`` on node1, ``on_node2`` on
    node2 and none on any other node, on top of what a used lab holds already (someone's own VMs
    take their share)."""
    used = {n["name"]: n for n in json.loads(run_vmctl(vmctl_env, "nodes", "-o", "json").stdout)}
    return _inventory_with(
        Path(vmctl_env["VMCTL_INVENTORY"]),
        tmp_path,
        {
            name: {
                "capacity": {
                    "cpu": used[name]["cpu_used"] + 8,
                    "ram_mb": used[name]["ram_mb_used"] + room,
                    "disk_gb": used[name]["disk_gb_used"] + 100,
                }
            }
            for name, room in [("node1", 256 * on_node1), ("node2", 256 * on_node2)]
            + [(n["name"], 128) for n in lab["nodes"][2:]]
        },
    )
