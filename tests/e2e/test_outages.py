"""When a node, PostgreSQL or a concurrent operation gets in the way: a node whose sshd stops
during a create or a delete, PostgreSQL stopped, and two operations on one VM at once."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import REPO, leftovers, run_vmctl

pytestmark = pytest.mark.e2e

VMCTL = str(REPO / ".venv" / "bin" / "vmctl")


def _lab_node(name: str):  # type: ignore[no-untyped-def]
    from labkit.config import Node

    return Node(int(name.removeprefix("node")))


def _state(env: dict[str, str], name: str) -> str | None:
    proc = run_vmctl(env, "show", name, "-o", "json")
    return json.loads(proc.stdout)["state"] if proc.returncode == 0 else None


def _gone_by_itself(env: dict[str, str], name: str, timeout: float = 90) -> None:
    """The lab's `vmctl watch-ip` completes a delete its node held up, within seconds of the
    node answering again (it looks every 10 s); no command is needed. Then reconcile has
    nothing to say about the VM."""
    deadline = time.monotonic() + timeout
    while _state(env, name) is not None:
        assert time.monotonic() < deadline, f"{name} is still {_state(env, name)}"
        time.sleep(2)
    report = run_vmctl(env, "reconcile", "--node", "node2", "-o", "json")
    assert report.returncode in (0, 4), report.stderr
    assert [d for d in json.loads(report.stdout)["drift"] if d["vm"] == name] == []


def test_sshd_stopped_during_a_create_then_during_a_delete(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
) -> None:
    from labkit import nodes

    node = _lab_node("node2")
    name = "e2e-nodedown"
    run_vmctl(vmctl_env, "delete", "--yes", name)  # left by an interrupted run, if any
    proc = subprocess.Popen(
        [VMCTL, "create", name, "--node", "node2", "--ram", "384", "--disk", "1"],
        env=vmctl_env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "creating disks and seed" in line:
                nodes.stop_sshd(node)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=120)
        # The create fails as "unreachable", and nothing is recorded as running.
        assert proc.returncode == 6, rest
        assert "node2" in rest
        assert _state(vmctl_env, name) in (None, "deleting")
    finally:
        nodes.start_sshd(node)
    _gone_by_itself(vmctl_env, name)
    assert leftovers(lab, vmctl_env, [name]) == {}

    # A delete while the node is away: marked deleting, exit 6, finished when it is back.
    made = run_vmctl(vmctl_env, "create", name, "--node", "node2", "--ram", "384", "--disk", "1")
    assert made.returncode == 0, made.stderr
    nodes.stop_sshd(node)
    try:
        gone = run_vmctl(vmctl_env, "delete", "--yes", name)
        assert gone.returncode == 6, gone.stderr
        assert "stays recorded as deleting" in gone.stderr
        assert _state(vmctl_env, name) == "deleting"
    finally:
        nodes.start_sshd(node)
    _gone_by_itself(vmctl_env, name)
    assert leftovers(lab, vmctl_env, [name]) == {}


def test_with_postgresql_stopped_every_command_fails_fast_and_touches_no_node(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
) -> None:
    from labkit import services

    name = "e2e-nopg"
    services.stop_postgres()
    try:
        for args in (
            ["create", name],
            ["list"],
            ["show", name],
            ["stop", name],
            ["start", name],
            ["resize", name, "--ram", "512"],
            ["delete", "--yes", name],
            ["events"],
            ["reconcile"],
        ):
            started = time.monotonic()
            proc = run_vmctl(vmctl_env, *args, timeout=30)
            took = time.monotonic() - started
            assert proc.returncode == 6, (args, proc.stderr)
            assert "PostgreSQL" in proc.stderr and "Traceback" not in proc.stderr, args
            assert took < 5.5, (args, took)  # 5 s, and the interpreter's start-up
    finally:
        services.ensure_postgres()
    assert leftovers(lab, vmctl_env, [name]) == {}


def test_two_operations_on_one_vm_never_interleave(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
) -> None:
    from datetime import UTC, datetime

    name = "e2e-locks"
    run_vmctl(vmctl_env, "delete", "--yes", name)  # left by an interrupted run, if any
    began = datetime.now(UTC).isoformat()  # events outlive VMs: an earlier run's are older
    made = run_vmctl(vmctl_env, "create", name, "--ram", "384", "--disk", "1")
    assert made.returncode == 0, made.stderr
    try:
        # A stop that takes its time (the guest is still booting: ACPI may go unheard, so
        # --force ends it after 15 s) holds the VM; meanwhile...
        stop = subprocess.Popen(
            [VMCTL, "stop", name, "--timeout", "15", "--force"],
            env=vmctl_env,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)
        # ...an operation that will not wait is refused as busy, naming the holder (exit 8)...
        busy = run_vmctl(vmctl_env, "reboot", name, "--lock-timeout", "1")
        assert busy.returncode == 8, busy.stderr
        assert "busy" in busy.stderr and f"stop {name}" in busy.stderr
        # ...and one that waits runs once the stop is over.
        start = run_vmctl(vmctl_env, "start", name, "--lock-timeout", "60")
        assert stop.wait(timeout=60) == 0, stop.stderr.read() if stop.stderr else ""
        assert start.returncode == 0, start.stderr
        events = json.loads(
            run_vmctl(vmctl_env, "events", name, "--since", began, "-o", "json").stdout
        )
        steps = [(e["action"], e["result"]) for e in events if e["action"] in ("stop", "start")]
        assert steps == [("stop", "ok"), ("start", "ok")]
        assert _state(vmctl_env, name) == "running"
    finally:
        gone = run_vmctl(vmctl_env, "delete", "--yes", name)
    assert gone.returncode == 0, gone.stderr
    assert leftovers(lab, vmctl_env, [name]) == {}
