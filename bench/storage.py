"""Create → SSH on one node: VM disks as local qcow2 files against disks in Ceph RBD (issue 12).

Alternates, on one node of the lab whose inventory puts its disks in RBD (node2 by default):
(local) `vmctl --inventory COPY create NAME --node NODE --wait-for ssh`, COPY being the lab's
inventory with that node's storage changed to `type: dir` in a directory this bench makes on the
node (root disk a qcow2 overlay of the node's base image file, data disk and seed files);
(rbd) the same command with the lab's inventory (root disk an RBD clone of BASE@base, data disk
and seed RBD images). 512 MiB, 1 vCPU, the lab's defaults otherwise. Each VM is deleted right
after its run, with the inventory it was made with. The clock starts before `vmctl` starts and
stops when it returns (SSH answers with the guest's key); vmctl's progress lines on stderr give
the split: "domain started" (the node-side step: upload, create-vm.sh, `virsh start`), the lease,
SSH. Then `--disk-runs` rounds of the disk commands alone on the node (what create-vm.sh runs for
each kind: qemu-img + genisoimage, or the rbd calls + genisoimage), alternating, on images and
files of its own. Prints every run, medians and the ratios rbd / local. Removes what it made
(VMs, the directory, the disk-only images), also when interrupted. Run with the lab up:

    eval "$(lab/lab env)"; .venv/bin/python bench/storage.py --runs 5

`--tree DIR` runs the vmctl of another checkout (DIR/vmctl, DIR/scripts, DIR/templates; first on
PYTHONPATH), e.g. `git archive HEAD vmctl scripts templates | tar -x -C DIR`, to measure a commit
while the working tree is being edited.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))

import guests  # noqa: E402

VMCTL = str(REPO / ".venv/bin/vmctl")
VARIANTS = ("local", "rbd")
PREFIX = {"local": "bst-l", "rbd": "bst-r"}
# Progress lines of `vmctl create` on stderr ("vmctl: NAME: ..."), in the order they come.
STEPS = {
    "creating": "creating disks and seed",
    "started": "domain started",
    "lease": "address ",
    "ssh": "SSH answers",
}


@dataclass
class Run:
    variant: str
    name: str
    total: float = 0.0
    at: dict[str, float] = field(default_factory=dict)  # step -> seconds after the start

    @property
    def node_step(self) -> float:
        return self.at["started"] - self.at["creating"]

    @property
    def boot(self) -> float:
        return self.at["ssh"] - self.at["started"]


class Node:
    def __init__(self, host: str) -> None:
        self.host = host
        self.ssh = guests.ssh_options(os.environ["LAB_SSH_KEY"], os.environ["LAB_KNOWN_HOSTS"])

    def run(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ssh", *self.ssh, f"root@{self.host}", command], capture_output=True, text=True
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"on {self.host}: {command}: {proc.stderr.strip()}")
        return proc


def vmctl(inventory: str, *args: str) -> list[str]:
    return [VMCTL, "--inventory", inventory, *args]


def create(inventory: str, env: dict[str, str], node: str, name: str, timeout: float) -> Run:
    run = Run("", name)
    cmd = vmctl(inventory, "create", name, "--node", node, "--ram", "512", "--cpu", "1")
    cmd += ["--wait-for", "ssh", "--timeout", str(timeout)]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            now = time.monotonic() - start
            lines.append(line.rstrip())
            for step, text in STEPS.items():
                if line.startswith(f"vmctl: {name}: {text}") and step not in run.at:
                    run.at[step] = now
        code = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    run.total = time.monotonic() - start
    if code != 0 or len(run.at) != len(STEPS):
        raise RuntimeError(f"vmctl create {name} failed (exit {code}):\n" + "\n".join(lines))
    return run


def delete(inventory: str, env: dict[str, str], name: str) -> str | None:
    """Delete NAME; None when done or when there was no such VM, else vmctl's message."""
    proc = subprocess.run(
        vmctl(inventory, "delete", "--yes", name), env=env, capture_output=True, text=True
    )
    if proc.returncode == 0 or f"no VM named {name}" in proc.stderr:
        return None
    return proc.stderr.strip() or f"exit {proc.returncode}"


