"""GET /api/v1/vm with many VMs in PostgreSQL, through HAProxy (TLS) and the lab's 2 replicas.

Puts VMS rows (project demo, the lab token's project) into PostgreSQL, then runs CLIENTS threads
that each send GET /api/v1/vm over one keep-alive TLS connection for SECONDS, and reports
requests/s and latency percentiles (p50, p99). The rows are removed afterwards. The client runs on
the same 2 cores as HAProxy, both replicas and PostgreSQL, so it takes its share of the CPU.

    eval "$(lab/lab env)"; .venv/bin/python bench/api_list.py --vms 10000 --clients 4 --seconds 30

With --scrape-every S (issue 13: does monitoring slow the API?), the rounds alternate without and
with a Prometheus scraping everything the lab's scrape configuration lists (`vmctl monitoring
scrape-config`: both replicas' /metrics, /metrics/cloud through HAProxy, HAProxy, watch-ip, the
exporters) every S seconds: a Prometheus of this bench's own (Debian's binary, a temporary data
directory, a free loopback port). The lab's own Prometheus is paused (SIGSTOP) for the whole bench
so that "without" means no scrape at all, and resumed at the end.

    .venv/bin/python bench/api_list.py --vms 10000 --seconds 20 --rounds 6 --scrape-every 5

With --vs-one-replica (issue 16: API req/s with 1 manager against 2), the rounds alternate
between both replicas and one (the lab HAProxy's second server disabled through its admin
socket); --limit N asks for pages of N VMs instead of the whole list.

    .venv/bin/python bench/api_list.py --vms 10000 --limit 100 --seconds 15 --rounds 6 \
        --vs-one-replica
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

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


def run(clients: int, seconds: float, expect: int, limit: int = 0) -> dict[str, object]:
    base, ca = os.environ["VMCTL_API_URL"], os.environ["VMCTL_API_CA"]
    headers = {"Authorization": f"Bearer {os.environ['VMCTL_API_TOKEN']}"}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    tls = ssl.create_default_context(cafile=ca)
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        # each client from an address of its own (127.0.1.i, loopback): HAProxy's rate limit
        # is per source address (VMCTL_RATE_LIMIT per 10 s)
        transport = httpx.HTTPTransport(verify=tls, local_address=f"127.0.1.{i + 1}")
        with httpx.Client(base_url=base, transport=transport, headers=headers, timeout=60) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                response = http.get("/api/v1/vm", params={"limit": limit} if limit else None)
                took = time.perf_counter() - started
                with lock:
                    if response.status_code == 200 and len(response.json()) >= (limit or expect):
                        latencies.append(took)
                    else:
                        errors.append(f"{response.status_code}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
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
        "error_statuses": sorted(set(errors)),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "max_ms": round(1000 * max(latencies), 1),
    }


REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab" / "lab"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def lab_prometheus_paused() -> Iterator[None]:
    """The lab's Prometheus stopped (SIGSTOP) meanwhile, so that it scrapes nothing."""
    status = json.loads(subprocess.run([str(LAB), "status", "--json"], capture_output=True,
                                       text=True, check=True).stdout)  # fmt: skip
    pid = status.get("monitoring", {}).get("prometheus", {}).get("pid")
    if pid:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def scraping(every: float) -> Iterator[None]:
    """A Prometheus of our own scraping the lab's targets every ``every`` s, no rules."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        config = yaml.safe_load(subprocess.run([str(REPO / ".venv" / "bin" / "vmctl"), "monitoring",
                                                "scrape-config"], capture_output=True, text=True,
                                               check=True).stdout)  # fmt: skip
        config["global"]["scrape_interval"] = f"{round(every * 1000)}ms"
        config["global"]["scrape_timeout"] = f"{round(min(every, 10) * 1000)}ms"
        config.pop("rule_files", None)
        for job in config["scrape_configs"]:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
        path = Path(tmp) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = _free_port()
        log = (Path(tmp) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = (Path(tmp) / "prometheus.log").read_text()[-1500:]
                        raise SystemExit(f"the bench's Prometheus did not start:\n{tail}") from None
                    time.sleep(0.2)
            time.sleep(every)  # its first scrapes are under way
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=1, help="repeat, reporting each")
    parser.add_argument(
        "--scrape-every",
        type=float,
        default=0,
        metavar="S",
        help="alternate rounds without and with Prometheus scraping every S s",
    )
    parser.add_argument(
        "--vs-one-replica",
        action="store_true",
        help="alternate rounds with both replicas and with one (the second disabled in HAProxy "
        "through its admin socket, enabled again at the end)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="ask for a page of this many VMs (?limit=N)"
    )
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
        if args.scrape_every:
            results = alternate(args)
        elif args.vs_one_replica:
            results = replicas_alternate(args)
        else:
            results = [
                run(args.clients, args.seconds, args.vms, args.limit) for _ in range(args.rounds)
            ]
    finally:
        empty(url)
    started = datetime.now().isoformat(timespec="seconds")
    report: dict[str, object] = {
        "bench": "api_list", "vms": args.vms, "started": started, "runs": results,
    }  # fmt: skip
    if args.scrape_every:
        report["summary"] = summary(results)
    elif args.vs_one_replica:
        report["summary"] = summary(results, ("two replicas", "one replica"))
    print(json.dumps(report))


def alternate(args: argparse.Namespace) -> list[dict[str, object]]:
    results = []
    with lab_prometheus_paused():
        for i in range(args.rounds):
            scraped = i % 2 == 1
            with scraping(args.scrape_every) if scraped else contextlib.nullcontext():
                result = run(args.clients, args.seconds, args.vms)
            result["scraping"] = f"every {args.scrape_every} s" if scraped else "none"
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
    return results


ADMIN_SOCKET = Path("/var/lib/vmctl-lab/api/admin.sock")  # the lab HAProxy's (level admin)


def haproxy_admin(command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(ADMIN_SOCKET))
        sock.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


@contextlib.contextmanager
def one_replica() -> Iterator[None]:
    """The lab HAProxy sends nothing to its second replica (api/api2) meanwhile."""
    haproxy_admin("disable server api/api2")
    try:
        yield
    finally:
        haproxy_admin("enable server api/api2")


def replicas_alternate(args: argparse.Namespace) -> list[dict[str, object]]:
    results = []
    for i in range(args.rounds):
        one = i % 2 == 1
        with one_replica() if one else contextlib.nullcontext():
            result = run(args.clients, args.seconds, args.vms, args.limit)
        result["replicas"] = 1 if one else 2
        print(json.dumps(result), file=sys.stderr)
        results.append(result)
    return results


def summary(
    results: list[dict[str, object]], labels: tuple[str, str] = ("without", "with")
) -> dict[str, object]:
    """Medians of the even rounds and of the odd ones (without and with scraping, say), and the
    median of each pair's ratio (odd / even, a round against the round before it: the host's
    drift cancels out)."""
    out: dict[str, object] = {}
    pairs = list(zip(results[0::2], results[1::2], strict=False))
    for key in ("req_per_s", "p50_ms", "p99_ms"):
        without = statistics.median(float(a[key]) for a, _ in pairs)  # type: ignore[arg-type]
        with_ = statistics.median(float(b[key]) for _, b in pairs)  # type: ignore[arg-type]
        ratios = [float(b[key]) / float(a[key]) for a, b in pairs]  # type: ignore[arg-type]
        out[key] = {
            labels[0]: without,
            labels[1]: with_,
            "pair_ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
        }
    return out


if __name__ == "__main__":
    main()
