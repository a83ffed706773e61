"""Claims per second: concurrent creators reserving room in PostgreSQL (`PgStore.claim`).

Every claim takes one transaction-level advisory lock for the whole cloud, reads every node's
usage, places the VM (`placement.place`) and inserts its row. This bench runs that against the
real PostgreSQL of `lab/lab env` ($VMCTL_DATABASE_URL), in a schema of its own (dropped at the
end): EXISTING rows already recorded on NODES nodes, then WORKERS processes (each with its own
store, as separate `vmctl create` processes or API replicas are) claiming for SECONDS; rounds
alternate 1 worker and WORKERS workers. Reports claims/s and the latency of one claim (p50, p99),
and how long the usage query read under the lock takes at that size (it summed every VM until
schema 0008; it reads the kept per-node sums since).

    eval "$(lab/lab env)"; .venv/bin/python bench/claims.py --workers 8 --existing 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.adapters.store.vms import _USAGE_SQL
from vmctl.core import placement
from vmctl.core.records import NewVm, NodeUsage

NEED = placement.Resources(1, 512, 14)


def loads(nodes: int, usages: list[NodeUsage]) -> list[placement.NodeLoad]:
    used = {u.node: u for u in usages}
    out = []
    for i in range(nodes):
        name = f"node{i:03d}"
        u = used.get(name)
        out.append(
            placement.NodeLoad(
                name,
                placement.Resources(64, 262144, 4096),
                16.0,
                4.0,
                4.0,
                placement.Resources(u.cpu, u.ram_mb, u.disk_gb)
                if u
                else placement.Resources(0, 0, 0),
            )
        )
    return out


def worker(url: str, nodes: int, seconds: float, tag: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    latencies = []
    with PgStore(url, actor="bench") as store:
        store.ping()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            vm = NewVm(
                f"c{tag}-{i}", NEED.ram_mb, NEED.cpu, 10, 4, "debian-12", secrets.token_hex(6)
            )
            want = placement.Request(vm.name, NEED)
            started = time.perf_counter()
            store.claim(vm, lambda usages, want=want: placement.place(want, loads(nodes, usages)))
            latencies.append(time.perf_counter() - started)
    out.put(latencies)


def fill(url: str, existing: int, nodes: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac)
               SELECT 'old-' || i, 'node' || lpad((i %% %(nodes)s)::text, 3, '0'), 'running',
                      512, 1, 10, 4, 'debian-12', md5(i::text)
               FROM generate_series(1, %(existing)s) AS i""",
            {"existing": existing, "nodes": nodes},
        )


def round_of(
    url: str, workers: int, nodes: int, seconds: float, label: str
) -> tuple[float, list[float]]:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=worker, args=(url, nodes, seconds, f"{label}{w}", queue))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    for _ in procs:
        latencies += queue.get()
    for p in procs:
        p.join()
    return len(latencies) / seconds, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--existing", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = os.environ["VMCTL_DATABASE_URL"]
    schema = f"vmctl_bench_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_conninfo(base, options=f"-csearch_path={schema}")
    try:
        db.upgrade(url)
        fill(url, args.existing, args.nodes)
        with psycopg.connect(url) as conn:
            conn.execute("ANALYZE vms")
            started = time.perf_counter()
            for _ in range(20):
                conn.execute(_USAGE_SQL).fetchall()
            usage_ms = (time.perf_counter() - started) / 20 * 1000
        print(
            f"{args.existing} VMs on {args.nodes} nodes; the usage query read under the lock: "
            f"{usage_ms:.1f} ms"
        )
        results: dict[int, list[tuple[float, list[float]]]] = {1: [], args.workers: []}
        for r in range(args.rounds):
            for workers in (1, args.workers) if r % 2 == 0 else (args.workers, 1):
                rate, lat = round_of(url, workers, args.nodes, args.seconds, f"r{r}w{workers}-")
                results[workers].append((rate, lat))
                lat.sort()
                p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
                print(
                    f"round {r + 1}, {workers} worker(s): {rate:.0f} claims/s, "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
                )
        for workers, runs in results.items():
            print(
                f"median, {workers} worker(s): {statistics.median(r for r, _ in runs):.0f} claims/s"
            )
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
