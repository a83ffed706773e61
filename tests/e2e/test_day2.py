"""Day 2 on one real guest (e2e-day2, shared by the two tests here, in order): stop, start,
resize, reboot, the console log and the audit log; then snapshots: taken while it runs (frozen
through its guest agent), reverted (files written after it are gone from / and the data disk),
listed, refused, deleted, through the API too, and none outlives the VM. Each step is checked on
the node (virsh, qemu-img, files), in PostgreSQL and inside the guest. Five boots in all."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest

from tests.conftest import leftovers, run_vmctl

pytestmark = pytest.mark.e2e

NAME = VM = "e2e-day2"
PROJECT = "e2e-day2"


def node_tags(lab: dict, node_name: str) -> dict[str, list[str]]:  # type: ignore[type-arg]
    """What the node's storage says each of the VM's disks holds (`qemu-img snapshot -l -U`
    of root.qcow2 and data.qcow2, or `rbd snap ls` of vmctl.NAME.root and .data), by kind."""
    import guests

    node = next(n for n in lab["nodes"] if n["name"] == node_name)
    hv = guests.hypervisor(node, lab, storage="inventory")
    try:
        found = hv.snapshots(VM)
    finally:
        hv.close()
    kinds = {"root.qcow2": "root", "data.qcow2": "data", f"vmctl.{VM}.root": "root"}
    kinds[f"vmctl.{VM}.data"] = "data"
    return {kinds[disk.rsplit("/", 1)[-1]]: tags for disk, tags in found.items()}


def rows(env: dict[str, str]) -> list[dict[str, Any]]:
    import psycopg

    with psycopg.connect(env["VMCTL_DATABASE_URL"]) as conn:
        found = conn.execute(
            """SELECT s.name, s.vm_state, s.quiesced FROM snapshots s JOIN vms v ON v.id = s.vm_id
               WHERE v.name = %s ORDER BY s.id""",
            (VM,),
        ).fetchall()
    return [{"name": n, "vm_state": st, "quiesced": q} for n, st, q in found]


def ssh(env: dict[str, str], command: str, timeout: float = 60) -> Any:
    return run_vmctl(env, "ssh", VM, "--", command, timeout=timeout)


def wait_ssh(env: dict[str, str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        proc = ssh(env, "cat /proc/sys/kernel/random/boot_id", timeout=30)
        if proc.returncode == 0:
            return str(proc.stdout.strip())
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(5)


def _node_run(lab: dict, node_name: str, *argv: str) -> str:  # type: ignore[type-arg]
    import guests

    node = next(n for n in lab["nodes"] if n["name"] == node_name)
    return guests.hypervisor(node, lab).runner.run(list(argv), check=False).stdout


def _ok(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    proc = run_vmctl(env, *args, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


def _show(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(_ok(env, "show", NAME, "-o", "json"))  # type: ignore[no-any-return]


def _inside(env: dict[str, str], command: str, timeout: float = 240) -> str:
    """Run ``command`` in the guest once SSH answers again (after a boot)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = run_vmctl(env, "ssh", NAME, "--", "-o", "ConnectTimeout=5", command, timeout=60)
        if proc.returncode == 0:
            return proc.stdout
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(3)


def _uptime(env: dict[str, str]) -> float:
    return float(_inside(env, "cat /proc/uptime").split()[0])


@pytest.fixture(scope="module")
def guest(lab: dict, vmctl_env: dict[str, str]) -> Iterator[dict[str, Any]]:  # type: ignore[type-arg]
    run_vmctl(vmctl_env, "delete", "--yes", NAME)  # left by an interrupted run, if any
    # node1 keeps disks in files: qcow2 internal snapshots (RBD ones: tests/e2e/test_rbd.py)
    create = ["create", NAME, "--node", "node1", "--ram", "384", "--cpu", "1", "--disk", "1"]
    create += ["--project", PROJECT]
    create += ["--ssh-key", f"{vmctl_env['LAB_SSH_KEY']}.pub", "--wait", "-o", "json"]
    proc = run_vmctl(vmctl_env, *create)
    try:
        assert proc.returncode == 0, proc.stderr
        yield json.loads(proc.stdout)
    finally:
        run_vmctl(vmctl_env, "delete", "--yes", NAME)
        assert leftovers(lab, vmctl_env, [NAME]) == {}


