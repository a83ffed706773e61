"""`vmctl list` with 100,000 VMs: wall time and peak memory of whole `vmctl` processes.

Puts ROWS VM rows into a schema of its own in the lab's PostgreSQL ($VMCTL_DATABASE_URL from
`lab/lab env`; dropped at the end), then runs, alternating, ROUNDS times: `vmctl list -o json`
(streamed: PostgreSQL builds each row's text), `vmctl list` (a table: the first 500, with a note)
and `vmctl list --limit 0` (the whole table), each with stdout to /dev/null, timing the process and
reading its peak RSS (wait4). Prints every run and the medians.

    eval "$(lab/lab env)"; .venv/bin/python bench/list_scale.py --rows 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parent.parent
VMCTL = str(REPO / ".venv" / "bin" / "vmctl")
COMMANDS = {
    "list -o json": ["list", "-o", "json"],
    "list (table)": ["list"],
    "list --limit 0": ["list", "--limit", "0"],
}


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac, ip,
                                ip_state, group_name, project)
               SELECT 'vm-' || lpad(i::text, 6, '0'), 'node' || (1 + i %% 3), 'running', 512, 1,
                      10, 4, 'debian-12', md5(i::text),
                      ('10.' || (i / 65536) || '.' || (i / 256 %% 256) || '.' || (i %% 256))::inet,
                      'confirmed', CASE WHEN i %% 5 = 0 THEN 'web' END, 'demo'
               FROM generate_series(1, %(rows)s) AS i""",
            {"rows": rows},
        )
        conn.execute("ANALYZE vms")


def timed(env: dict[str, str], args: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one `vmctl` process."""
    with open(os.devnull, "w") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen([VMCTL, *args], env=env, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - started
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"vmctl {' '.join(args)} failed: {err}")
    return took, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = os.environ["VMCTL_DATABASE_URL"]
    schema = f"vmctl_bench_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_conninfo(base, options=f"-csearch_path={schema}")
    env = {**os.environ, "VMCTL_DATABASE_URL": url, "PYTHONDONTWRITEBYTECODE": ""}
    try:
        subprocess.run([VMCTL, "db", "upgrade"], env=env, check=True, capture_output=True)
        fill(url, args.rows)
        print(f"{args.rows} VMs; each command's stdout to /dev/null")
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label in COMMANDS}
        for r in range(args.rounds):
            labels = list(COMMANDS) if r % 2 == 0 else list(reversed(COMMANDS))
            for label in labels:
                took, rss = timed(env, COMMANDS[label])
                runs[label].append((took, rss))
                print(f"round {r + 1}: vmctl {label}: {took:.2f} s, {rss:.0f} MiB")
        for label, results in runs.items():
            seconds = statistics.median(t for t, _ in results)
            mib = statistics.median(m for _, m in results)
            print(f"median: vmctl {label}: {seconds:.2f} s, {mib:.0f} MiB peak RSS")
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
