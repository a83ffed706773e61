"""The job queue over procrastinate (PostgreSQL; docs/architecture.md, "Durable jobs"): the only
module that imports it. ``PgJobQueue`` queues jobs and keeps vmctl's record of each (vmctl_jobs,
schema 0011); ``run_worker`` is `vmctl worker`'s loop.

Every job is one procrastinate task, ``vmctl.job(kind, args)``, with procrastinate's ``lock``
set to the VM (two jobs about one VM never run at once). A worker that dies (kill -9, a lost
host) stops sending heartbeats; every worker looks for jobs of workers whose heartbeat is older
than ``stalled_after`` seconds and puts them back in the queue, where another worker runs them
again (the operations are safe to run again: vmctl.services.create.create_job).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from procrastinate import App, JobContext, PsycopgConnector, SyncPsycopgConnector

from vmctl.adapters import db
from vmctl.core.errors import NotFound
from vmctl.core.jobs import Job
from vmctl.core.logfields import fields

QUEUE = "vmctl"
TASK = "vmctl.job"
RESCUE_KEY = 0x766D63746C0011  # advisory lock ("vmctl", 0x11) of the worker putting jobs back
Handler = Callable[[int, str, Mapping[str, Any], str], Mapping[str, Any]]


def _app(connector: Any) -> App:
    return App(connector=connector)


class PgJobQueue:
    """vmctl's JobQueue port over procrastinate and the vmctl_jobs table."""

    def __init__(self, url: str, queue: str = QUEUE) -> None:
        self._url = url
        self._queue = queue
        self._app: App | None = None
        self._lock = threading.Lock()  # the API's threads share one

    def _opened(self) -> App:
        with self._lock:
            return self._open()

    def _open(self) -> App:
        if self._app is None:
            db.check_url(self._url)
            app = _app(SyncPsycopgConnector(conninfo=self._url, min_size=1, max_size=4))
            try:
                app.open()
            except psycopg.OperationalError as e:
                raise db.unreachable(self._url, e) from e
            self._app = app
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    def _run(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            with db.connect(self._url) as conn:
                cursor = conn.execute(sql, params)
                row: dict[str, Any] | None = cursor.fetchone() if cursor.description else None
                return row
        except psycopg.OperationalError as e:
            raise db.unreachable(self._url, e) from e

    def enqueue(
        self,
        kind: str,
        vm: str,
        args: Mapping[str, Any],
        *,
        project: str | None = None,
        actor: str | None = None,
    ) -> int:
        app = self._opened()
        deferrer = app.configure_task(TASK, queue=self._queue, lock=f"vm/{vm}")
        try:
            job_id = deferrer.defer(kind=kind, args=dict(args))
        except psycopg.OperationalError as e:
            raise db.unreachable(self._url, e) from e
        # The worker may have taken it already (it then wrote the row): this adds what it
        # could not know.
        self._run(
            "INSERT INTO vmctl_jobs (id, kind, vm, project, actor) "
            "VALUES (%(id)s, %(kind)s, %(vm)s, %(project)s, %(actor)s) "
            "ON CONFLICT (id) DO UPDATE SET project = EXCLUDED.project, actor = EXCLUDED.actor",
            {"id": job_id, "kind": kind, "vm": vm, "project": project, "actor": actor},
        )
        return job_id

    def get(self, job_id: int) -> Job:
        row = self._run("SELECT * FROM vmctl_jobs WHERE id = %(id)s", {"id": job_id})
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job(row)

    def started(self, job_id: int, kind: str, vm: str, worker: str) -> Job:
        row = self._run(
            "WITH before AS (SELECT * FROM vmctl_jobs WHERE id = %(id)s) "
            "INSERT INTO vmctl_jobs AS j (id, kind, vm, state, attempts, worker, started_at) "
            "VALUES (%(id)s, %(kind)s, %(vm)s, 'running', 1, %(worker)s, now()) "
            "ON CONFLICT (id) DO UPDATE SET state = 'running', attempts = j.attempts + 1, "
            "worker = EXCLUDED.worker, started_at = now(), error = NULL, error_kind = NULL, "
            "exit_status = NULL, result = NULL, finished_at = NULL "
            "RETURNING (SELECT to_jsonb(before) FROM before) AS before",
            {"id": job_id, "kind": kind, "vm": vm, "worker": worker},
        )
        before = row["before"] if row else None
        if before is None:
            return Job(id=job_id, kind=kind, vm=vm)
        return _job({**before, "result": before.get("result")}, parse_times=True)

    def live_workers(self, within_s: float) -> int:
        row = self._run(
            "SELECT count(*) AS n FROM procrastinate_workers "
            "WHERE last_heartbeat > now() - make_interval(secs => %(s)s)",
            {"s": within_s},
        )
        return int(row["n"]) if row else 0

    def succeeded(self, job_id: int, result: Mapping[str, Any]) -> None:
        self._run(
            "UPDATE vmctl_jobs SET state = 'succeeded', result = %(result)s, finished_at = now() "
            "WHERE id = %(id)s",
            {"id": job_id, "result": json.dumps(dict(result))},
        )

    def failed(self, job_id: int, error: str, error_kind: str, exit_status: int) -> None:
        self._run(
            "UPDATE vmctl_jobs SET state = 'failed', error = %(error)s, error_kind = %(kind)s, "
            "exit_status = %(status)s, finished_at = now() WHERE id = %(id)s",
            {"id": job_id, "error": error, "kind": error_kind, "status": exit_status},
        )


def _job(row: Mapping[str, Any], parse_times: bool = False) -> Job:
    from datetime import datetime

    def when(value: Any) -> datetime | None:
        if value is None or not parse_times:
            return value  # type: ignore[no-any-return]
        return datetime.fromisoformat(str(value))

    return Job(
        id=int(row["id"]),
        kind=row["kind"],
        vm=row["vm"],
        state=row["state"],
        project=row["project"],
        actor=row["actor"],
        attempts=int(row["attempts"]),
        worker=row["worker"],
        error=row["error"],
        error_kind=row["error_kind"],
        exit_status=row["exit_status"],
        result=dict(row["result"] or {}),
        created_at=when(row["created_at"]),
        started_at=when(row["started_at"]),
        finished_at=when(row["finished_at"]),
    )


PRUNE_EVERY_S = 3600.0  # how often a worker deletes the records of jobs done long ago
PRUNE_BATCH = 10_000  # at most this many vmctl_jobs rows per statement


async def prune(app: App, conn: psycopg.AsyncConnection[Any], queue: str, keep_hours: int) -> int:
    """Delete what is kept of the jobs that ended more than ``keep_hours`` ago: procrastinate's
    rows of ``queue`` (succeeded, failed, cancelled or aborted) and vmctl_jobs rows (every
    queue's); how many vmctl_jobs rows went."""
    await app.job_manager.delete_old_jobs(
        nb_hours=keep_hours,
        queue=queue,
        include_failed=True,
        include_cancelled=True,
        include_aborted=True,
    )
    gone = 0
    while True:
        cursor = await conn.execute(
            """DELETE FROM vmctl_jobs WHERE id = ANY (ARRAY(
                   SELECT id FROM vmctl_jobs
                   WHERE finished_at < now() - make_interval(hours => %s)
                   LIMIT %s))""",
            (keep_hours, PRUNE_BATCH),
        )
        gone += cursor.rowcount
        if cursor.rowcount < PRUNE_BATCH:
            return gone


def run_worker(
    url: str,
    handle: Handler,
    *,
    name: str,
    queue: str = QUEUE,
    concurrency: int,
    stalled_after: float,
    log: logging.Logger,
    keep_hours: int = 168,
    prune_every: float = PRUNE_EVERY_S,
    install_signal_handlers: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Run jobs until SIGTERM/SIGINT (a job under way is finished first, as procrastinate's
    graceful shutdown does); ``handle(job_id, kind, args, worker)`` runs one. Heartbeats every
    ``stalled_after / 5`` s; jobs of workers silent for ``stalled_after`` s are queued again.
    Every ``prune_every`` s (one worker at a time), jobs done more than ``keep_hours`` ago are
    forgotten (``prune``).
    ``stop`` (for a worker run in a thread, without signal handlers) ends it too."""
    db.check_url(url)
    app = _app(PsycopgConnector(conninfo=url, min_size=1, max_size=concurrency + 4))

    @app.task(name=TASK, queue=queue, pass_context=True)
    def vmctl_job(context: JobContext, kind: str, args: dict[str, Any]) -> Any:
        job_id = context.job.id
        assert job_id is not None
        log.info("job started", extra=fields(job=job_id, kind=kind, vm=args.get("name")))
        try:
            result = handle(job_id, kind, args, name)
        except Exception as exc:
            log.warning(
                "job failed", extra=fields(job=job_id, kind=kind, vm=args.get("name"), error=exc)
            )
            raise
        log.info("job done", extra=fields(job=job_id, kind=kind, vm=args.get("name")))
        return dict(result)

    pruned_at = [-prune_every]  # the first rescue prunes too

    async def rescue_once(conn: psycopg.AsyncConnection[Any]) -> None:
        # One worker at a time (an advisory lock): a job one worker queued again and another
        # took since cannot be queued again by a third from an older list.
        got = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", (RESCUE_KEY,))
        ).fetchone()
        if not got or not got[0]:
            return
        try:
            stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after)
            for job in stalled:
                try:
                    await app.job_manager.retry_job(job)
                except Exception as exc:  # it ended meanwhile (its worker was only slow)
                    log.info("stalled job not retried", extra=fields(job=job.id, error=exc))
                else:
                    log.warning(
                        "stalled job queued again",
                        extra=fields(job=job.id, dead_worker=job.worker_id),
                    )
            await app.job_manager.prune_stalled_workers(stalled_after * 10)
            if time.monotonic() >= pruned_at[0] + prune_every:
                pruned_at[0] = time.monotonic()
                gone = await prune(app, conn, queue, keep_hours)
                if gone:
                    log.info("old jobs forgotten", extra=fields(jobs=gone, hours=keep_hours))
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (RESCUE_KEY,))

    async def rescue() -> None:
        """Queue again the jobs of workers that stopped sending heartbeats."""
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await asyncio.sleep(stalled_after / 3)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
                    await rescue_once(conn)
                except Exception as exc:
                    log.warning("looking for stalled jobs failed", extra=fields(error=exc))
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def stopper(worker: asyncio.Task[None]) -> None:
        assert stop is not None
        await asyncio.to_thread(stop.wait)
        worker.cancel()  # procrastinate's graceful shutdown, as on SIGTERM

    async def main() -> None:
        async with app.open_async():
            log.info(
                "working",
                extra=fields(worker=name, queue=queue, concurrency=concurrency, pid=os.getpid()),
            )
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=[queue],
                    name=name,
                    concurrency=concurrency,
                    update_heartbeat_interval=stalled_after / 5,
                    stalled_worker_timeout=stalled_after,
                    delete_jobs="successful",
                    install_signal_handlers=install_signal_handlers,
                )
            )
            side = [asyncio.create_task(rescue())]
            if stop is not None:
                side.append(asyncio.create_task(stopper(worker)))
            try:
                await worker
            except asyncio.CancelledError:
                if stop is None or not stop.is_set():
                    raise
            finally:
                for task in side:
                    task.cancel()

    try:
        asyncio.run(main())
    except psycopg.OperationalError as e:
        raise db.unreachable(url, e) from e
