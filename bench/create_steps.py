"""Where `vmctl create` (no wait) spends its time until the domain is started, step by step.

Runs `vmctl create NAME --node NODE --ram 256 --disk 1` RUNS times (each VM deleted after) and
stamps each line of its stderr as it arrives: start of the process → "placed on" (start-up,
settings, the claim in PostgreSQL) → "creating disks and seed" (cloud-init seed, host key,
domain XML) → "domain started" (the SSH connection and the node script: reservation, disks,
seed ISO, define, start) → exit. Then, once, the node script's own steps: the same script run by
`bash -x` with a timestamp per command, the commands that took more than 20 ms.

    eval "$(lab/lab env)"; .venv/bin/python bench/create_steps.py --runs 5 [--vmctl PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKS = [("placed on", "placed"), ("creating disks", "rendered"), ("domain started", "started")]


def one(vmctl: str, name: str, node: str) -> dict[str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [vmctl, "create", name, "--node", node, "--ram", "256", "--disk", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    at: dict[str, float] = {}
    assert proc.stderr is not None
    for line in proc.stderr:
        for mark, step in MARKS:
            if mark in line and step not in at:
                at[step] = time.monotonic() - started
    if proc.wait() != 0:
        raise SystemExit(f"vmctl create {name} failed")
    at["exit"] = time.monotonic() - started
    return at


def node_trace(vmctl: str, node: str, name: str) -> list[tuple[float, str]]:
    """The node script's commands that took > 20 ms, from a run traced with `bash -x`."""
    script = REPO / "scripts" / "create-vm.sh"
    original = script.read_text()
    traced = original.replace(
        "set -Eeuo pipefail",
        "set -Eeuo pipefail; exec 2>>/tmp/vmctl-bench-trace; PS4='+ ${EPOCHREALTIME} '; set -x",
        1,
    )
    ssh = ["ssh", "-i", os.environ["LAB_SSH_KEY"], "-o"]
    ssh += [f"UserKnownHostsFile={os.environ['LAB_KNOWN_HOSTS']}", f"root@{node_address(node)}"]
    subprocess.run([*ssh, "rm -f /tmp/vmctl-bench-trace"], check=True)
    script.write_text(traced)  # vmctl of this checkout sends scripts/ as they are on disk
    try:
        one(vmctl, name, node)
    finally:
        script.write_text(original)
        subprocess.run([vmctl, "delete", "--yes", name], capture_output=True)
    lines = subprocess.run(
        [*ssh, "cat /tmp/vmctl-bench-trace; rm -f /tmp/vmctl-bench-trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    slow, previous = [], None
    for line in lines:
        fields = line.split(" ", 2)
        if len(fields) < 3 or not fields[0].startswith("+"):
            continue
        try:
            stamp = float(fields[1])
        except ValueError:
            continue
        if previous is not None and stamp - previous[0] > 0.02:
            slow.append((stamp - previous[0], previous[1][:110]))
        previous = (stamp, fields[2])
    return slow


def node_address(node: str) -> str:
    out = subprocess.run(
        [str(REPO / "lab" / "lab"), "status", "--json"], capture_output=True, text=True
    ).stdout
    return next(n["address"] for n in json.loads(out)["nodes"] if n["name"] == node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--node", default="node1")
    parser.add_argument("--vmctl", default=str(REPO / ".venv" / "bin" / "vmctl"))
    args = parser.parse_args()
    tag = os.getpid() % 1000
    runs = []
    for i in range(args.runs):
        name = f"cs{tag}-{i}"
        try:
            runs.append(one(args.vmctl, name, args.node))
        finally:
            subprocess.run([args.vmctl, "delete", "--yes", name], capture_output=True)
        print("run", i + 1, {k: round(v, 2) for k, v in runs[-1].items()}, flush=True)
    steps = ["placed", "rendered", "started", "exit"]
    previous = 0.0
    for step in steps:
        at = statistics.median(r[step] for r in runs)
        print(f"median: {step:9} at {at:5.2f} s (+{at - previous:.2f} s)")
        previous = at
    if args.vmctl == str(REPO / ".venv" / "bin" / "vmctl"):
        print("node script, commands over 20 ms (one traced run):")
        for took, command in node_trace(args.vmctl, args.node, f"cs{tag}-trace"):
            print(f"  {took:5.2f} s  {command}")


if __name__ == "__main__":
    main()
