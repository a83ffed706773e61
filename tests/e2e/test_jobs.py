"""Durable jobs on the lab (docs/architecture.md, "Durable jobs"): two `vmctl worker`s of this
test's own; a create job whose worker is killed (SIGKILL) after the claim, and during the node
script, is taken up by the other worker once the dead one's heartbeat is old, which rolls back
what the dead attempt left and makes the VM: one VM (domain, directory, DHCP reservation, row,
all of it once), never a half one, and `vmctl reconcile` has nothing to say about it. Then a
delete job removes it all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import REPO, eventually, leftovers, run_vmctl

pytestmark = pytest.mark.e2e

VMCTL = str(REPO / ".venv" / "bin" / "vmctl")
STALLED_AFTER = 5  # seconds: the workers' --stalled-after


class Worker:
    def __init__(self, env: dict[str, str], name: str, log: Path) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [VMCTL, "worker", "--name", name, "--stalled-after", str(STALLED_AFTER)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            stdin=subprocess.DEVNULL,
        )

    def said(self, text: str) -> bool:
        return text in self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def env(vmctl_env: dict[str, str]) -> dict[str, str]:
    """The lab's environment with a job queue of this test's own (the lab's workers, if any,
    take nothing of it)."""
    return {**vmctl_env, "VMCTL_JOB_QUEUE": "jobs-e2e"}


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Worker]]:
    made = {n: Worker(env, n, tmp_path / f"{n}.log") for n in ("jobs-e2e-w1", "jobs-e2e-w2")}
    try:
        for w in made.values():
            eventually(f"{w.name} working", lambda w=w: w.said("msg=working"))
        yield made
    finally:
        for w in made.values():
            w.stop()


def job_row(env: dict[str, str], job_id: int) -> dict[str, Any]:
    with psycopg.connect(env["VMCTL_DATABASE_URL"], row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM vmctl_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def queue_create(env: dict[str, str], name: str) -> tuple[subprocess.Popen[str], int]:
    """`vmctl create NAME --queue` in the background; it and its job's id."""
    proc = subprocess.Popen(
        [VMCTL, "create", name, "--queue", "--node", "node1", "--ram", "256", "-o", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "queued as job" in line, line
    return proc, int(line.split("queued as job ")[1].split(";")[0])


@pytest.mark.parametrize(
    ("name", "at", "delay"),
    [
        ("jobs-e2e-claimed", "placed on", 0.0),  # after the claim, before the node script
        ("jobs-e2e-script", "creating disks and seed", 1.0),  # during the node script
    ],
)
def test_a_create_job_whose_worker_is_killed_is_finished_by_the_other(
    lab: dict,  # type: ignore[type-arg]
    env: dict[str, str],
    workers: dict[str, Worker],
    name: str,
    at: str,
    delay: float,
) -> None:
    run_vmctl(env, "delete", "--yes", name)  # left by an interrupted run, if any
    client, job_id = queue_create(env, name)
    try:
        taker = eventually("a worker takes the job", lambda: job_row(env, job_id)["worker"])
        worker = workers[taker]
        eventually(f"{taker} says {at!r}", lambda: worker.said(f"{name}: {at}"), timeout=60)
        time.sleep(delay)
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        other = next(w for w in workers.values() if w is not worker)

        out, err = client.communicate(timeout=STALLED_AFTER * 4 + 120)
        assert client.returncode == 0, err
        job = job_row(env, job_id)
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2, job
        assert job["worker"] == other.name, job
        assert other.said("stalled job queued again")
        vm = json.loads(out)
        assert (vm["name"], vm["state"], vm["node"]) == (name, "running", "node1")
        # one VM: every part of it once, on its node, and nothing else of it anywhere
        found = leftovers(lab, env, [name])
        assert found.pop("domains") == ["node1:" + name], found
        assert found.pop("dirs") == ["node1:" + name], found
        assert found.pop("rows") == [name], found
        assert found.pop("reservations") == ["node1:" + name], found  # node1 reserves addresses
        found.pop("cache", None)  # the VM's node, cached
        assert found == {}, found
        report = json.loads(run_vmctl(env, "reconcile", "--node", "node1", "-o", "json").stdout)
        assert [d for d in report["drift"] if d.get("vm") == name] == []
    finally:
        if client.poll() is None:
            client.kill()
        deleted = run_vmctl(env, "delete", "--yes", "--queue", name)
    assert deleted.returncode == 0, deleted.stderr
    assert leftovers(lab, env, [name]) == {}
