"""VMs on Ceph RBD, on the lab's real cluster: two VMs cloned from the same base on two nodes
(node2 and node3 share the pool) both boot; one gets a file on its data disk and a snapshot, and
moves to the other node while it runs, as a job whose worker is killed half-way (the file, the
snapshot and SSH are there after, at the new node's address; PostgreSQL and Redis say the new
node; nothing is left on the old one; reconcile is clean); the
other's move fails because its target lacks the Ceph secret, and it keeps running where it was;
deleting both leaves no image, snapshot or clone of theirs in the pool and no secret but the
node's own. Four boots, two of them at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, leftovers, rbd, rbd_images, run_vmctl
from tests.e2e.test_jobs import VMCTL, Worker, job_row

pytestmark = pytest.mark.e2e

A, B = "e2e-rbd-a", "e2e-rbd-b"
SECRET = "3c1b9a52-6f0e-4c55-9a8e-7a6c2f1d0b11"


def _ok(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    proc = run_vmctl(env, *args, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


def _show(env: dict[str, str], name: str) -> dict[str, Any]:
    return json.loads(_ok(env, "show", name, "-o", "json"))  # type: ignore[no-any-return]


def _inside(env: dict[str, str], name: str, command: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        proc = run_vmctl(env, "ssh", name, "--", "-o", "ConnectTimeout=5", command, timeout=60)
        if proc.returncode == 0:
            return proc.stdout
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(3)


def _node(lab: dict, name: str, *argv: str) -> str:  # type: ignore[type-arg]
    import guests

    node = next(n for n in lab["nodes"] if n["name"] == name)
    return guests.hypervisor(node, lab).runner.run(list(argv), check=False).stdout


def _ours(images: list[tuple[str, str]]) -> list[str]:
    return sorted(i for _, i in images if i.startswith((f"vmctl.{A}.", f"vmctl.{B}.")))


@pytest.fixture(scope="module")
def vms(lab: dict, vmctl_env: dict[str, str]) -> Iterator[dict[str, dict[str, Any]]]:  # type: ignore[type-arg]
    env = vmctl_env
    if [n["storage"] for n in lab["nodes"][1:3]] != ["rbd", "rbd"]:
        pytest.skip("the lab's node2 and node3 do not keep VM disks in Ceph")
    for name in (A, B):
        run_vmctl(env, "delete", "--yes", name)  # left by an interrupted run, if any

    def create(name: str, node: str) -> Any:
        args = ["create", name, "--node", node, "--ram", "384", "--disk", "1"]
        args += ["--ssh-key", f"{env['LAB_SSH_KEY']}.pub", "--wait", "-o", "json"]
        return run_vmctl(env, *args, timeout=900)

    try:
        with ThreadPoolExecutor(2) as pool:
            made = list(pool.map(create, (A, B), ("node2", "node3")))
        for proc in made:
            assert proc.returncode == 0, proc.stderr
        yield {json.loads(p.stdout)["name"]: json.loads(p.stdout) for p in made}
    finally:
        for name in (A, B):
            run_vmctl(env, "delete", "--yes", name)
        assert leftovers(lab, env, [A, B]) == {}
        images = rbd_images()
        assert _ours(images) == []  # no image, snapshot or clone of theirs
        assert ("vms", "debian-12@base") in images
        children = rbd("children", "vms/debian-12@base").split()
        assert not [c for c in children if A in c or B in c]
        for node in ("node2", "node3"):
            secrets = _node(lab, node, "virsh", "-q", "secret-list").split()
            assert secrets[:1] == [SECRET] and len(secrets) == 4, secrets  # uuid usage name


def test_two_clones_of_one_base_boot_on_two_nodes(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    vms: dict[str, dict[str, Any]],
) -> None:
    assert (vms[A]["node"], vms[B]["node"]) == ("node2", "node3")
    children = rbd("children", "vms/debian-12@base").split()
    assert {f"vms/vmctl.{A}.root", f"vms/vmctl.{B}.root"} <= set(children)
    for name, node in ((A, "node2"), (B, "node3")):
        xml = _node(lab, node, "virsh", "-q", "dumpxml", name)
        assert f"protocol='rbd' name='vms/vmctl.{name}.root'" in xml
        assert f"<secret type='ceph' uuid='{SECRET}'/>" in xml
        assert _inside(vmctl_env, name, "findmnt -no SOURCE /dataxfs").strip() == "/dev/vdb"
    _inside(vmctl_env, A, "echo written-on-node2 | sudo tee /dataxfs/moved.txt && sync")
    _ok(vmctl_env, "snapshot", "create", A, "before-move")
    assert "before-move" in rbd("snap", "ls", f"vms/vmctl.{A}.data")


def test_a_running_vm_moves_with_its_disks_and_address_through_a_killed_worker(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    vms: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """As a job (`move --queue`) whose worker is killed once the move has taken room on node3:
    the other worker runs the job again, which ends the dead move (undone on node3; the VM had
    not been shut down) and moves it."""
    env = {**vmctl_env, "VMCTL_JOB_QUEUE": "rbd-e2e"}  # a queue of this test's own
    old_ip = _show(env, A)["ip"]
    workers = [Worker(env, f"rbd-e2e-w{i}", tmp_path / f"w{i}.log") for i in (1, 2)]
    client = subprocess.Popen(
        [VMCTL, "move", A, "--to", "node3", "--queue", "--wait", "-o", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        for w in workers:
            eventually(f"{w.name} working", lambda w=w: w.said("msg=working"))
        assert client.stderr is not None
        line = client.stderr.readline()
        job_id = int(line.split("queued as job ")[1].split(";")[0])
        taker = eventually("a worker takes the job", lambda: job_row(env, job_id)["worker"])
        dead = next(w for w in workers if w.name == taker)
        deadline = time.monotonic() + 120
        while not dead.said(f"{A}: room taken on node3"):  # then it defines it on node3
            assert time.monotonic() < deadline, "the move never took room on node3"
            time.sleep(0.05)
        os.kill(dead.proc.pid, signal.SIGKILL)
        dead.proc.wait()
        out, err = client.communicate(timeout=900)
        assert client.returncode == 0, err
    finally:
        if client.poll() is None:
            client.kill()
        for w in workers:
            w.stop()
    job = job_row(env, job_id)
    assert (job["state"], job["attempts"], job["kind"]) == ("succeeded", 2, "move"), job
    moved = json.loads(out)
    assert moved["node"] == "node3" and moved["state"] == "running"
    assert moved["ip"] != old_ip and moved["ip"].startswith("10.213.13.")
    assert _inside(env, A, "cat /dataxfs/moved.txt").strip() == "written-on-node2"
    assert json.loads(_ok(env, "snapshot", "list", A, "-o", "json"))[0]["name"] == "before-move"
    # PostgreSQL and Redis say node3; node2 holds nothing of it any more.
    assert _show(env, A)["node"] == "node3"
    import redis

    assert redis.Redis.from_url(env["VMCTL_REDIS_URL"]).get(f"vmctl:vm:{A}:node") == b"node3"
    assert A not in _node(lab, "node2", "virsh", "-q", "list", "--all", "--name").split()
    assert A not in _node(lab, "node2", "ls", "-A", "/var/lib/libvirt/images/vmctl").split()
    assert f"name='{A}'" not in _node(lab, "node2", "virsh", "-q", "net-dumpxml", "vmnet")
    events = json.loads(_ok(env, "events", A, "-o", "json"))
    moves = [(e["result"], e["node"]) for e in events if e["action"] == "move"]
    assert moves[0] == ("started", "node2") and moves[-1] == ("ok", "node3")
    ended = [e["detail"].get("ended") for e in events if e["action"] == "move"]
    assert "back" in ended  # the dead attempt's move, ended (undone on node3) first
    assert [r for r, _ in moves].count("step") >= 5
    checked = run_vmctl(env, "reconcile", "-o", "json")  # 4: drift, of others' VMs maybe
    assert checked.returncode in (0, 4), checked.stderr
    assert [d for d in json.loads(checked.stdout)["drift"] if d.get("vm") == A] == []


def test_a_move_the_target_cannot_start_leaves_the_vm_running_where_it_was(
    lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    vms: dict[str, dict[str, Any]],
) -> None:
    from labkit import ceph, config

    env = vmctl_env
    node2 = config.Node(2)
    _node(lab, "node2", "virsh", "secret-undefine", SECRET)  # node2 can no longer open RBD disks
    try:
        proc = run_vmctl(env, "move", B, "--to", "node2", timeout=600)
    finally:
        ceph.ensure_node_client(node2, ceph._cluster() or {})
    assert proc.returncode != 0 and "Secret not found" in proc.stderr, proc.stderr
    assert "started again on node3" in proc.stderr
    shown = _show(env, B)
    assert shown["node"] == "node3" and shown["state"] == "running"
    assert _node(lab, "node3", "virsh", "-q", "domstate", B).strip() == "running"
    assert B not in _node(lab, "node2", "virsh", "-q", "list", "--all", "--name").split()
    assert f"name='{B}'" not in _node(lab, "node2", "virsh", "-q", "net-dumpxml", "vmnet")
    events = json.loads(_ok(env, "events", B, "-o", "json"))
    assert [e["result"] for e in events if e["action"] == "move"][-1] == "failed"
