"""The long-running commands (`vmctl watch-ip`, `vmctl serve`, `vmctl worker`) and
`vmctl db upgrade`."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Annotated

import typer

from vmctl.cli.options import Format, output_options, progress, settings
from vmctl.cli.output import WATCH_COLUMNS, emit
from vmctl.core import validation
from vmctl.core.addressing import SOURCES, parse_sources
from vmctl.core.errors import ExitStatus, InvalidInput

app = typer.Typer()
db_app = typer.Typer(help="The PostgreSQL schema.", no_args_is_help=True)


@app.command("watch-ip")
@output_options
def watch_ip(
    names: Annotated[
        list[str] | None, typer.Argument(help="With --once: only these VMs (asked at once).")
    ] = None,
    once: Annotated[bool, typer.Option(help="One pass over every node, then exit.")] = False,
    sources: Annotated[
        str, typer.Option(help="Where to look, in order: lease, arp, agent.")
    ] = ",".join(SOURCES),
    follow: Annotated[
        bool,
        typer.Option(
            help="Follow each node's DHCP lease file (leases the moment they are written); "
            "--no-follow only looks at the nodes, every 0.5 s while a VM waits."
        ),
    ] = True,
    log_format: Annotated[
        str, typer.Option(help="Log lines on stderr: logfmt or json.")
    ] = "logfmt",
    reconcile_every: Annotated[
        float,
        typer.Option(
            "--reconcile-every",
            metavar="SECONDS",
            help="Run `vmctl reconcile` in report mode this often (new drift becomes events; "
            "pending deletes are finished); 0: never.",
        ),
    ] = 300,
    metrics_listen: Annotated[
        str,
        typer.Option(
            "--metrics-listen",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (docs/monitoring.md); "
            "none when empty.",
        ),
    ] = "",
    share: Annotated[
        bool,
        typer.Option(
            "--share",
            help="Divide the nodes with the other `watch-ip --share` of this database: each "
            "watches its share; when one stops, the others take its nodes within a second or "
            "two (docs/watch-ip.md).",
        ),
    ] = False,
    *,
    fmt: Format,
) -> None:
    """Learn new VMs' addresses from their nodes; record them in PostgreSQL, announce on Redis.

    Runs until stopped (SIGTERM, Ctrl-C) unless --once: then prints what it updated."""
    from vmctl import wiring
    from vmctl.wiring import logs

    try:
        order = parse_sources(sources)
    except ValueError as exc:
        raise InvalidInput("sources", str(exc)) from exc
    if names and not once:
        raise InvalidInput("names", "VM names are only taken with --once")
    if not reconcile_every >= 0:
        raise InvalidInput("reconcile-every", "must be 0 (never) or a number of seconds")
    metrics_at = None
    if metrics_listen:
        if once:
            raise InvalidInput("metrics-listen", "metrics are served only while watching")
        metrics_at = validation.listen_address("metrics-listen", metrics_listen)
    log = logs.setup("vmctl.watch-ip", log_format)
    if share and once:
        raise InvalidInput("share", "nodes are divided only while watching")
    ip_watcher = wiring.watcher(
        settings(), log, order, follow=follow, metrics_at=metrics_at, share=share
    )
    if once:
        rows, problems = ip_watcher.once(names or [])
        emit(rows, WATCH_COLUMNS, fmt)
        for problem in problems:
            print(f"vmctl: error: {problem}", file=sys.stderr)
        if problems:
            raise typer.Exit(ExitStatus.UNAVAILABLE)
        return
    ip_watcher.reconcile_periodically(reconcile_every, wiring.connector(settings()))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ip_watcher.run(stop)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    trusted_proxies: Annotated[
        str, typer.Option(help="Addresses whose X-Forwarded-For is believed (HAProxy).")
    ] = "127.0.0.1",
    log_format: Annotated[str, typer.Option(help="logfmt or json.")] = "logfmt",
) -> None:
    """Serve the HTTP API (one replica; run several behind HAProxy). OpenAPI at /openapi.json."""
    import uvicorn

    from vmctl.api import server
    from vmctl.wiring import logs

    log = logs.setup("vmctl.serve", log_format)
    application = server.build(settings(), log)
    log.info("serving", extra=logs.fields(host=host, port=port, pid=os.getpid()))
    uvicorn.run(
        application,
        host=host,
        port=port,
        proxy_headers=True,
        forwarded_allow_ips=trusted_proxies,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Jobs run at once (default 4) [VMCTL_WORKER_CONCURRENCY].", min=1),
    ] = None,
    stalled_after: Annotated[
        float,
        typer.Option(
            "--stalled-after",
            metavar="SECONDS",
            help="A worker silent this long is dead: its jobs are run again by another.",
        ),
    ] = 30,
    name: Annotated[
        str | None, typer.Option(help="This worker's name in the logs (default host:pid).")
    ] = None,
    log_format: Annotated[str, typer.Option(help="logfmt or json.")] = "logfmt",
) -> None:
    """Run queued jobs (creates, deletes, starts, stops, reboots, moves) until stopped
    (SIGTERM, Ctrl-C: the jobs under way are finished first). Run several: a job of a worker
    that dies is run again by another. Jobs done more than job_keep_hours ago (default 168)
    are forgotten [VMCTL_JOB_KEEP_HOURS]."""
    import socket

    from vmctl import wiring
    from vmctl.wiring import logs

    if not 1 <= stalled_after <= 3600:
        raise InvalidInput("stalled-after", "must be 1-3600 seconds")
    config = settings()
    config.require_database()
    log = logs.setup("vmctl.worker", log_format)
    me = name or f"{socket.gethostname()}:{os.getpid()}"
    count = concurrency or config.worker_concurrency
    wiring.run_worker(config, log, me, count, stalled_after)  # logs "working" once connected
    log.info("stopped", extra=logs.fields(worker=me))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    from vmctl import wiring

    applied = wiring.upgrade_database(settings())
    progress(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
