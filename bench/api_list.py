"""GET /api/v1/vm with many VMs in PostgreSQL, through HAProxy (TLS) and the lab's 2 replicas.

Puts VMS rows (project demo, the lab token's project) into PostgreSQL, then runs CLIENTS threads
that each send GET /api/v1/vm over one keep-alive TLS connection for SECONDS, and reports
requests/s and latency percentiles (p50, p99). The rows are removed afterwards. The client runs on
the same 2 cores as HAProxy, both replicas and PostgreSQL, so it takes its share of the CPU.

    eval "$(lab/lab env)"; .venv/bin/python bench/api_list.py --vms 10000 --clients 4 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import threading
import time
from datetime import datetime

import httpx
import psycopg


def fill(url: str, count: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac,
                                ip, ip_state, project)
               SELECT 'bench-list-' || i, 'node' || (1 + mod(i, 2)), 'running', 1024, 2, 10, 4,
                      'debian-12', '52:54:00:' || lpad(to_hex(i / 65536), 2, '0') || ':'
                        || lpad(to_hex(mod(i / 256, 256)), 2, '0') || ':'
                        || lpad(to_hex(mod(i, 256)), 2, '0'),
                      ('10.99.0.0'::inet + i), 'confirmed', 'demo'
               FROM generate_series(1, %s) AS i""",
            (count,),
        )


def empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM vms WHERE name LIKE 'bench-list-%%'")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(clients: int, seconds: float, expect: int) -> dict[str, object]:
    base, ca = os.environ["VMCTL_API_URL"], os.environ["VMCTL_API_CA"]
    headers = {"Authorization": f"Bearer {os.environ['VMCTL_API_TOKEN']}"}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    tls = ssl.create_default_context(cafile=ca)
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, verify=tls, headers=headers, timeout=60) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                response = http.get("/api/v1/vm")
                took = time.perf_counter() - started
                with lock:
                    if response.status_code == 200 and len(response.json()) >= expect:
                        latencies.append(took)
                    else:
                        errors.append(f"{response.status_code}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "max_ms": round(1000 * max(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=1, help="repeat, reporting each")
    args = parser.parse_args()
    url = os.environ["VMCTL_DATABASE_URL"]
    empty(url)
    fill(url, args.vms)
    try:
        size = len(
            httpx.get(
                f"{os.environ['VMCTL_API_URL']}/api/v1/vm",
                verify=ssl.create_default_context(cafile=os.environ["VMCTL_API_CA"]),
                headers={"Authorization": f"Bearer {os.environ['VMCTL_API_TOKEN']}"},
                timeout=60,
            ).content
        )
        print(f"one response: {size / 1e6:.2f} MB", file=sys.stderr)
        results = [run(args.clients, args.seconds, args.vms) for _ in range(args.rounds)]
    finally:
        empty(url)
    started = datetime.now().isoformat(timespec="seconds")
    print(json.dumps({"bench": "api_list", "vms": args.vms, "started": started, "runs": results}))


if __name__ == "__main__":
    main()