def test_stop_start_resize_reboot_console_events(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    guest: dict[str, Any],
) -> None:
    env = vmctl_env
    node = guest["node"]
    # The ownership mark: the domain's metadata and the VM directory's .vmctl file.
    xml = _node_run(lab, node, "virsh", "-q", "dumpxml", NAME)
    assert f"<vmctl:name>{NAME}</vmctl:name>" in xml and "<vmctl:installation>" in xml
    marker = _node_run(lab, node, "cat", f"/var/lib/libvirt/images/vmctl/{NAME}/.vmctl")
    assert marker.startswith("installation=") and "\nid=" in marker

    # stop: the guest shuts down on ACPI; libvirt and PostgreSQL agree.
    _ok(env, "stop", NAME, "--timeout", "120")
    assert _node_run(lab, node, "virsh", "-q", "domstate", NAME).strip() == "shut off"
    assert _show(env)["state"] == "stopped"

    # resize while stopped; a running VM and a shrinking disk are refused.
    shrink = run_vmctl(env, "resize", NAME, "--disk", "0")
    assert shrink.returncode == 2 and "disk" in shrink.stderr
    resized = json.loads(
        _ok(env, "resize", NAME, "--cpu", "2", "--ram", "768", "--disk", "2", "-o", "json")
    )
    assert (resized["cpu"], resized["ram_mb"], resized["disk_gb"]) == (2, 768, 2)

    # start: SSH works, and the guest sees the new sizes (the filesystem grew at boot).
    _ok(env, "start", NAME)
    assert _show(env)["state"] == "running"
    nproc, mem_kib, data_bytes = _inside(
        env,
        "cloud-init status --wait >/dev/null; nproc; awk '/MemTotal/{print $2}' "
        "/proc/meminfo; df -B1 --output=size /dataxfs | tail -1",
    ).split()
    assert int(nproc) == 2
    assert 0.8 * 768 * 1024 < int(mem_kib) <= 768 * 1024
    assert int(data_bytes) > 1.9 * 2**30  # XFS keeps a little for itself
    running = run_vmctl(env, "resize", NAME, "--ram", "512")
    assert running.returncode == 2 and "stop it first" in running.stderr

    # reboot: the guest comes back with a fresh uptime.
    before = _uptime(env)
    _ok(env, "reboot", NAME)
    deadline = time.monotonic() + 240
    while (after := _uptime(env)) >= before:
        assert time.monotonic() < deadline, "the guest did not reboot"
        time.sleep(3)
    assert after < before

    # the console log shows the boot and the login prompt
    log = _ok(env, "console", NAME, "--log")
    assert f"{NAME} login:" in log

    # and the audit log has every step, with who did it
    events = json.loads(_ok(env, "events", NAME, "--since", "1h", "-o", "json"))
    steps = [(e["action"], e["result"]) for e in events if e["action"] != "ip"]
    assert steps[-5:] == [
        ("create", "ok"),
        ("stop", "ok"),
        ("resize", "ok"),
        ("start", "ok"),
        ("reboot", "ok"),
    ], steps
    assert {e["actor"] for e in events} == {events[0]["actor"]}


