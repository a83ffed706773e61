"""How much time `vmctl create --wait` adds over doing the same by hand.

Alternates, on one node and one image: (raw) the same domain XML and NoCloud seed, copied with
scp, disks made with qemu-img, seed with genisoimage, `virsh define` + `virsh start` over plain
ssh, then polling `virsh domifaddr` for the lease and `ssh-keyscan` for SSH, every second;
(vmctl) `vmctl create NAME --node NODE --wait`. Both stop the clock when SSH answers. Prints
medians and the ratio. Run with the lab up:

    eval "$(lab/lab env)"; .venv/bin/python bench/create_overhead.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))

import guests  # noqa: E402

from vmctl.core import cloudinit, domainxml, hostkeys  # noqa: E402

STORAGE = "/var/lib/libvirt/images/vmctl"
BASE = "/var/lib/libvirt/images/base/debian-12.qcow2"


def ssh_args(node: dict) -> list[str]:  # type: ignore[type-arg]
    return guests.ssh_options(os.environ["LAB_SSH_KEY"], os.environ["LAB_KNOWN_HOSTS"])


def on_node(node: dict, command: str) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    return subprocess.run(
        ["ssh", *ssh_args(node), f"root@{node['address']}", command], capture_output=True, text=True
    )


def raw(node: dict, name: str, poll: float = 1.0) -> tuple[float, float]:  # type: ignore[type-arg]
    """Returns (seconds to lease, seconds to SSH), polling every ``poll`` seconds."""
    key = hostkeys.new_host_key(name)
    mac = hostkeys.new_mac()
    pub = Path(os.environ["LAB_SSH_KEY"] + ".pub").read_text().strip()
    seed = cloudinit.render(
        cloudinit.Seed(
            hostname=name,
            instance_id=name,
            user="debian",
            ssh_authorized_keys=[pub],
            mac=mac,
            host_key=key,
        )
    )
    xml = domainxml.render(
        domainxml.GuestSpec(
            name=name,
            ram_mb=512,
            cpu=1,
            storage_dir=STORAGE,
            network="vmnet",
            mac=mac,
            image="debian-12",
            virt_type="qemu",
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        for fname, text in {**seed, "domain.xml": xml}.items():
            Path(tmp, fname).write_text(text)
        d = f"{STORAGE}/{name}"
        start = time.monotonic()
        on_node(node, f"mkdir -p {d}")
        subprocess.run(
            [
                "scp",
                "-q",
                *ssh_args(node),
                *(str(p) for p in Path(tmp).iterdir()),
                f"root@{node['address']}:{d}/",
            ],
            check=True,
        )
        proc = on_node(
            node,
            " && ".join(
                [
                    f"qemu-img create -q -f qcow2 -F qcow2 -b {BASE} {d}/root.qcow2 4G",
                    f"qemu-img create -q -f qcow2 {d}/data.qcow2 1G",
                    f"cd {d} && genisoimage -quiet -output seed.iso -volid cidata -joliet -rock "
                    "user-data meta-data network-config",
                    f"virsh -q define {d}/domain.xml >/dev/null",
                    f"virsh -q start {name} >/dev/null",
                ]
            ),
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        started = time.monotonic()  # `virsh start` has returned
    ip = None
    while ip is None:
        out = on_node(node, f"virsh -q domifaddr {name} --source lease").stdout
        ip = next((f.split()[3].split("/")[0] for f in out.splitlines() if mac in f), None)
        if ip is None:
            time.sleep(poll)
    lease = time.monotonic() - start
    want = key.public.split()[1]
    while (
        want
        not in subprocess.run(
            ["ssh-keyscan", "-T", "2", "-t", "ed25519", ip], capture_output=True, text=True
        ).stdout
    ):
        time.sleep(poll)
    done = time.monotonic()
    FROM_START.append((done - started, lease - (started - start)))
    return lease, done - start


FROM_START: list[tuple[float, float]] = []  # raw path: (ssh, lease) seconds after `virsh start`


def with_vmctl(node: dict, name: str) -> tuple[float, float]:  # type: ignore[type-arg]
    start = time.monotonic()
    proc = subprocess.Popen(
        [
            str(REPO / ".venv/bin/vmctl"),
            "create",
            name,
            "--node",
            node["name"],
            "--ram",
            "512",
            "--cpu",
            "1",
            "--disk",
            "1",
            "--wait",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lease = None
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(f"vmctl: {name}: 10."):
            lease = time.monotonic() - start
    if proc.wait() != 0:
        raise RuntimeError(f"vmctl create failed: {proc.returncode}")
    assert lease is not None
    return lease, time.monotonic() - start


def cleanup(node: dict, name: str, kind: str) -> None:  # type: ignore[type-arg]
    if kind == "vmctl":
        subprocess.run(
            [str(REPO / ".venv/bin/vmctl"), "delete", "--yes", name],
            capture_output=True,
            check=True,
        )
    else:
        on_node(node, f"virsh -q destroy {name}; virsh -q undefine {name}; rm -rf {STORAGE}/{name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--node", default="node1")
    args = parser.parse_args()
    lab = json.loads(
        subprocess.run(
            [str(REPO / "lab/lab"), "status", "--json"], capture_output=True, text=True
        ).stdout
    )
    node = next(n for n in lab["nodes"] if n["name"] == args.node)
    results: dict[str, list[tuple[float, float]]] = {"raw": [], "vmctl": []}
    for i in range(args.runs):
        for kind in ("raw", "vmctl") if i % 2 == 0 else ("vmctl", "raw"):
            name = f"bench-{kind}-{i}"
            try:
                took = raw(node, name) if kind == "raw" else with_vmctl(node, name)
            finally:
                cleanup(node, name, kind)
            results[kind].append(took)
            print(f"{kind:6} run {i}: lease {took[0]:5.1f} s, ssh {took[1]:5.1f} s", flush=True)
    med = {
        k: (statistics.median(v[0] for v in r), statistics.median(v[1] for v in r))
        for k, r in results.items()
    }
    for kind, (lease, ssh) in med.items():
        print(f"median {kind:6}: lease {lease:5.1f} s, ssh {ssh:5.1f} s")
    print(f"vmctl / raw (to SSH): {med['vmctl'][1] / med['raw'][1]:.3f}")
    print(f"vmctl / raw (to lease): {med['vmctl'][0] / med['raw'][0]:.3f}")
    print(
        f"raw, from `virsh start`: lease {statistics.median(t[1] for t in FROM_START):.1f} s, "
        f"ssh {statistics.median(t[0] for t in FROM_START):.1f} s"
    )


if __name__ == "__main__":
    main()
