"""How fast `vmctl watch-ip` records a new VM's address, and what it costs while idle.

latency: creates VMs (no --wait; nobody but the lab's watcher looks for their addresses), half on
each node, and watches every node's DHCP lease file from this machine (the nodes' /var/lib/libvirt
is a directory here) every 10 ms. For each VM: the delay from its lease appearing in the file to
the watcher's `ip` event in PostgreSQL (same clock). Prints p50, p95 and max, and deletes the VMs.

idle: puts 100 VMs (rows with confirmed addresses, half per node) into PostgreSQL, starts a
second `vmctl watch-ip`, lets it settle, then reads its CPU time and memory from /proc over a
window. Removes the rows afterwards.

Run with the lab up:

    eval "$(lab/lab env)"; .venv/bin/python bench/watch_ip.py latency --vms 10 --rounds 2
    eval "$(lab/lab env)"; .venv/bin/python bench/watch_ip.py latency --vms 10 --rounds 2 \
        --watchers follow,poll   # the lease follower against looks alone, alternating
    eval "$(lab/lab env)"; .venv/bin/python bench/watch_ip.py idle --vms 100 --seconds 120

idle-scale: the same at cloud scale, in a schema of its own in the lab's database (dropped
afterwards): --vms rows (default 100,000) put in by INSERTs of 5,000, all with confirmed
addresses, spread over the lab's nodes; then one `vmctl watch-ip` per --code (a checkout of
vmctl: its own migrations and code, e.g. a `git worktree` of an older commit; default this one),
in turn, each in a fresh schema. --changes N also changes N rows (one address each) per second
during the window, so what one change costs shows; --watch-args gives watch-ip's arguments (repeat
it for variants run in turn); --reconcile then times one `vmctl reconcile` report over the same
VMs; --latency N then makes N new VMs one by one and times each from its lease (a DHCP client on
the node's guest bridge, no boot) to its address recorded:

    eval "$(lab/lab env)"; .venv/bin/python bench/watch_ip.py idle-scale --vms 100000 --seconds 60 \
        --watch-args="--reconcile-every 0" --watch-args=""
    git worktree add /tmp/vmctl-old 4644391
    eval "$(lab/lab env)"; .venv/bin/python bench/watch_ip.py idle-scale --code /tmp/vmctl-old,.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))

from labkit import cli as lab_cli  # noqa: E402
from labkit import config  # noqa: E402
from labkit import watcher as lab_watcher  # noqa: E402

from vmctl.adapters.store import PgStore  # noqa: E402
from vmctl.core import hostkeys  # noqa: E402
from vmctl.core.records import NewVm  # noqa: E402

VMCTL = str(REPO / ".venv" / "bin" / "vmctl")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def lease_files() -> list[Path]:
    return [node.dir / "lib" / "dnsmasq" / f"{config.GUEST_BRIDGE}.status" for node in nodes()]


def nodes() -> list[config.Node]:
    state = json.loads(config.STATE_FILE.read_text())
    return config.nodes(int(state["node_count"]))


class LeaseClock:
    """The wall-clock time each MAC first shows up in a node's lease file (polled every 10 ms)."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        files = lease_files()
        while not self._stop.is_set():
            for path in files:
                try:
                    leases = json.loads(path.read_text() or "[]")
                except (OSError, ValueError):
                    continue
                now = time.time()
                for lease in leases:
                    self.first_seen.setdefault(lease["mac-address"].lower(), now)
            time.sleep(0.01)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class OwnWatcher:
    """In place of the lab's watcher for one round: `vmctl watch-ip ARGS` (None: the lab's)."""

    def __init__(self, args: list[str] | None, env: dict[str, str]) -> None:
        self.args, self.env = args, env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OwnWatcher:
        if self.args is not None:
            lab_watcher.stop()
            with open(Path(config.LAB_DIR) / "bench-watch-ip.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [VMCTL, "watch-ip", *self.args], env=self.env, stdout=log, stderr=log
                )
            time.sleep(3)  # connected to every node
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            lab_watcher.start(lab_cli.vmctl_settings())


