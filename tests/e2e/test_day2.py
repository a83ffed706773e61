"""Day 2 on one real guest: stop, start, resize, reboot, snapshot and revert, the console log
and the audit log; each step checked on the node (virsh, files), in PostgreSQL and inside the
guest. Four boots in all: create, start after the resize, reboot, revert."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import leftovers, run_vmctl

pytestmark = pytest.mark.e2e

NAME = "e2e-day2"


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


def test_stop_start_resize_reboot_snapshot_console_on_one_guest(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
) -> None:
    env = vmctl_env
    key = f"{env['LAB_SSH_KEY']}.pub"
    run_vmctl(env, "delete", "--yes", NAME)  # left by an interrupted run, if any
    created = json.loads(
        _ok(env, "create", NAME, "--ram", "384", "--cpu", "1", "--disk", "1", "--ssh-key", key,
            "--wait", "-o", "json")
    )  # fmt: skip
    node = created["node"]
    try:
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

        # snapshot (running: through the agent's fs-freeze), write files, revert: they are gone.
        _ok(env, "snapshot", "create", NAME, "before")
        _inside(env, "sudo sh -c 'echo x > /var/tmp/after && echo x > /dataxfs/after && sync'")
        _ok(env, "snapshot", "revert", NAME, "before")
        assert _inside(env, "ls /var/tmp/after /dataxfs/after 2>/dev/null | wc -l").strip() == "0"
        assert _show(env)["state"] == "running"

        # the console log shows the boot and the login prompt
        log = _ok(env, "console", NAME, "--log")
        assert f"{NAME} login:" in log

        # and the audit log has every step, with who did it
        events = json.loads(_ok(env, "events", NAME, "--since", "1h", "-o", "json"))
        steps = [(e["action"], e["result"]) for e in events if e["action"] != "ip"]
        assert steps[-7:] == [
            ("create", "ok"),
            ("stop", "ok"),
            ("resize", "ok"),
            ("start", "ok"),
            ("reboot", "ok"),
            ("snapshot-create", "ok"),
            ("snapshot-revert", "ok"),
        ], steps
        assert {e["actor"] for e in events} == {events[0]["actor"]}
    finally:
        gone = run_vmctl(env, "delete", NAME, "--yes")
    assert gone.returncode == 0, gone.stderr
    assert leftovers(lab, env, [NAME]) == {}
