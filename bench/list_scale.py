"""`vmctl list` and GET /api/v1/vm with 100,000 VMs, against a throwaway PostgreSQL of its own.

Needs no lab: it runs Debian's initdb/pg_ctl (as the `postgres` user when started as root) in a
temporary directory, on a free loopback port (never the lab's 15432), with a random password;
applies vmctl's migrations (`vmctl db upgrade`), puts ROWS VM rows into it (every field in each
of its forms: no address, an expected one, a confirmed one; with and without a group; timestamps
with and without microseconds) and first checks, untimed, that the streamed `vmctl list -o json`
is byte for byte what the record path (PgStore.list -> output.record -> emit) writes, that a
table says on stderr how many it left out, and that the API's pages add up to its whole list.

Then, alternating the order every round, ROUNDS times: `vmctl list -o json`, `vmctl list` (a
table: the first 500, with a note) and `vmctl list --limit 0` (the whole table; skipped, with a
note, once a run takes more than --whole-timeout s), each a fresh process with stdout to
/dev/null, timing it and reading its peak RSS (wait4's ru_maxrss, in a small wrapper process).
And `vmctl serve` on another free loopback port, with a token of the VMs' project: GET
/api/v1/vm whole just after a VM changed (the list built by PostgreSQL), whole again unchanged
(the replica's kept copy), one page of `?limit=1000` just after a change, and every page of 1000
by following the Link headers; each timed from the request to the body's last byte, over one
kept-alive connection. Prints every run, the medians and the server's peak RSS; the PostgreSQL,
the server and the directory are removed at the end, also on a failure or Ctrl-C. Every VMCTL_*
of the caller's environment is ignored.

    .venv/bin/python bench/list_scale.py --rows 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import psycopg

REPO = Path(__file__).resolve().parent.parent
VMCTL = str(REPO / ".venv" / "bin" / "vmctl")
LAB_PG_PORT = 15432  # the lab's: never used here
PROJECT = "bench"
PAGE = 1000
IDLE_S = 2.0  # uvicorn closes a kept-alive connection idle for 5 s
COMMANDS = {
    "list -o json": ["list", "-o", "json"],
    "list (table, first 500)": ["list"],
    "list --limit 0 (whole table)": ["list", "--limit", "0"],
}
WHOLE_TABLE = "list --limit 0 (whole table)"

# Realistic rows: 40 nodes, most VMs running, addresses confirmed, some in groups; every form of
# each field (see the module's doc) so the byte-for-byte check covers them.
_FILL = """
INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac, ip, ip_state,
                 group_name, project, created_at, updated_at)
SELECT format('vm-%%s', lpad(i::text, 6, '0')),
       format('node%%s', 1 + i %% 40),
       (ARRAY['running', 'running', 'running', 'running', 'running', 'stopped', 'creating',
              'error'])[1 + i %% 8],
       512 * (1 + i %% 16), 1 + i %% 8, i %% 200, 10,
       (ARRAY['debian-12', 'ubuntu-24.04'])[1 + i %% 2],
       format('52:54:00:%%s:%%s:%%s', lpad(to_hex(i / 65536 %% 256), 2, '0'),
              lpad(to_hex(i / 256 %% 256), 2, '0'), lpad(to_hex(i %% 256), 2, '0')),
       CASE WHEN i %% 10 <> 0 THEN ('10.' || (20 + i / 65536) || '.' || (i / 256 %% 256) || '.'
                                   || (i %% 256))::inet END,
       CASE WHEN i %% 10 = 0 THEN NULL WHEN i %% 10 = 1 THEN 'expected' ELSE 'confirmed' END,
       CASE WHEN i %% 5 = 0 THEN format('web-%%s', i %% 7) END,
       %(project)s,
       timestamptz '2026-06-01 00:00:00+00' + i * interval '61.000250 second'
           - CASE WHEN i %% 7 = 0 THEN interval '0.000250 second' * i ELSE interval '0' END,
       timestamptz '2026-12-03 07:00:00+00' + i * interval '1.5 second'