def test_snapshot_revert_list_delete(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    guest: dict[str, Any],
) -> None:
    env = vmctl_env
    assert ssh(env, "systemctl is-active qemu-guest-agent").stdout.strip() == "active"

    # Taken while it runs, through the guest agent's fs-freeze; in PostgreSQL and both disks.
    made = run_vmctl(env, "snapshot", "create", VM, "clean", "-o", "json")
    assert made.returncode == 0, made.stderr
    snap = json.loads(made.stdout)
    assert (snap["vm"], snap["name"], snap["vm_state"], snap["quiesced"]) == (
        VM,
        "clean",
        "running",
        True,
    )
    assert rows(env) == [{"name": "clean", "vm_state": "running", "quiesced": True}]
    assert node_tags(lab, guest["node"]) == {"root": ["clean"], "data": ["clean"]}
    # the guest was thawed: it writes again
    assert ssh(env, "sudo touch /thawed && echo ok").stdout.strip() == "ok"

    # Refusals: a duplicate name (exit 2), an unknown snapshot (exit 3), a bad name (exit 2).
    dup = run_vmctl(env, "snapshot", "create", VM, "clean")
    assert dup.returncode == 2 and "already" in dup.stderr
    for verb in ("revert", "delete"):
        unknown = run_vmctl(env, "snapshot", verb, VM, "nope")
        assert unknown.returncode == 3, unknown.stderr
    assert run_vmctl(env, "snapshot", "create", VM, "Bad_Name").returncode == 2

    # Files written after the snapshot, in / and on the data disk, are gone after the revert.
    before = wait_ssh(env)
    wrote = ssh(env, "sudo touch /after-root /dataxfs/after-data && sync && echo ok")
    assert wrote.stdout.strip() == "ok", wrote.stderr
    reverted = run_vmctl(env, "snapshot", "revert", VM, "clean")
    assert reverted.returncode == 0, reverted.stderr
    shown = json.loads(run_vmctl(env, "show", VM, "-o", "json").stdout)
    assert shown["state"] == "running"
    after = wait_ssh(env)
    assert after != before  # a new boot
    look = ssh(env, "ls /after-root /thawed /dataxfs/after-data 2>&1; true")
    assert look.stdout.count("No such file or directory") == 3, look.stdout
    assert ssh(env, "findmnt -no FSTYPE /dataxfs").stdout.strip() == "xfs"

    listed = run_vmctl(env, "snapshot", "list", VM, "-o", "json")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["clean"]
    table = run_vmctl(env, "snapshot", "list", VM).stdout
    assert "clean" in table and "SNAPSHOT" in table

    # The API (in-process, this tree's routes) with a token of the VM's project.
    api_checks(env)

    deleted = run_vmctl(env, "snapshot", "delete", VM, "clean")
    assert deleted.returncode == 0, deleted.stderr
    assert rows(env) == []
    assert node_tags(lab, guest["node"]) == {"root": [], "data": []}

    # Every operation is in the event log.
    events = json.loads(run_vmctl(env, "events", VM, "-o", "json").stdout)
    done = [(e["action"], e["result"]) for e in events if e["action"].startswith("snapshot-")]
    for expected in [
        ("snapshot-create", "ok"),
        ("snapshot-create", "failed"),
        ("snapshot-revert", "ok"),
        ("snapshot-delete", "ok"),
    ]:
        assert expected in done

    # A snapshot left on the VM goes with it.
    assert run_vmctl(env, "snapshot", "create", VM, "last").returncode == 0
    assert run_vmctl(env, "delete", "--yes", VM).returncode == 0
    assert rows(env) == []
    assert leftovers(lab, env, [VM]) == {}


def api_checks(env: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from vmctl import wiring
    from vmctl.api.app import create_app
    from vmctl.wiring.settings import load

    with patch.dict(os.environ, env):  # the lab's settings, as the CLI gets them
        settings = load({})
    tokens = wiring.token_service(settings)
    token_id, token = tokens.create(PROJECT, "snapshot e2e")
    try:
        opened: list[Any] = []

        def services() -> Any:
            opened.append(wiring.services(settings))
            return opened[-1]

        app = create_app(services, logging.getLogger("snap-e2e"))
        client = TestClient(app)
        auth = {"Authorization": f"Bearer {token}"}
        base = f"/api/v1/vm/{VM}/snapshots"
        listed = client.get(base, headers=auth)
        assert listed.status_code == 200 and [s["name"] for s in listed.json()] == ["clean"]
        made = client.post(base, headers=auth, json={"name": "api"})
        assert made.status_code == 201, made.text
        assert made.json()["quiesced"] is True
        assert client.post(base, headers=auth, json={"name": "api"}).status_code == 409
        assert client.post(f"{base}/nope/revert", headers=auth).status_code == 404
        assert client.delete(f"{base}/api", headers=auth).status_code == 204
        assert client.delete(f"{base}/api", headers=auth).status_code == 404
        assert client.get("/api/v1/vm/nobody-here/snapshots", headers=auth).status_code == 404
        paths = client.get("/openapi.json").json()["paths"]
        assert {"get", "post"} <= set(paths["/api/v1/vm/{name}/snapshots"])
    finally:
        tokens.revoke(token_id)
        for svc in opened:
            svc.vms.store.close()  # type: ignore[attr-defined]
