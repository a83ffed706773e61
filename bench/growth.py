"""How the control plane grows with the nodes and the managers (issue 16).

On the lab as it is up (`lab/lab up --nodes N`), in a schema of its own in the lab's database
(dropped afterwards) holding --vms VM rows (confirmed addresses, spread over the nodes), for 1 and
then 2 managers' watchers (`vmctl watch-ip --share --reconcile-every 0`, so two divide the nodes):
the watchers' CPU (% of one core, summed) and resident memory (summed) over a window after they
settle, the SSH connections they hold to the nodes (from `ss`, by their PIDs), and how the nodes
were divided. Then claim throughput: --creators processes' worth of threads claiming at once
(`Store.claim`, the step of a create that every manager serialises on) for --seconds.

    for n in 2 4 8; do
        lab/lab down && lab/lab up --nodes $n
        eval "$(lab/lab env)"; .venv/bin/python bench/growth.py >> /tmp/growth.jsonl
    done
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import threading
import time
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from watch_ip import REPO, cpu_seconds, memory_kib, nodes

from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.core import hostkeys
from vmctl.core.errors import CapacityError
from vmctl.core.records import NewVm

VMCTL = str(REPO / ".venv" / "bin" / "vmctl")


def ssh_connections(pids: list[int]) -> int:
    """Established TCP connections to port 22 held by ``pids``."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "( dport = :22 )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() for pid in pids if f"pid={pid}," in line)


def watchers(url: str, count: int, settle: float, seconds: float) -> dict[str, object]:
    env = {**os.environ, "VMCTL_DATABASE_URL": url}
    env.pop("VMCTL_REDIS_URL", None)
    procs = [
        subprocess.Popen(
            [VMCTL, "watch-ip", "--share", "--reconcile-every", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        time.sleep(settle)
        pids = [p.pid for p in procs]
        cpu0, t0 = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
        rss = sum(memory_kib(pid)["VmRSS"] for pid in pids)
        connections = ssh_connections(pids)
        with psycopg.connect(url) as conn:
            held = [
                len(row[0]["held"])
                for row in conn.execute("SELECT detail FROM heartbeats WHERE kind = 'watch-ip'")
            ]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    return {
        "watchers": count,
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "rss_mib": round(rss / 1024, 1),
        "ssh_connections": connections,
        "nodes_held": sorted(held),
    }


def claims(url: str, node_names: list[str], creators: int, seconds: float) -> dict[str, object]:
    """Claims per second with ``creators`` threads at once, each its own store (connection)."""
    done: list[float] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def creator() -> None:
        with PgStore(url) as store:
            while time.monotonic() < stop:
                name = f"claim-{secrets.token_hex(5)}"
                t = time.monotonic()
                try:
                    store.claim(
                        NewVm(name, 1, 1, 0, 1, "bench", hostkeys.new_mac()),
                        lambda usage: (
                            min(usage, key=lambda u: u.vms).node if usage else node_names[0]
                        ),
                    )
                except CapacityError:
                    continue
                with lock:
                    done.append(time.monotonic() - t)

    threads = [threading.Thread(target=creator) for _ in range(creators)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {
        "creators": creators,
        "claims_per_s": round(len(done) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(done), 1) if done else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=15)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--creators", type=int, default=8)
    args = parser.parse_args()
    lab_nodes = [n.name for n in nodes()]
    base = os.environ["VMCTL_DATABASE_URL"]
    schema = f"bench_growth_{secrets.token_hex(4)}"
    url = make_conninfo(base, options=f"-csearch_path={schema}")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    started = datetime.now().isoformat(timespec="seconds")
    try:
        db.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(args.vms):
                node = lab_nodes[i % len(lab_nodes)]
                subnet = re.sub(r"\D", "", node) or "0"
                conn.execute(
                    """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image,
                                        mac, ip, ip_state)
                       VALUES (%s, %s, 'running', 1, 1, 0, 1, 'bench', %s, %s, 'confirmed')""",
                    (f"grow-{i}", node, hostkeys.new_mac(), f"10.251.{subnet}.{i % 250 + 1}"),
                )
        rows = [watchers(url, w, args.settle, args.seconds) for w in (1, 2)]
        claimed = [claims(url, lab_nodes, c, args.seconds / 2) for c in (1, args.creators)]
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    print(
        json.dumps(
            {
                "bench": "growth",
                "started": started,
                "nodes": len(lab_nodes),
                "vms": args.vms,
                "watch_ip": rows,
                "claims": claimed,
            }
        )
    )


if __name__ == "__main__":
    main()
