"""The job queue adapter (vmctl.adapters.jobs) on a fresh schema of the lab's PostgreSQL: schema
0011, what a job records through its life, and a real `run_worker` (procrastinate) that takes a
job a dead worker left `doing` and runs it again."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest

from tests.conftest import eventually, fresh_schema
from vmctl.adapters import db
from vmctl.adapters.jobs import PgJobQueue, run_worker
from vmctl.core.errors import NotFound

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = os.environ.get("VMCTL_DATABASE_URL") or request.getfixturevalue("lab")["postgres"]["url"]
    with fresh_schema(url) as fresh:
        db.upgrade(fresh)
        yield fresh


@pytest.fixture
def queue(pg_url: str) -> Iterator[PgJobQueue]:
    q = PgJobQueue(pg_url, "jobs-it")
    yield q
    q.close()


def test_a_job_is_recorded_from_queued_to_done(queue: PgJobQueue) -> None:
    job_id = queue.enqueue("create", "web-1", {"name": "web-1"}, project="demo", actor="me@x")
    job = queue.get(job_id)
    assert (job.kind, job.vm, job.state, job.project, job.actor, job.attempts) == (
        "create",
        "web-1",
        "queued",
        "demo",
        "me@x",
        0,
    )
    first = queue.started(job_id, "create", "web-1", "w1")
    assert first.started_at is None and first.state == "queued"
    queue.failed(job_id, "boom", "RuntimeError", 1)
    again = queue.started(job_id, "create", "web-1", "w2")  # a retry sees the earlier attempt
    assert again.started_at is not None and again.worker == "w1" and again.attempts == 1
    running = queue.get(job_id)
    assert (running.state, running.attempts, running.worker, running.error) == (
        "running",
        2,
        "w2",
        None,
    )
    queue.succeeded(job_id, {"name": "web-1", "node": "kvm1"})
    done = queue.get(job_id)
    assert done.state == "succeeded" and done.result == {"name": "web-1", "node": "kvm1"}
    assert done.finished_at is not None and done.done
    with pytest.raises(NotFound):
        queue.get(job_id + 1000)
    assert queue.live_workers(60) == 0


def test_a_worker_runs_again_a_job_whose_worker_died(pg_url: str, queue: PgJobQueue) -> None:
    job_id = queue.enqueue("create", "web-2", {"name": "web-2"})
    # A worker that took it and died: registered, heartbeat long ago, its job `doing`.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        dead = conn.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') "
            "RETURNING id"
        ).fetchone()
        assert dead is not None
        conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s, attempts = 1 "
            "WHERE id = %s",
            (dead[0], job_id),
        )
    queue.started(job_id, "create", "web-2", "dead-worker")
    ran: list[tuple[int, str, dict[str, Any], str]] = []

    def handle(jid: int, kind: str, args: Mapping[str, Any], worker: str) -> dict[str, Any]:
        ran.append((jid, kind, dict(args), worker))
        queue.started(jid, kind, str(args["name"]), worker)
        queue.succeeded(jid, {"ok": True})
        return {"ok": True}

    log = logging.getLogger("test.worker")
    stop = threading.Event()

    def work() -> None:
        # in a thread of its own: no signal handlers (only the main thread may), ended by `stop`
        run_worker(
            pg_url,
            handle,
            name="w-alive",
            queue="jobs-it",
            concurrency=1,
            stalled_after=1,
            log=log,
            install_signal_handlers=False,
            stop=stop,
        )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        eventually("the job run again", lambda: ran, timeout=30)
        assert queue.live_workers(60) == 1  # the dead one's heartbeat is an hour old
        job = eventually("the job done", lambda: queue.get(job_id).done and queue.get(job_id))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert ran == [(job_id, "create", {"name": "web-2"}, "w-alive")]
    assert (job.state, job.attempts, job.worker) == ("succeeded", 2, "w-alive")
    assert not thread.is_alive()


def test_jobs_done_long_ago_are_forgotten_and_the_others_kept(
    pg_url: str, queue: PgJobQueue
) -> None:
    import asyncio

    from procrastinate import App, PsycopgConnector

    from vmctl.adapters.jobs import prune

    old_done = queue.enqueue("create", "old-1", {"name": "old-1"})
    recent = queue.enqueue("create", "new-1", {"name": "new-1"})
    old_waiting = queue.enqueue("create", "old-2", {"name": "old-2"})
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for job_id in (old_done, recent):
            conn.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", (job_id,))
            conn.execute(
                "UPDATE vmctl_jobs SET state = 'failed', finished_at = now() WHERE id = %s",
                (job_id,),
            )
        ago = "now() - interval '200 hours'"
        conn.execute(
            f"UPDATE procrastinate_events SET at = {ago} WHERE job_id IN (%s, %s)",
            (old_done, old_waiting),
        )
        conn.execute(
            f"UPDATE vmctl_jobs SET finished_at = {ago}, created_at = {ago} WHERE id = %s",
            (old_done,),
        )
        conn.execute(f"UPDATE vmctl_jobs SET created_at = {ago} WHERE id = %s", (old_waiting,))

    async def run() -> int:
        app = App(connector=PsycopgConnector(conninfo=pg_url))
        connect = psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        async with app.open_async(), await connect as conn:
            return await prune(app, conn, "jobs-it", 168)

    assert asyncio.run(run()) == 1
    with pytest.raises(NotFound):
        queue.get(old_done)
    assert queue.get(recent).state == "failed" and queue.get(old_waiting).state == "queued"
    with psycopg.connect(pg_url) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM procrastinate_jobs").fetchall()}
    assert left == {recent, old_waiting}  # the old one's gone; one still to run is kept