def disk_script(variant: str, tag: str, base_file: str, bench_dir: str, rbd: dict[str, Any]) -> str:
    """Times (bash `time`, wall seconds on stdout) the disk commands create-vm.sh runs for
    VARIANT, root 4 GiB and data 1 GiB, on names of this bench; then removes them (untimed)."""
    seed = f"{bench_dir}/{tag}.seed-files"
    prep = (
        f"mkdir {seed} && printf '#cloud-config\\n' >{seed}/user-data && "
        f"printf 'instance-id: {tag}\\n' >{seed}/meta-data && TIMEFORMAT=%R"
    )
    iso = f"genisoimage -quiet -output {{out}} -volid cidata -joliet -rock {seed}/user-data "
    iso += f"{seed}/meta-data"
    if variant == "local":
        d = f"{bench_dir}/{tag}"
        body = (
            f"mkdir {d} && qemu-img create -q -f qcow2 -F qcow2 -b {base_file} {d}/root.qcow2 4G "
            f"&& qemu-img create -q -f qcow2 {d}/data.qcow2 1G && {iso.format(out=d + '/seed.iso')}"
        )
        return f"{prep} && {{ time ( {body} ); }} 2>&1 && rm -rf {d} {seed}"
    rbdc = f"rbd --id {rbd['user']} -m {','.join(rbd['monitors'])} --keyring {rbd['keyring']}"
    pool = rbd["pool"]
    images = [f"{pool}/{tag}.{kind}" for kind in ("root", "data", "seed")]
    root, data, seedimg = images
    body = " && ".join(
        [
            *(f"! {rbdc} info {image} >/dev/null 2>&1" for image in images),
            f"{rbdc} clone {pool}/{rbd['base']}@base {root}",
            f"{rbdc} image-meta set {root} vmctl.mark bench",
            f"{rbdc} info --format json {root} >/dev/null",
            f"{rbdc} resize --no-progress --size 4G {root}",
            f"{rbdc} create --size 1G {data}",
            f"{rbdc} image-meta set {data} vmctl.mark bench",
            iso.format(out=f"{seed}/seed.iso"),
            f"{rbdc} import --no-progress {seed}/seed.iso {seedimg}",
            f"{rbdc} image-meta set {seedimg} vmctl.mark bench",
        ]
    )
    remove = "; ".join(f"{rbdc} rm --no-progress {image} >/dev/null 2>&1" for image in images)
    timed = f"{{ time ( {body} ); }} 2>&1"
    return f"{prep} && {timed}; status=$?; {remove}; rm -rf {seed}; exit $status"