FROM generate_series(1, %(rows)s) AS i
"""


class Stop(Exception):
    """SIGTERM or SIGHUP: leave through the `finally`s, as Ctrl-C does."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != LAB_PG_PORT:
            return port


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise SystemExit("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql")
    return found[-1].parent


@contextlib.contextmanager
def throwaway_postgres(root: Path) -> Iterator[str]:
    """A PostgreSQL of its own under ``root`` (fsync off: a benchmark's data), its database
    ``vmctl`` owned by role ``vmctl``: yields that role's URL; stopped on leaving."""
    bin_dir = pg_bin()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    superuser = "postgres" if as_postgres else os.environ.get("USER", "postgres")
    data, run_dir = root / "data", root / "run"
    run_dir.mkdir()
    password = secrets.token_hex(16)
    pwfile = root / "superuser.password"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
        for path in (run_dir, pwfile):
            shutil.chown(path, "postgres", "postgres")
    subprocess.run(
        [
            *as_postgres,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            superuser,
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",  # as the lab: names sort as Python sorts them
            "--auth=scram-sha-256",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={run_dir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    # its own session: a Ctrl-C reaches this script, whose `finally` stops the server
    subprocess.run(
        [*pg_ctl, "-l", str(root / "postgres.log"), "-o", opts, "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
        start_new_session=True,
    )
    try:
        admin = f"postgresql://{superuser}:{password}@127.0.0.1:{port}/postgres"
        vmctl_password = secrets.token_hex(16)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE vmctl LOGIN PASSWORD '{vmctl_password}'")
            conn.execute("CREATE DATABASE vmctl OWNER vmctl")
        yield f"postgresql://vmctl:{vmctl_password}@127.0.0.1:{port}/vmctl"
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "fast", "-w", "-t", "60", "stop"],
            capture_output=True,
            start_new_session=True,
        )


def vmctl_env(root: Path, url: str) -> dict[str, str]:
    """The caller's environment without any VMCTL_* (never the lab's), and this bench's own."""
    inventory = root / "inventory.yaml"
    nodes = "".join(
        f"""  - name: node{n}
    ssh: {{host: 127.0.0.1}}
    capacity: {{cpu: 512, ram_mb: 2097152, disk_gb: 100000}}
    storage: {{type: dir, path: /srv/vms}}
    network: {{name: vmnet, subnet: 10.{n}.0.0/16, gateway: 10.{n}.0.1}}
"""
        for n in range(1, 41)
    )
    inventory.write_text(
        "defaults: {image: debian-12, ram_mb: 512, cpu: 1, disk_gb: 2, root_gb: 10}\n"
        "images:\n"
        "  debian-12: {path: /srv/base/debian-12.qcow2, default_user: debian}\n"
        "  ubuntu-24.04: {path: /srv/base/noble.img, default_user: ubuntu}\n"
        f"nodes:\n{nodes}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    return {
        **env,
        "VMCTL_DATABASE_URL": url,
        "VMCTL_INVENTORY": str(inventory),
        "VMCTL_CONFIG": str(root / "no-config.toml"),
        "VMCTL_SSH_KEY": str(root / "no-key"),
    }


def vmctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [VMCTL, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise SystemExit(f"vmctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_FILL, {"project": PROJECT, "rows": rows})
        conn.execute("VACUUM ANALYZE vms")  # as a table that has been there a while


def change_a_vm(url: str) -> None:
    """One VM's row changes (as the watcher's confirmation of an address would): the API's kept
    lists are stale, the next GET builds its list again."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE vms SET updated_at = now() WHERE name = 'vm-000001'")


# Runs the command and writes its seconds, peak RSS (KiB) and exit code to a file. A process's
# ru_maxrss starts at what its parent held when it forked (Linux carries it across exec): this
# small wrapper, not the bench (which holds 100,000 records once), is the command's parent.
_MEASURE = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
took = time.perf_counter() - started
with open(out, "w") as f:
    f.write(f"{took} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def timed(env: dict[str, str], args: list[str], timeout: float) -> tuple[float, float] | None:
    """Seconds and peak RSS (MiB) of one `vmctl` process; None if it ran past ``timeout``."""
    with (
        open(os.devnull, "w") as sink,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r") as result,
    ):
        wrapper = subprocess.Popen(
            [sys.executable, "-S", "-c", _MEASURE, result.name, VMCTL, *args],
            env=env,
            stdout=sink,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # killed as a group past the timeout
        )
        try:
            wrapper.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
            return None
        except BaseException:  # Ctrl-C: the command goes too
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
            raise
        took, rss_kib, code = result.read().split()
        if wrapper.returncode != 0 or code != "0":
            err.seek(0)
            raise SystemExit(f"vmctl {' '.join(args)} failed ({code}): {err.read()}")
    return float(took), int(rss_kib) / 1024


def record_path_json(url: str) -> str:
    """What `vmctl list -o json` wrote before it streamed: records through `emit`."""
    from vmctl.adapters.store import PgStore
    from vmctl.cli.options import Format
    from vmctl.cli.output import emit, record

    out = io.StringIO()
    with PgStore(url) as store:
        emit([record(vm) for vm in store.list()], [], Format.json, out)
    return out.getvalue()


class Api:
    """`vmctl serve` on a free loopback port, and a kept-alive connection to it."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.token = vmctl(env, "token", "create", "--project", PROJECT).stdout.strip()
        self.port = free_port()
        self.log = open(root / "serve.log", "w")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [VMCTL, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        self.used = time.monotonic()
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get("/readyz")[0] == 200:
                    break
            except OSError:
                self.conn.close()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"vmctl serve did not come up: see {root / 'serve.log'}")
            time.sleep(0.2)

    def get(self, path: str) -> tuple[int, bytes, str | None]:
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
        response = self.conn.getresponse()
        self.used = time.monotonic()
        return response.status, response.read(), response.getheader("Link")

    def timed(self, path: str) -> tuple[float, bytes, str | None]:
        if time.monotonic() - self.used > IDLE_S:  # uvicorn may have closed it: a new one, untimed
            self.conn.close()
            self.conn.connect()
        started = time.perf_counter()
        status, body, link = self.get(path)
        took = time.perf_counter() - started
        if status != 200:
            raise SystemExit(f"GET {path}: {status} {body[:300]!r}")
        return took, body, link

    def walk(self, first: str) -> tuple[float, list[bytes]]:
        """Every page from ``first`` on, following rel="next": seconds and the bodies."""
        started, bodies, path = time.perf_counter(), [], first
        while path:
            _, body, link = self.timed(path)
            bodies.append(body)
            path = link.split(">")[0].lstrip("<") if link else ""
        return time.perf_counter() - started, bodies

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def check(env: dict[str, str], url: str, api: Api, rows: int) -> None:
    """Untimed: the outputs are right before they are timed."""
    streamed = vmctl(env, "list", "-o", "json").stdout
    if streamed != record_path_json(url):
        raise SystemExit("vmctl list -o json differs from the record path's text")
    print(f"check: vmctl list -o json ({len(streamed) / 2**20:.1f} MiB) = the record path's text")
    table = vmctl(env, "list")
    if len(table.stdout.splitlines()) != 501 or f"of {rows} in all" not in table.stderr:
        raise SystemExit(f"vmctl list: {len(table.stdout.splitlines())} lines, {table.stderr}")
    print(f"check: vmctl list: 500 rows and on stderr: {table.stderr.strip()}")
    _, whole, link = api.timed("/api/v1/vm")
    _, pages = api.walk(f"/api/v1/vm?limit={PAGE}")
    paged = [vm for body in pages for vm in json.loads(body)]
    if link is not None or json.loads(whole) != paged or len(paged) != rows:
        raise SystemExit("GET /api/v1/vm: the pages do not add up to the whole list")
    print(f"check: GET /api/v1/vm ({len(whole) / 1e6:.1f} MB) = its {len(pages)} pages of {PAGE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--whole-timeout",
        type=float,
        default=120.0,
        help="seconds a `vmctl list --limit 0` may take; past that it is skipped",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    root = Path(tempfile.mkdtemp(prefix="vmctl-list-bench-"))
    api: Api | None = None
    try:
        with throwaway_postgres(root) as url:
            env = vmctl_env(root, url)
            vmctl(env, "db", "upgrade")
            started = time.perf_counter()
            fill(url, args.rows)
            print(f"{args.rows} VMs in {time.perf_counter() - started:.1f} s; {url.split('@')[1]}")
            api = Api(env, root)
            check(env, url, api, args.rows)
            cli = run_cli(env, args.rounds, args.whole_timeout)
            served = run_api(api, url, args.rounds)
            print(f"--- medians of {args.rounds} rounds, {args.rows} VMs")
            for label, results in cli.items():
                if not results:
                    print(f"median: vmctl {label}: skipped (past {args.whole_timeout:.0f} s)")
                    continue
                seconds = statistics.median(t for t, _ in results)
                mib = statistics.median(m for _, m in results)
                print(f"median: vmctl {label}: {seconds:.2f} s, {mib:.0f} MiB peak RSS")
            for label, times in served.items():
                print(f"median: {label}: {statistics.median(times):.3f} s")
            print(f"vmctl serve: {api.peak_rss_mib():.0f} MiB peak RSS")
    finally:
        if api is not None:
            api.close()
        shutil.rmtree(root, ignore_errors=True)


def run_cli(
    env: dict[str, str], rounds: int, whole_timeout: float
) -> dict[str, list[tuple[float, float]]]:
    print("--- each command's stdout to /dev/null")
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in COMMANDS}
    skip: set[str] = set()
    for r in range(rounds):
        labels = list(COMMANDS) if r % 2 == 0 else list(reversed(COMMANDS))
        for label in labels:
            if label in skip:
                continue
            got = timed(env, COMMANDS[label], whole_timeout)
            if got is None:
                print(f"round {r + 1}: vmctl {label}: past {whole_timeout:.0f} s, skipped from now")
                skip.add(label)
                runs[label] = []
                continue
            runs[label].append(got)
            print(f"round {r + 1}: vmctl {label}: {got[0]:.2f} s, {got[1]:.0f} MiB")
    return runs


def run_api(api: Api, url: str, rounds: int) -> dict[str, list[float]]:
    print("--- GET /api/v1/vm, one kept-alive connection; 'changed': just after a VM's row changed")

    def whole_changed() -> tuple[float, str]:
        change_a_vm(url)
        took, body, _ = api.timed("/api/v1/vm")
        return took, f"{len(body) / 1e6:.1f} MB"

    def whole_kept() -> tuple[float, str]:
        api.timed("/api/v1/vm")  # kept now, whatever ran before
        took, body, _ = api.timed("/api/v1/vm")
        return took, f"{len(body) / 1e6:.1f} MB"

    def page_changed() -> tuple[float, str]:
        change_a_vm(url)
        took, body, _ = api.timed(f"/api/v1/vm?limit={PAGE}")
        return took, f"{len(body) / 1e3:.0f} kB"

    def every_page_changed() -> tuple[float, str]:
        change_a_vm(url)
        took, bodies = api.walk(f"/api/v1/vm?limit={PAGE}")
        return took, f"{len(bodies)} pages"

    steps: dict[str, Callable[[], tuple[float, str]]] = {
        "GET /api/v1/vm (whole, changed)": whole_changed,
        "GET /api/v1/vm (whole, unchanged: kept)": whole_kept,
        f"GET /api/v1/vm?limit={PAGE} (first page, changed)": page_changed,
        f"GET /api/v1/vm?limit={PAGE} (every page, changed)": every_page_changed,
    }
    times: dict[str, list[float]] = {label: [] for label in steps}
    for r in range(rounds):
        labels = list(steps) if r % 2 == 0 else list(reversed(steps))
        for label in labels:
            took, size = steps[label]()
            times[label].append(took)
            print(f"round {r + 1}: {label}: {took:.3f} s ({size})")
    return times


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Stop) as stopped:
        print(f"stopped ({stopped or type(stopped).__name__}); cleaned up", file=sys.stderr)
        raise SystemExit(130) from None