def latency(
    vms: int, rounds: int, ram_mb: int, stagger_s: float, watchers: list[str]
) -> dict[str, object]:
    env = dict(os.environ)
    store = PgStore(env["VMCTL_DATABASE_URL"])
    delays: dict[str, list[float]] = {}
    boot_s: list[float] = []
    no_lease: list[str] = []  # their console logs say why (see docs/benchmarks.md)
    run_id = secrets.token_hex(2)  # names never seen before: the event log keeps old runs
    for round_no in range(1, rounds + 1):
        names = [f"bench-ip-{run_id}-{round_no}-{i}" for i in range(1, vms + 1)]
        kind = watchers[(round_no - 1) % len(watchers)]  # alternating, in one window
        own = None if kind == "lab" else ([] if kind == "follow" else ["--no-follow"])
        with OwnWatcher(own, env), LeaseClock() as clock:
            made = {}
            try:
                for i, name in enumerate(names):
                    node = f"node{i % 2 + 1}"
                    proc = subprocess.run(
                        [VMCTL, "create", name, "--node", node, "--ram", str(ram_mb), "--json"],
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    if proc.returncode != 0:
                        raise SystemExit(f"create {name} failed: {proc.stderr}")
                    made[name] = (json.loads(proc.stdout), time.time())
                    time.sleep(stagger_s)
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    if all(store.get(n).ip_state == "confirmed" for n in made):
                        break
                    time.sleep(1)
                for name, (vm, created) in made.items():
                    event = next((e for e in store.events(name) if e["action"] == "ip"), None)
                    seen = clock.first_seen.get(vm["mac"].lower())
                    if event is None or seen is None:  # a guest that never booted to DHCP
                        no_lease.append(name)
                        print(f"{name} [{kind}]: no lease in 15 minutes", file=sys.stderr)
                        continue
                    delay = event["at"].timestamp() - seen
                    delays.setdefault(kind, []).append(delay)
                    boot_s.append(seen - created)
                    print(
                        f"{name} [{kind}]: lease {seen - created:5.1f} s after create, "
                        f"in PostgreSQL {delay:.3f} s later ({event['detail']['source']})",
                        file=sys.stderr,
                    )
            finally:
                if made:
                    subprocess.run(
                        [VMCTL, "delete", "--yes", *made], env=env, capture_output=True, text=True
                    )
    store.close()
    return {
        "rounds": rounds,
        "stagger_s": stagger_s,
        "lease_to_postgres_s": {
            kind: {
                "vms": len(values),
                "p50": round(statistics.median(values), 3),
                "p95": round(percentile(values, 95), 3),
                "max": round(max(values), 3),
                "min": round(min(values), 3),
            }
            for kind, values in delays.items()
        },
        "create_to_lease_s_median": round(statistics.median(boot_s), 1),
        "no_lease": no_lease,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def idle(vms: int, seconds: float, settle: float) -> dict[str, object]:
    env = dict(os.environ)
    names = [f"bench-idle-{i:03d}" for i in range(vms)]
    lab_nodes = nodes()
    with PgStore(env["VMCTL_DATABASE_URL"]) as store:
        for i, name in enumerate(names):
            node = lab_nodes[i % len(lab_nodes)]
            vm = NewVm(name, 256, 1, 1, 4, config.IMAGE_NAME, hostkeys.new_mac())
            store.claim(vm, lambda _usage, n=node: n.name)  # type: ignore[misc]
            prefix = node.guest_subnet.rsplit(".", 1)[0]  # e.g. 10.213.11
            ip = f"{prefix}.{100 + (i // len(lab_nodes)) % 150}"  # no lease will ever match
            store.set_state(name, "running")
            store.set_ip(name, ip, "confirmed")
    log = Path(config.LAB_DIR) / "bench-watch-ip.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [VMCTL, "watch-ip"], env=env, stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        time.sleep(settle)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        memory = memory_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        with PgStore(env["VMCTL_DATABASE_URL"]) as store:
            for name in names:
                store.delete(name)
    return {
        "vms_known": vms,
        "window_s": round(t1 - t0, 1),
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "rss_mib": round(memory["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "log": str(log),
    }


def idle_scale(
    vms: int,
    seconds: float,
    settle: float,
    code: Path,
    changes: float,
    args: Sequence[str],
    reconcile: bool = False,
    latency: int = 0,
) -> dict[str, object]:
    """One watcher of ``code`` over ``vms`` rows in a fresh schema (see the module's doc)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    base = os.environ["VMCTL_DATABASE_URL"]
    schema = f"bench_watch_{secrets.token_hex(4)}"
    url = make_conninfo(base, options=f"-csearch_path={schema}")
    lab_nodes = [n.name for n in nodes()]
    python = str(REPO / ".venv" / "bin" / "python")
    env = {**os.environ, "VMCTL_DATABASE_URL": url, "PYTHONPATH": str(code)}
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        upgrade = (
            "import os; from vmctl.adapters import db; db.upgrade(os.environ['VMCTL_DATABASE_URL'])"
        )
        subprocess.run([python, "-c", upgrade], env=env, check=True, cwd=code)
        with psycopg.connect(url, autocommit=True) as conn:
            for first in range(1, vms + 1, 5000):  # in statements of 5,000 rows: see schema 0008
                conn.execute(
                    """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image,
                                        mac, ip, ip_state)
                       SELECT 'scale-' || i, (%(nodes)s::text[])[1 + i %% %(n)s], 'running', 256,
                              1, 1, 4, 'bench',
                              '52:54:01:' || regexp_replace(lpad(to_hex(i), 6, '0'),
                                                            '(..)(..)(..)', '\\1:\\2:\\3'),
                              ('10.250.0.0'::inet + i), 'confirmed'
                       FROM generate_series(%(first)s::int, %(last)s::int) AS i""",
                    {
                        "nodes": lab_nodes,
                        "n": len(lab_nodes),
                        "first": first,
                        "last": min(vms, first + 4999),
                    },
                )
        log = Path(config.LAB_DIR) / f"bench-watch-ip-{schema}.log"
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                [python, "-m", "vmctl", "watch-ip", *args],
                env=env,
                cwd=code,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        stop = threading.Event()
        changer = threading.Thread(target=_change_rows, args=(url, vms, changes, stop))
        try:
            time.sleep(settle)
            if changes:
                changer.start()
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            memory = memory_kib(proc.pid)
            lags = _lease_lags(url, latency) if latency else []
        finally:
            stop.set()
            if changer.is_alive():
                changer.join()
            proc.terminate()
            proc.wait(timeout=30)
        report = _reconcile_cost(python, env, code) if reconcile else {}
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    return {
        "code": str(code),
        "vms_known": vms,
        "changes_per_s": changes,
        "args": " ".join(args),
        "window_s": round(t1 - t0, 1),
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "rss_mib": round(memory["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "exit": proc.returncode,
        "log": str(log),
        **report,
        **(
            {"lease_to_record_s": lags, "lease_to_record_p50_s": round(statistics.median(lags), 3)}
            if lags
            else {}
        ),
    }


def _lease_lags(url: str, count: int) -> list[float]:
    """``count`` new VM rows, one at a time, a node each in turn, each given a lease by a DHCP
    client on its node's guest bridge (guests.dhcp_exchange: no boot): the seconds from the
    lease to the watcher's confirmed address, polled every 10 ms."""
    import guests

    lab = guests.status()
    lags = []
    with PgStore(url) as store:
        for i in range(count):
            node = lab["nodes"][i % len(lab["nodes"])]
            name = f"lag-{secrets.token_hex(3)}"
            mac = hostkeys.new_mac()
            vm = NewVm(name, 256, 1, 1, 4, config.IMAGE_NAME, mac)
            store.claim(vm, lambda _u, n=node["name"]: n)  # type: ignore[misc]
            time.sleep(1.5)  # the watcher has read the new row (it reads once a second)
            hv = guests.hypervisor(node, lab)
            if guests.dhcp_exchange(hv, node, mac) is None:
                continue
            leased = time.monotonic()
            while store.get(name).ip_state != "confirmed":
                if time.monotonic() - leased > 30:
                    break
                time.sleep(0.01)
            else:
                lags.append(round(time.monotonic() - leased, 3))
            hv.close()
    return lags


def _reconcile_cost(python: str, env: dict[str, str], code: Path) -> dict[str, object]:
    """One `vmctl reconcile` report over the same VMs (what `watch-ip --reconcile-every` runs
    in the watcher's process): wall time, CPU time and peak memory, by GNU time."""
    t0 = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%U %S %M", python, "-m", "vmctl", "reconcile", "-o", "json"],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
    )
    user, system, max_kib = done.stderr.strip().splitlines()[-1].split()
    return {
        "reconcile_wall_s": round(time.monotonic() - t0, 1),
        "reconcile_cpu_s": round(float(user) + float(system), 1),
        "reconcile_peak_rss_mib": round(int(max_kib) / 1024, 1),
        "reconcile_exit": done.returncode,
    }


def _change_rows(url: str, vms: int, per_s: float, stop: threading.Event) -> None:
    """``per_s`` rows a second get another confirmed address, until ``stop``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        i = 0
        while not stop.wait(1 / per_s):
            i += 1
            conn.execute(
                "UPDATE vms SET ip = ip + 1 WHERE name = %s", (f"scale-{1 + i * 7919 % vms}",)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p_lat = sub.add_parser("latency")
    p_lat.add_argument("--vms", type=int, default=10)
    p_lat.add_argument("--rounds", type=int, default=1)
    p_lat.add_argument("--ram", type=int, default=256)
    p_lat.add_argument(
        "--stagger", type=float, default=0, help="seconds between creates (0: all at once)"
    )
    p_lat.add_argument(
        "--watchers",
        default="lab",
        help="which watcher records, round by round in turn: lab (the lab's own), follow "
        "(vmctl watch-ip), poll (vmctl watch-ip --no-follow); e.g. follow,poll",
    )
    p_scale = sub.add_parser("idle-scale")
    p_scale.add_argument("--vms", type=int, default=100_000)
    p_scale.add_argument("--seconds", type=float, default=60)
    p_scale.add_argument("--settle", type=float, default=30)
    p_scale.add_argument("--changes", type=float, default=0, help="row changes per second")
    p_scale.add_argument("--code", default=".", help="vmctl checkouts, comma-separated, in turn")
    p_scale.add_argument("--rounds", type=int, default=1)
    p_scale.add_argument(
        "--reconcile", action="store_true", help="then time one `vmctl reconcile` report"
    )
    p_scale.add_argument(
        "--latency", type=int, default=0, help="then N new VMs: lease to recorded address"
    )
    p_scale.add_argument(
        "--watch-args",
        action="append",
        default=[],
        help="arguments of `vmctl watch-ip`, in turn (repeat: each a variant)",
    )
    p_idle = sub.add_parser("idle")
    p_idle.add_argument("--vms", type=int, default=100)
    p_idle.add_argument("--seconds", type=float, default=120)
    p_idle.add_argument("--settle", type=float, default=15)
    args = parser.parse_args()
    started = datetime.now().isoformat(timespec="seconds")
    if args.what == "latency":
        kinds = args.watchers.split(",")
        if not set(kinds) <= {"lab", "follow", "poll"}:
            parser.error(f"--watchers: not lab, follow or poll: {args.watchers}")
        result = latency(args.vms, args.rounds, args.ram, args.stagger, kinds)
    elif args.what == "idle-scale":
        runs = [
            idle_scale(
                args.vms,
                args.seconds,
                args.settle,
                Path(code).resolve(),
                args.changes,
                extra,
                args.reconcile,
                args.latency,
            )
            for _round in range(args.rounds)
            for code in args.code.split(",")
            for extra in [shlex.split(a) for a in args.watch_args or [""]]
        ]
        result = {"runs": runs}
    else:
        result = idle(args.vms, args.seconds, args.settle)
    print(json.dumps({"bench": args.what, "started": started, **result}, indent=2))


if __name__ == "__main__":
    main()