def disk_cleanup(node: Node, tags: list[str], rbd: dict[str, Any]) -> None:
    rbdc = f"rbd --id {rbd['user']} -m {','.join(rbd['monitors'])} --keyring {rbd['keyring']}"
    images = [f"{rbd['pool']}/{t}.{k}" for t in tags for k in ("root", "data", "seed")]
    if images:
        node.run("; ".join(f"{rbdc} rm --no-progress {i} >/dev/null 2>&1" for i in images), False)


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="VMs per variant (alternating)")
    parser.add_argument("--node", default="node2", help="a node whose storage is rbd")
    parser.add_argument("--dir", default="/var/lib/libvirt/images/vmctl-bench")
    parser.add_argument("--disk-runs", type=int, default=5, help="disk-only rounds (0: none)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--tree", help="run the vmctl of this checkout (first on PYTHONPATH)")
    args = parser.parse_args()
    for var in ("VMCTL_INVENTORY", "LAB_SSH_KEY", "LAB_KNOWN_HOSTS"):
        if var not in os.environ:
            sys.exit(f'{var} is not set: eval "$(lab/lab env)" first')
    env = dict(os.environ)
    if args.tree:
        tree = Path(args.tree).resolve()
        if not (tree / "vmctl/__init__.py").is_file() or not (tree / "scripts").is_dir():
            sys.exit(f"--tree {tree}: expected vmctl/ and scripts/ in it")
        env["PYTHONPATH"] = str(tree)
    lab_inventory = os.environ["VMCTL_INVENTORY"]
    inv = yaml.safe_load(Path(lab_inventory).read_text())
    entry = next((n for n in inv["nodes"] if n["name"] == args.node), None)
    if entry is None or entry["storage"]["type"] != "rbd":
        sys.exit(f"{args.node}: not a node of {lab_inventory} with storage type rbd")
    image = inv["defaults"]["image"]
    rbd = {**entry["storage"], "base": image}
    base_file = inv["images"][image]["path"]
    node = Node(entry["ssh"]["host"])
    entry["storage"] = {"type": "dir", "path": args.dir}
    inventories = {"rbd": lab_inventory}

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    pending: dict[str, str] = {}  # VM name -> inventory it was (being) made with
    disk_tags: list[str] = []
    made_dir = False
    runs: list[Run] = []
    disk: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.NamedTemporaryFile("w", prefix="bst-inventory-", suffix=".yaml") as f:
        f.write(yaml.safe_dump(inv, sort_keys=False))
        f.flush()
        inventories["local"] = f.name
        try:
            listed = subprocess.run(
                [VMCTL, "list", "--json"], env=env, capture_output=True, text=True, check=True
            )
            ours = [v["name"] for v in json.loads(listed.stdout) if v["name"].startswith("bst-")]
            if ours:
                sys.exit(f"VMs of an earlier run are left: {' '.join(ours)} (delete them first)")
            node.run(f"test -f {shlex.quote(base_file)}")
            node.run(f"mkdir {shlex.quote(args.dir)}")  # fails if it is there: not ours
            made_dir = True
            print(
                f"{args.node} ({node.host}), {args.runs} runs each, alternating; "
                f"local = qcow2 files in {args.dir}, rbd = pool {rbd['pool']}"
                + (f"; vmctl from {env['PYTHONPATH']}" if args.tree else ""),
                flush=True,
            )
            for i in range(args.runs):
                for variant in VARIANTS:
                    name = f"{PREFIX[variant]}-{i}"
                    pending[name] = inventories[variant]
                    run = create(inventories[variant], env, args.node, name, args.timeout)
                    run.variant = variant
                    problem = delete(inventories[variant], env, name)
                    if problem:
                        raise RuntimeError(f"vmctl delete {name}: {problem}")
                    del pending[name]
                    runs.append(run)
                    print(
                        f"{variant:5} run {i}: ssh {run.total:5.1f} s | domain started "
                        f"{run.at['started']:4.1f} s (node step {run.node_step:4.2f} s), "
                        f"lease {run.at['lease']:5.1f} s, started → ssh {run.boot:5.1f} s",
                        flush=True,
                    )
            for i in range(args.disk_runs):
                for variant in VARIANTS:
                    tag = f"bst-d{variant[0]}-{i}"
                    disk_tags.append(tag)
                    script = disk_script(variant, tag, base_file, args.dir, rbd)
                    took = float(node.run(script).stdout.split()[-1])
                    disk[variant].append(took)
                    print(f"{variant:5} disks only, run {i}: {took:5.2f} s", flush=True)
        finally:
            leftovers = []
            for name, inventory in pending.items():
                problem = delete(inventory, env, name)
                if problem:
                    leftovers.append(f"{name}: {problem}")
            if made_dir:
                disk_cleanup(node, disk_tags, rbd)
                # a domain of ours still on the node (its delete failed) keeps files in the dir
                left = node.run("virsh -q list --all --name", False).stdout.split()
                left = [n for n in left if n.startswith(tuple(PREFIX.values()))]
                if left:
                    leftovers.append(f"domains still on {args.node}: {' '.join(left)}")
                else:
                    node.run(f"rm -rf -- {shlex.quote(args.dir)}", False)
            for line in leftovers:
                print(f"NOT CLEANED UP: {line}", file=sys.stderr)
    print()

    def by(variant: str) -> list[Run]:
        return [r for r in runs if r.variant == variant]

    measures = {
        "create → SSH (vmctl returned)": lambda r: r.total,
        "create → domain started": lambda r: r.at["started"],
        "node step (disks, seed, define, start)": lambda r: r.node_step,
        "create → lease": lambda r: r.at["lease"],
        "domain started → SSH": lambda r: r.boot,
    }
    for label, get in measures.items() if runs else ():
        m = {v: med([get(r) for r in by(v)]) for v in VARIANTS}
        print(
            f"median {label:40}: local {m['local']:6.2f} s, rbd {m['rbd']:6.2f} s, "
            f"rbd / local {m['rbd'] / m['local']:.3f}"
        )
    if all(disk.values()):
        m = {v: med(disk[v]) for v in VARIANTS}
        print(
            f"median {'disk commands alone (node)':40}: local {m['local']:6.2f} s, "
            f"rbd {m['rbd']:6.2f} s, rbd / local {m['rbd'] / m['local']:.3f}"
        )


if __name__ == "__main__":
    main()
