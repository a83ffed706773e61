"""Placement at scale: 10,000 VMs onto 1,000 nodes, pure functions, no I/O.

Builds NODES nodes (32-128 vCPU, 128-512 GiB, 2-8 TiB; overcommit CPU 4, RAM 1.5, disk 1) and VMS
requests (sizes 1/512 MiB/10 GiB, 2/2 GiB/20, 4/8 GiB/40, 8/16 GiB/80; 10 % in one of 5
anti-affinity groups, 5 % pinned to a node), then times, ROUNDS times, `place_many` (the batch:
vmctl.core.placement_batch) and, on a SAMPLE of the same requests, `place` one after another with
the usage updated after each (what placing them one by one costs; 10,000 that way take ~40 s, so
the per-VM time of the sample is scaled up and reported as such). Both must give the same nodes on
the sample. Prints every round and the medians.

    .venv/bin/python bench/placement.py --vms 10000 --nodes 1000 --rounds 5 --sample 1000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmctl.core.placement import NodeLoad, Request, Resources, place
from vmctl.core.placement_batch import place_many

SIZES = [Resources(1, 512, 10), Resources(2, 2048, 20), Resources(4, 8192, 40)]
SIZES.append(Resources(8, 16384, 80))


def build(vms: int, nodes: int, seed: int = 1) -> tuple[list[NodeLoad], list[Request]]:
    rnd = random.Random(seed)
    loads = [
        NodeLoad(
            f"node{i:04d}",
            Resources(
                rnd.choice([32, 64, 128]),
                rnd.choice([128, 256, 512]) * 1024,
                rnd.choice([2, 4, 8]) * 1024,
            ),
            4.0,
            1.5,
            1.0,
            Resources(0, 0, 0),
        )
        for i in range(nodes)
    ]
    requests = []
    for i in range(vms):
        roll = rnd.random()
        group = f"group{rnd.randrange(5)}" if roll < 0.10 else None
        pinned = loads[rnd.randrange(nodes)].name if 0.10 <= roll < 0.15 else None
        requests.append(Request(f"vm{i:05d}", rnd.choice(SIZES), node=pinned, group=group))
    return loads, requests


def one_by_one(requests: list[Request], nodes: list[NodeLoad]) -> list[str | None]:
    loads = {n.name: n for n in nodes}
    out: list[str | None] = []
    for r in requests:
        try:
            name = place(r, list(loads.values()))
        except Exception:  # CapacityError and the like: nothing booked
            out.append(None)
            continue
        n = loads[name]
        used = Resources(
            n.used.cpu + r.need.cpu, n.used.ram_mb + r.need.ram_mb, n.used.disk_gb + r.need.disk_gb
        )
        loads[name] = replace(n, used=used, groups=n.groups | {r.group} if r.group else n.groups)
        out.append(name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=int, default=1000, help="VMs placed one by one")
    args = parser.parse_args()
    nodes, requests = build(args.vms, args.nodes)
    print(f"{args.vms} VMs onto {args.nodes} nodes, {args.rounds} rounds")
    batch_s, single_ms = [], []
    for r in range(1, args.rounds + 1):
        started = time.perf_counter()
        placed = place_many(requests, nodes)
        batch_s.append(time.perf_counter() - started)
        sample = requests[: args.sample]
        started = time.perf_counter()
        reference = one_by_one(sample, nodes)
        single_ms.append((time.perf_counter() - started) / len(sample) * 1000)
        assert [p.node for p in placed[: args.sample]] == reference, "the two ways differ"
        failed = sum(p.error is not None for p in placed)
        print(
            f"round {r}: place_many {batch_s[-1]:.3f} s ({failed} not placed); "
            f"place one by one {single_ms[-1]:.2f} ms per VM on the first {len(sample)}"
        )
    per_vm = statistics.median(single_ms)
    print(f"median: place_many {statistics.median(batch_s):.3f} s for {args.vms} VMs")
    total_s = per_vm * args.vms / 1000
    print(
        f"median: one by one {per_vm:.2f} ms per VM (x {args.vms} = ~{total_s:.0f} s if they all"
        " cost what the first ones did; later ones see more groups, so more)"
    )


if __name__ == "__main__":
    main()
