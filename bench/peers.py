"""vmctl side by side with kcli (Python, libvirt over SSH, cloud-init), on one lab node.

Same node, same base image (the lab's debian-12.qcow2), 512 MiB / 1 vCPU, a 4 GiB root disk and a
1 GiB data disk on both sides (vmctl `--disk 1`, which it formats and mounts before cloud-init is
done; kcli `disks=[4,1]`, left blank), one guest at a time, alternating. Measured from the start
of the command:
- to SSH: `vmctl create --wait-for ssh` (it returns when SSH answers with the host key it made)
  against `kcli create vm` followed by a poll every 0.5 s of the node's DHCP leases for the
  guest's address, then of port 22 for an SSH banner;
- to cloud-init done: `vmctl create --wait-for cloud-init` against `kcli create vm`, the same
  SSH poll, then one login running `cloud-init status --wait` (what vmctl does; kcli's own `-w`
  polls SSH every 5 s and then its log every 2 s, which would count against it);
- to the domain started: `vmctl create` and `kcli create vm`, neither waiting;
- with `--raw`, to SSH also the raw path of bench/create_overhead.py (the same domain XML and
  seed by scp, qemu-img, genisoimage, virsh define + start over plain ssh, then a poll every
  0.5 s of the lease and of ssh-keyscan for the guest's host key), in the same rounds.

What kcli needs to run on the lab at all, applied by `--setup` (and said in the output):
a venv of its own with Debian's python3-libvirt (`--system-site-packages`; kcli from PyPI with
--no-deps), a libvirt dir pool `vmctl-base` on the node over the base image's directory (kcli's
own `create pool` runs sudo), `virttype: qemu` (it picks kvm when /dev/kvm exists), and a patched
copy of its kvm provider with the cloud-init ISO on the SCSI bus (Debian's cloud kernel has no
AHCI driver: on SATA the seed is invisible), used through PYTHONPATH; the guest's NIC named eth0
(the lab image boots with net.ifnames=0). kcli runs with HOME pointing at a directory of the
bench's own (its config and the lab's SSH key), and reaches the node through a wrapper of ssh that
checks the node's host key against the lab's known_hosts. `kcli version` is never run (it goes
to the internet). Guests are named pv-N (vmctl), pk-N (kcli) and pr-N (raw) and deleted after
each run.

vmctl runs as users install it: `--setup` builds a wheel of this checkout and installs it in a
venv of its own (pip compiles the bytecode at install; this machine sets PYTHONDONTWRITEBYTECODE,
so the checkout's editable install would compile at every run). `--start-runs N` times
`vmctl --version` against `kcli -h`, N each, alternating.

    eval "$(lab/lab env)"; .venv/bin/python bench/peers.py --setup --runs 5 --cloud-init-runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOME = Path("/var/cache/vmctl-peers")
VMCTL_VENV = HOME / "vmctl-venv"
VMCTL = str(VMCTL_VENV / "bin" / "vmctl")
KCLI_VENV = HOME / "kcli-venv"
PATCHED = HOME / "patched"
POOL, POOL_DIR, IMAGE = "vmctl-base", "/var/lib/libvirt/images/base", "debian-12.qcow2"


def node_ssh(node: dict[str, str], command: str, check: bool = True) -> str:
    argv = ["ssh", "-i", os.environ["LAB_SSH_KEY"], "-o"]
    argv += [f"UserKnownHostsFile={os.environ['LAB_KNOWN_HOSTS']}", f"root@{node['address']}"]
    proc = subprocess.run([*argv, command], capture_output=True, text=True, check=check)
    return proc.stdout


def install_vmctl() -> None:
    """A wheel of this checkout in a venv of its own, as users install vmctl."""
    wheels = HOME / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(VMCTL_VENV, ignore_errors=True)
    pip = [str(REPO / ".venv" / "bin" / "pip"), "wheel", "-q", "--no-deps", "-w", str(wheels)]
    subprocess.run([*pip, str(REPO)], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(VMCTL_VENV)], check=True)
    wheel = next(wheels.glob("vmctl-*.whl"))
    subprocess.run([str(VMCTL_VENV / "bin" / "pip"), "install", "-q", str(wheel)], check=True)


def setup(node: dict[str, str]) -> None:
    install_vmctl()
    home = HOME / "home"
    if not (KCLI_VENV / "bin" / "kcli").exists():
        subprocess.run(
            ["/usr/bin/python3", "-m", "venv", "--system-site-packages", KCLI_VENV], check=True
        )
        pip = [str(KCLI_VENV / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, "--no-deps", "kcli", "argcomplete", "prettytable"], check=True)
        subprocess.run([*pip, "pyyaml", "jinja2", "wcwidth"], check=True)
    if not PATCHED.exists():
        site = next((KCLI_VENV / "lib").glob("python3*/site-packages/kvirt"))
        shutil.copytree(site, PATCHED / "kvirt")
        provider = PATCHED / "kvirt" / "providers" / "kvm" / "__init__.py"
        text = provider.read_text()
        old = "isobus = 'scsi' if (aarch64_full or as390x) else 'sata'"
        assert old in text, "kcli's provider changed: look again at where it puts the seed"
        provider.write_text(text.replace(old, "isobus = 'scsi'  # Debian's cloud kernel: no AHCI"))
    (home / ".kcli").mkdir(parents=True, exist_ok=True)
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    key = os.environ["LAB_SSH_KEY"]
    # libvirt's ssh transport runs `ssh` (which reads root's ~/.ssh, whatever HOME says) with
    # StrictHostKeyChecking=no for kcli: this wrapper puts the lab's key and known_hosts first
    # (ssh keeps the first value of an option), so the node's key is checked and nothing is
    # written to root's known_hosts.
    wrapper = HOME / "ssh-lab"
    wrapper.write_text(
        "#!/bin/sh\nexec ssh -i "
        + key
        + " -o UserKnownHostsFile="
        + os.environ["LAB_KNOWN_HOSTS"]
        + ' -o StrictHostKeyChecking=yes "$@"\n'
    )
    wrapper.chmod(0o755)
    url = f"qemu+ssh://root@{node['address']}/system?command={wrapper}"
    (home / ".kcli" / "config.yml").write_text(
        f"default:\n  client: {node['name']}\n{node['name']}:\n  type: kvm\n"
        f"  host: {node['address']}\n  user: root\n  protocol: ssh\n  url: {url}\n"
        f"  pool: {POOL}\n  virttype: qemu\n"
    )
    for suffix in ("", ".pub"):
        shutil.copyfile(key + suffix, home / ".ssh" / f"id_ed25519{suffix}")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    node_ssh(
        node,
        f"virsh -q pool-info {POOL} >/dev/null 2>&1 || "
        f"(virsh -q pool-define-as {POOL} dir --target {POOL_DIR} && virsh -q pool-start {POOL})",
    )
    print(
        f"setup: kcli in {KCLI_VENV} (Debian's python3-libvirt), its kvm provider patched in "
        f"{PATCHED} (seed ISO on SCSI), pool {POOL} on {node['name']} over {POOL_DIR}, "
        "virttype qemu, NIC eth0",
        file=sys.stderr,
    )


def kcli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(HOME / "home"), "PYTHONPATH": str(PATCHED)}
    return subprocess.run(
        [str(KCLI_VENV / "bin" / "kcli"), *args], env=env, capture_output=True, text=True
    )


def lease_of(node: dict[str, str], hostname: str) -> str | None:
    for line in node_ssh(node, "virsh -q net-dhcp-leases vmnet", check=False).splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == hostname:
            return fields[4].split("/")[0]
    return None


def ssh_banner(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=1) as sock:
            sock.settimeout(2)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def run_kcli(node: dict[str, str], name: str, until: str) -> float:
    started = time.monotonic()
    args = ["create", "vm", name, "-i", IMAGE, "-P", "memory=512", "-P", "numcpus=1"]
    args += ["-P", 'nets=[{"name":"vmnet","nic":"eth0"}]', "-P", "disks=[4,1]"]
    proc = kcli(*args)
    if proc.returncode != 0 or "created" not in proc.stdout + proc.stderr:
        raise SystemExit(f"kcli create failed: {proc.stdout}{proc.stderr}")
    if until == "started":
        return time.monotonic() - started
    ip = None
    while time.monotonic() - started < 300:
        ip = ip or lease_of(node, name)
        if ip and ssh_banner(ip):
            break
        time.sleep(0.5)
    else:
        raise SystemExit(f"{name}: no SSH within 300 s")
    if until == "ssh":
        return time.monotonic() - started
    # cloud-init done, asked the way vmctl asks: log in, `cloud-init status --wait` (kcli's own
    # -w polls SSH every 5 s, then the log every 2 s: coarser than this)
    while time.monotonic() - started < 300:
        login = ["ssh", "-i", os.environ["LAB_SSH_KEY"], "-o", "StrictHostKeyChecking=no"]
        login += ["-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", f"debian@{ip}"]
        done = subprocess.run([*login, "cloud-init status --wait"], capture_output=True, text=True)
        if "status: done" in done.stdout:
            return time.monotonic() - started
        time.sleep(1)
    raise SystemExit(f"{name}: cloud-init not done within 300 s")


def run_vmctl(node: dict[str, str], name: str, until: str) -> float:
    started = time.monotonic()
    args = ["create", name, "--node", node["name"], "--ram", "512", "--cpu", "1", "--disk", "1"]
    if until != "started":
        args += ["--wait-for", until, "--timeout", "300"]
    proc = subprocess.run([VMCTL, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"vmctl create failed: {proc.stderr}")
    return time.monotonic() - started


def cleanup(node: dict[str, str], name: str) -> None:
    if name.startswith("pk-"):
        kcli("delete", "vm", name, "-y")
    elif name.startswith("pr-"):
        _create_overhead().cleanup(node, name, "raw")
    else:
        subprocess.run([VMCTL, "delete", "--yes", name], capture_output=True)


def _create_overhead():  # type: ignore[no-untyped-def]
    """bench/create_overhead.py, whose raw path (and its cleanup) this bench runs too."""
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO / "lab"))
    import create_overhead

    return create_overhead


def run_raw(node: dict[str, str], name: str, until: str) -> float:
    assert until == "ssh"
    return _create_overhead().raw(node, name, poll=0.5)[1]


def series(
    node: dict[str, str], until: str, runs: int, tag: str, raw: bool = False
) -> dict[str, list[float]]:
    tools = ["vmctl", "kcli", *(["raw"] if raw else [])]
    took: dict[str, list[float]] = {tool: [] for tool in tools}
    for i in range(runs):
        order = tools[i % len(tools) :] + tools[: i % len(tools)]  # each goes first in turn
        for tool in order:
            name = f"p{tool[0]}-{tag}{i}"
            try:
                fn = {"vmctl": run_vmctl, "kcli": run_kcli, "raw": run_raw}[tool]
                took[tool].append(fn(node, name, until))
            finally:
                cleanup(node, name)
            print(f"{until}: run {i + 1}: {tool} {took[tool][-1]:.1f} s", flush=True)
    return took


def start_up(runs: int) -> dict[str, list[float]]:
    took: dict[str, list[float]] = {"vmctl": [], "kcli": []}
    for i in range(runs + 1):  # the first round is not counted (disk caches)
        order = ("vmctl", "kcli") if i % 2 == 0 else ("kcli", "vmctl")
        for tool in order:
            started = time.monotonic()
            proc = (
                subprocess.run([VMCTL, "--version"], capture_output=True)
                if tool == "vmctl"
                else kcli("-h")
            )
            if proc.returncode != 0:
                raise SystemExit(f"{tool} failed to start: {proc.stderr!r}")
            if i:
                took[tool].append(time.monotonic() - started)
                print(f"start-up: run {i}: {tool} {took[tool][-1] * 1000:.0f} ms", flush=True)
    return took


def report(until: str, took: dict[str, list[float]]) -> dict[str, object]:
    med = {tool: statistics.median(v) for tool, v in took.items()}
    ratio = med["vmctl"] / med["kcli"]
    if "raw" in med:
        print(
            f"{until}: median raw path {med['raw']:.1f} s, "
            f"vmctl / raw {med['vmctl'] / med['raw']:.2f}"
        )
    digits = 3 if until == "start-up" else 1
    print(
        f"{until}: median vmctl {med['vmctl']:.{digits}f} s, kcli {med['kcli']:.{digits}f} s, "
        f"ratio {ratio:.2f}"
    )
    return {"until": until, "runs": took, "median": med, "ratio": round(ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="node1")
    parser.add_argument("--setup", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="pairs to SSH")
    parser.add_argument("--cloud-init-runs", type=int, default=3)
    parser.add_argument("--started-runs", type=int, default=5)
    parser.add_argument("--start-runs", type=int, default=10, help="`--version` / `-h` pairs")
    parser.add_argument("--raw", action="store_true", help="the raw path too, to SSH")
    args = parser.parse_args()
    lab = json.loads(
        subprocess.run(
            [str(REPO / "lab" / "lab"), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    node = next(n for n in lab["nodes"] if n["name"] == args.node)
    if args.setup:
        setup(node)
    if not Path(VMCTL).exists():
        raise SystemExit(f"no vmctl installed from a wheel at {VMCTL}: run with --setup")
    results = []
    if args.start_runs:
        results.append(report("start-up", start_up(args.start_runs)))
    for until, runs in (
        ("started", args.started_runs),
        ("ssh", args.runs),
        ("cloud-init", args.cloud_init_runs),
    ):
        if runs:
            tag = f"{until[:2]}{os.getpid() % 1000}-"  # unique: old leases keep old names
            results.append(
                report(until, series(node, until, runs, tag, args.raw and until == "ssh"))
            )
    print(json.dumps({"bench": "peers", "node": args.node, "results": results}))


if __name__ == "__main__":
    main()
