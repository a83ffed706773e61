"""`vmctl create --count N --wait-for ssh` against the same N VMs made one after another.

Both sides run on the lab (settings from `lab/lab env`), on the nodes placement picks (give an
inventory whose other nodes are full to pin it to two), RAM 256 MiB, 1 vCPU, no data disk, and
wait until SSH answers with each VM's host key. Rounds alternate which side goes first; every VM
is deleted after its round. Prints every round and the medians and their ratio (batch / one after
another); the issue's target is <= 0.6 for N=10 on 2 nodes.

    eval "$(lab/lab env)"; .venv/bin/python bench/batch.py --count 4 --rounds 2 [--vmctl PATH]

`--vmctl` names the vmctl to run (default: this checkout's .venv; bench/peers.py --setup installs
one from a wheel at /var/cache/vmctl-peers/vmctl-venv/bin/vmctl, untouched by edits of the tree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--ram", "256", "--cpu", "1", "--disk", "1", "--wait-for", "ssh", "--timeout", "900"]


def batch(vmctl: str, prefix: str, count: int) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [vmctl, "create", prefix, "--count", str(count), *ARGS, "-o", "json"],
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - started
    made = [vm["name"] for vm in json.loads(proc.stdout or "[]")]
    delete(vmctl, made or [f"{prefix}-{i}" for i in range(1, count + 1)])
    if proc.returncode != 0:
        raise SystemExit(f"create --count {count} failed:\n{proc.stderr[-3000:]}")
    return took


def one_after_another(vmctl: str, prefix: str, count: int) -> float:
    started = time.monotonic()
    names = []
    try:
        for i in range(1, count + 1):
            name = f"{prefix}-{i}"
            names.append(name)
            proc = subprocess.run([vmctl, "create", name, *ARGS], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"create {name} failed:\n{proc.stderr[-3000:]}")
        return time.monotonic() - started
    finally:
        delete(vmctl, names)


def delete(vmctl: str, names: list[str]) -> None:
    if names:
        subprocess.run([vmctl, "delete", "--yes", *names], capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vmctl", default=str(REPO / ".venv" / "bin" / "vmctl"))
    args = parser.parse_args()
    took: dict[str, list[float]] = {"batch": [], "one after another": []}
    tag = os.getpid() % 1000  # names of their own: old leases keep old names
    for r in range(args.rounds):
        order = ("batch", "one after another") if r % 2 == 0 else ("one after another", "batch")
        for side in order:
            prefix = f"bb{tag}-{r}" if side == "batch" else f"bs{tag}-{r}"
            run = batch if side == "batch" else one_after_another
            took[side].append(run(args.vmctl, prefix, args.count))
            print(f"round {r + 1}: {side}: {took[side][-1]:.1f} s", flush=True)
    med = {side: statistics.median(v) for side, v in took.items()}
    ratio = med["batch"] / med["one after another"]
    print(
        f"median: batch {med['batch']:.1f} s, one after another {med['one after another']:.1f} s,"
        f" ratio {ratio:.2f}",
        file=sys.stderr,
    )
    print(json.dumps({"bench": "batch", "count": args.count, "runs": took, "ratio": ratio}))


if __name__ == "__main__":
    main()
