"""Virtualization nodes: per node a namespace running its own virtlogd, libvirtd and sshd.

Inside `ip netns exec NODE unshare --mount --uts` each node gets its own hostname, a tmpfs over /run
and bind mounts of private directories over /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt and /etc/ceph (the node's Ceph client files). The daemons keep those namespaces
alive; `stop` ends them by PID.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import time
from pathlib import Path

from . import config, net
from .config import Node
from .sh import LabError, alive, log, ok, run, wait_for, wait_gone

BIND_MOUNTS = {
    "etc-libvirt": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "etc-ceph": "/etc/ceph",  # the node's Ceph client conf and keyring (labkit.ceph)
}
QEMU_CONF = """
# vmctl lab: several libvirtds on one machine, no udev, no systemd
user = "root"
group = "root"
cgroup_controllers = [ ]
security_driver = "none"
"""


def base_image_path(node: Node) -> Path:
    """Where the base image sits inside the node's /var/lib/libvirt."""
    return node.dir / "lib" / "images" / "base" / f"{config.IMAGE_NAME}.qcow2"


def _pid(node: Node, daemon: str) -> int | None:
    try:
        pid = int((node.dir / f"{daemon}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def is_running(node: Node) -> bool:
    return all(_pid(node, d) for d in ("virtlogd", "libvirtd", "sshd"))


def node_pid(node: Node) -> int | None:
    """The node's libvirtd: its namespaces are the node's."""
    return _pid(node, "libvirtd")


def node_exec(node: Node, args: list[str], **kw: object) -> object:
    """Run a command in the node's namespaces (network, mount, hostname)."""
    pid = _pid(node, "libvirtd")
    if pid is None:
        raise LabError(f"{node.name}: libvirtd is not running")
    return run(["nsenter", "-t", str(pid), "-m", "-u", "-n", "--", *args], **kw)  # type: ignore[arg-type]


def virsh(node: Node, *args: str, check: bool = True) -> str:
    proc = node_exec(node, ["virsh", "-q", "-c", "qemu:///system", *args], check=check)
    return proc.stdout  # type: ignore[attr-defined,no-any-return]


def prepare(node: Node, image_dir: Path, authorized_keys: Path) -> str:
    """Write the node's private directories and configs; returns its SSH host public key line."""
    d = node.dir
    for sub in BIND_MOUNTS:
        (d / sub).mkdir(parents=True, exist_ok=True)
    etc = d / "etc-libvirt"
    if not (etc / "qemu.conf").exists():
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
        with open(etc / "qemu.conf", "a") as f:
            f.write(QEMU_CONF)
        # Only the lab's isolated routed network may exist: drop the distribution's NAT default.
        for stale in ("qemu/networks/default.xml", "qemu/networks/autostart/default.xml"):
            (etc / stale).unlink(missing_ok=True)
    caps = d / "cache" / "qemu" / "capabilities"
    if config.QEMU_CAPS_CACHE.is_dir() and not caps.exists():
        shutil.copytree(config.QEMU_CAPS_CACHE, caps)
    _place_image(node, image_dir)
    (d / "lib" / "images" / "vmctl").mkdir(parents=True, exist_ok=True)
    return _prepare_sshd(node, authorized_keys)


def _place_image(node: Node, image_dir: Path) -> None:
    """Hard-link the cached base image (read-only backing file) into the node's image store."""
    targets = {
        base_image_path(node): image_dir / "disk.qcow2",
        node.dir / "lib" / "boot" / config.IMAGE_NAME / "vmlinuz": image_dir / "vmlinuz",
        node.dir / "lib" / "boot" / config.IMAGE_NAME / "initrd.img": image_dir / "initrd.img",
    }
    for target, source in targets.items():
        if target.exists() and target.stat().st_ino == source.stat().st_ino:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _prepare_sshd(node: Node, authorized_keys: Path) -> str:
    d = node.dir
    key = d / "ssh" / "ssh_host_ed25519_key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", str(key)])
    (d / "sshd_config").write_text(
        f"""# sshd of lab node {node.name}
ListenAddress {node.address}
Port 22
HostKey {key}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
MaxStartups 100:30:200
MaxSessions 50
ClientAliveInterval 15
Subsystem sftp /usr/lib/openssh/sftp-server
"""
    )
    pub = (d / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{node.address} {pub[0]} {pub[1]}"


def _boot_script(node: Node) -> str:
    d = node.dir
    q = shlex.quote
    mounts = "\n".join(f"mount --bind {q(str(d / s))} {q(t)}" for s, t in BIND_MOUNTS.items())
    return f"""set -eu
hostname {q(node.name)}
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd /run/libvirt /run/lock
{mounts}
virtlogd -d -p {q(str(d / "virtlogd.pid"))}
libvirtd -d -p {q(str(d / "libvirtd.pid"))}
/usr/sbin/sshd -f {q(str(d / "sshd_config"))} -E {q(str(d / "sshd.log"))}
"""


def start(node: Node) -> None:
    """Start the node's daemons unless all of them run already."""
    if is_running(node):
        return
    stop(node.netns)  # a partly running node is restarted whole
    net.clear_guest_links(node.netns)
    log(f"{node.name}: starting virtlogd, libvirtd, sshd")
    run(
        [
            "ip",
            "netns",
            "exec",
            node.netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            _boot_script(node),
        ]
    )
    wait_for(f"{node.name} libvirtd", lambda: _libvirt_ready(node), timeout=60)
    wait_for(f"{node.name} sshd", lambda: _pid(node, "sshd") is not None, timeout=10)
    _save_capabilities(node)


def _libvirt_ready(node: Node) -> bool:
    if _pid(node, "libvirtd") is None:
        return False
    proc = node_exec(node, ["virsh", "-c", "qemu:///system", "version"], check=False)
    return proc.returncode == 0  # type: ignore[attr-defined,no-any-return]


def _save_capabilities(node: Node) -> None:
    """Keep libvirt's QEMU probe result so the next node starts in a fraction of a second."""
    if config.QEMU_CAPS_CACHE.is_dir():
        return
    virsh(node, "domcapabilities", "--virttype", "qemu")  # forces the probe
    caps = node.dir / "cache" / "qemu" / "capabilities"
    if any(caps.glob("*.xml")):
        tmp = config.QEMU_CAPS_CACHE.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(caps, tmp)
        tmp.rename(config.QEMU_CAPS_CACHE)


def network_xml(node: Node) -> str:
    start_ip, end_ip = node.dhcp_range
    return f"""<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>
  <name>{config.GUEST_NETWORK}</name>
  <forward mode='route'/>
  <bridge name='{config.GUEST_BRIDGE}' stp='off' delay='0'/>
  <dns enable='no'/>
  <ip address='{node.guest_gateway}' netmask='255.255.255.0'>
    <dhcp>
      <range start='{start_ip}' end='{end_ip}'/>
    </dhcp>
  </ip>
  <dnsmasq:options>
    <!-- offer at once: by default dnsmasq first pings an address (~3 s) before offering it -->
    <dnsmasq:option value='no-ping'/>
  </dnsmasq:options>
</network>
"""


def ensure_guest_network(node: Node) -> None:
    """Define and start the node's isolated, routed guest network with DHCP."""
    names = virsh(node, "net-list", "--all", "--name").split()
    if config.GUEST_NETWORK not in names:
        xml = node.dir / "vmnet.xml"
        xml.write_text(network_xml(node))
        virsh(node, "net-define", str(xml))
        virsh(node, "net-autostart", config.GUEST_NETWORK)
    active = virsh(node, "net-list", "--name").split()
    if config.GUEST_NETWORK not in active:
        log(f"{node.name}: guest network {node.guest_subnet} (routed, DHCP, no DNS forwarding)")
        # a bridge of that name now is a dead libvirtd's: the network is not up
        net.clear_guest_links(node.netns, only=config.GUEST_BRIDGE)
        virsh(node, "net-start", config.GUEST_NETWORK)


def stop(netns: str) -> None:
    """End every process in the node's network namespace (TERM, KILL after 10 s) and wait until
    each one is reaped."""
    if not ok(["ip", "netns", "pids", netns]):
        return
    deadline = time.monotonic() + 10
    seen: set[int] = set()
    while True:
        pids = [int(p) for p in run(["ip", "netns", "pids", netns]).stdout.split()]
        pids = [p for p in pids if alive(p)]
        seen.update(pids)
        if not pids:
            break
        sig = signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.2)
    wait_gone(sorted(seen))


def _sshd_pids(node: Node) -> list[int]:
    """Every sshd of the node's namespace: the listener and one or more per session."""
    pids = []
    for pid in (int(p) for p in run(["ip", "netns", "pids", node.netns]).stdout.split()):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "sshd" and alive(pid):
            pids.append(pid)
    return pids


def stop_sshd(node: Node) -> None:
    """The node stops answering over SSH, as if it went away: its sshd and every session's sshd
    end (their commands get SIGHUP); libvirtd and the guests keep running."""
    killed: set[int] = set()
    while pids := [p for p in _sshd_pids(node) if p not in killed]:  # again: a session the
        for pid in pids:  # listener forked while it was being listed escapes the first round
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(pids)
    wait_gone(sorted(killed))
    log(f"{node.name}: sshd stopped")


def start_sshd(node: Node) -> None:
    """Start the node's sshd again (in its namespaces), unless it runs."""
    if _pid(node, "sshd") is not None:
        return
    d = node.dir
    node_exec(node, ["/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")])
    wait_for(f"{node.name} sshd", lambda: _pid(node, "sshd") is not None, timeout=10)
    log(f"{node.name}: sshd started")
