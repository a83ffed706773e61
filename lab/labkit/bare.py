"""Bare hosts (`lab/lab up --bare`): machines that look like fresh Debian hosts (systemd as PID 1,
sshd, python3, nothing of vmctl's) for the Ansible roles of deploy/ansible to prepare.

Each host is a `systemd-nspawn --boot` container of a Debian tree, inside its own network
namespace on the lab bridge (the recipe, its three settings and its traps: ../shared/LAB-NOTES.md).
The tree is built once with mmdebstrap and cached; each host boots an overlay of it with its own
machine-id and SSH host keys, so `reset` gives a fresh host again in about a second. Hosts have
no route out of the lab: they get packages through a package proxy (apt-cacher-ng) on the lab
bridge, as many real sites do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from . import config, net
from .procs import Daemon
from .sh import LabError, listening, log, run, wait_gone

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What a fresh, minimal Debian server has: systemd, sshd, python3 (for Ansible), sudo.
TREE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "python3",
    "sudo",
    "ca-certificates",
)
TREE_DIR = config.CACHE_DIR / "bare-tree"
PROXY_CACHE = config.CACHE_DIR / "apt-cacher-ng"
BARE_DIR = config.LAB_DIR / "bare"
PROXY = Daemon("apt-cacher-ng", BARE_DIR / "proxy")
# The hosts' cgroups: nspawn's own hierarchies, and the CPU controller where the machine has it
# (cgroup v1), for a low weight (CPU_SHARES against the default 1024): the bare hosts' package
# installs run beside the rest of the test suite and yield the CPU to its emulated guests.
CGROUP_ROOTS = tuple(
    p
    for p in (
        Path("/sys/fs/cgroup/systemd"),
        Path("/sys/fs/cgroup/unified"),
        Path("/sys/fs/cgroup/cpu"),
    )
    if p.is_dir()
)
CPU_SHARES = 128
NSPAWN_RUN = Path("/run/systemd/nspawn")


@dataclass(frozen=True)
class BareHost(config.LabHost):
    """One bare host of the lab: bare1, bare2, ... at PREFIX.0.41, .42, ..."""

    kind: ClassVar[str] = "bare"
    first_octet: ClassVar[int] = 40

    @property
    def dir(self) -> Path:
        return BARE_DIR / self.name

    @property
    def root(self) -> Path:
        return self.dir / "merged"

    @property
    def cgroups(self) -> list[Path]:
        return [top / "vmctl-lab" / self.name for top in CGROUP_ROOTS]

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "dhcp_range": list(self.dhcp_range),
            "reserved_range": list(self.reserved_range),
            "root": str(self.root),
        }


def hosts(count: int) -> list[BareHost]:
    return [BareHost(i) for i in range(1, count + 1)]


# --- the package proxy -------------------------------------------------------------------------


def proxy_port() -> int:
    return int(os.environ.get("VMCTL_LAB_APT_PROXY_PORT", "13142"))


def proxy_url() -> str:
    return f"http://{config.bridge_address()}:{proxy_port()}"


def ensure_proxy() -> None:
    """apt-cacher-ng on the lab bridge; its cache outlives the lab (like the guest image)."""
    PROXY_CACHE.mkdir(parents=True, exist_ok=True)
    log_dir = PROXY.directory / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    conf = PROXY.directory / "conf"
    conf.mkdir(exist_ok=True)
    # Our own configuration: Debian's remaps deb.debian.org to another mirror; this proxy fetches
    # what it is asked for, from the mirror apt on this machine uses.
    (conf / "acng.conf").write_text(
        "\n".join(
            [
                f"CacheDir: {PROXY_CACHE}",
                f"LogDir: {log_dir}",
                "SupportDir: /usr/lib/apt-cacher-ng",
                f"Port: {proxy_port()}",
                f"BindAddress: {config.bridge_address()}",
                f"PidFile: {PROXY.directory / 'acng-own.pid'}",
                f"SocketPath: {PROXY.directory / 'socket'}",
                "ReportPage: acng-report.html",
                "ExThreshold: 30",
                "",
            ]
        )
    )
    PROXY.start(
        ["/usr/sbin/apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
        {},
        ready=lambda _: listening(config.bridge_address(), proxy_port()),
    )


# --- the tree --------------------------------------------------------------------------------


def _recipe() -> str:
    return hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(TREE_PACKAGES)} v1".encode()).hexdigest()


def ensure_tree() -> Path:
    """The Debian tree every bare host boots (an overlay of it), built once through the proxy."""
    stamp = TREE_DIR / ".vmctl-lab-recipe"
    if stamp.exists() and stamp.read_text().strip() == _recipe():
        return TREE_DIR
    tmp = TREE_DIR.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"bare: building the Debian tree for bare hosts with mmdebstrap ({tmp})")
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(TREE_PACKAGES)}",
            f'--aptopt=Acquire::http::Proxy "{proxy_url()}"',
            "--quiet",
            SUITE,
            str(tmp),
            f"deb {MIRROR} {SUITE} main",
            f"deb {MIRROR} {SUITE}-updates main",
            f"deb {SECURITY_MIRROR} {SUITE}-security main",
        ],
        timeout=1200,
    )
    # Never one identity for every host: machine-id and host keys are made per host at prepare.
    (tmp / "etc" / "hostname").unlink(missing_ok=True)
    (tmp / "etc" / "machine-id").write_text("")
    for key in (tmp / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    # mmdebstrap leaves its proxy setting out of the tree: the site's provisioning sets it.
    (tmp / "etc" / "apt" / "apt.conf.d" / "99mmdebstrap").unlink(missing_ok=True)
    stamp_tmp = tmp / ".vmctl-lab-recipe"
    stamp_tmp.write_text(_recipe() + "\n")
    shutil.rmtree(TREE_DIR, ignore_errors=True)
    tmp.rename(TREE_DIR)
    return TREE_DIR


# --- hosts --------------------------------------------------------------------------------------


def leader(host: BareHost) -> int | None:
    """The PID of the host's systemd-nspawn (None when it is not running)."""
    return _nspawn(host).pid()


def is_running(host: BareHost) -> bool:
    return leader(host) is not None and listening(host.address, 22)


def _prepare(host: BareHost, tree: Path, authorized_keys: Path) -> str:
    """Mount the host's overlay (a fresh one if it has none) and give it its identity; return
    its SSH host key as a known_hosts line."""
    for sub in ("upper", "work", "merged"):
        (host.dir / sub).mkdir(parents=True, exist_ok=True)
    root = host.root
    if not os.path.ismount(root):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={tree},upperdir={host.dir / 'upper'},workdir={host.dir / 'work'}",
                str(root),
            ]
        )
    etc = root / "etc"
    if not (etc / "machine-id").read_text().strip():
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (etc / "hostname").write_text(host.name + "\n")
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n")
        host_key = etc / "ssh" / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        # What the site's installer gives a fresh host: the admin's SSH key and the package proxy.
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(authorized_keys, ssh_dir / "authorized_keys")
        (ssh_dir / "authorized_keys").chmod(0o600)
        (etc / "apt" / "apt.conf.d" / "01proxy").write_text(
            f'Acquire::http::Proxy "{proxy_url()}";\n'
        )
    public = (etc / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{host.address} {public[0]} {public[1]}"


def _ensure_network(host: BareHost, peers: list[BareHost]) -> None:
    """The host's namespace on the lab bridge, and a route to each other bare host's guest
    subnet through that host (the lab's root namespace forwards nothing): a manager among them
    reaches the guests of the nodes among them, guests reach the manager. No default route."""
    net.ensure_node_network(host)
    for peer in peers:
        if peer != host:
            run(
                ["ip", "-n", host.netns, "route", "replace", peer.guest_subnet, "via", peer.address]
            )


def _nspawn(host: BareHost) -> Daemon:
    """The host's systemd-nspawn (its PID file is the host's leader file)."""
    return Daemon(f"{host.name}-nspawn", host.dir)


def _boot(host: BareHost) -> None:
    for group in host.cgroups:
        group.mkdir(parents=True, exist_ok=True)
    shares = Path("/sys/fs/cgroup/cpu/vmctl-lab/cpu.shares")
    if shares.exists():
        shares.write_text(f"{CPU_SHARES}\n")
    # the launcher moves itself into the host's own cgroups before it becomes systemd-nspawn
    moves = " ".join(f"echo $$ > {g / 'cgroup.procs'};" for g in host.cgroups)
    argv = [
        "systemd-nspawn",
        "-D",
        str(host.root),
        "--boot",
        f"--machine={host.name}",
        f"--network-namespace-path=/run/netns/{host.netns}",
        "--register=no",
        "--keep-unit",
        "--console=read-only",
        "--capability=CAP_NET_ADMIN",
    ]
    _nspawn(host).start(
        ["sh", "-c", f'{moves} exec "$@"', "sh", *argv],
        {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
        ready=lambda _: listening(host.address, 22),
        timeout=60,
    )


def ensure(count: int, authorized_keys: Path) -> list[str]:
    """Start the proxy and ``count`` bare hosts (those not running); their known_hosts lines."""
    ensure_proxy()
    tree = ensure_tree()
    lines = []
    for host in hosts(count):
        _ensure_network(host, hosts(count))
        lines.append(_prepare(host, tree, authorized_keys))
        if not is_running(host):
            stop_hosts([host], unmount=False)
            net.clear_guest_links(host.netns)
            _boot(host)
    return lines


def _container_pid(host: BareHost) -> int | None:
    """PID 1 of the container (the child of systemd-nspawn)."""
    pid = leader(host)
    if pid is None:
        return None
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        for child in children.read_text().split():
            return int(child)
    return None


def stop_hosts(chosen: list[BareHost], unmount: bool = True) -> None:
    """Power the hosts off, all at once (systemd's clean shutdown; SIGKILL after 30 s), then
    undo their cgroups (and, with ``unmount``, their overlays)."""
    running = {}
    for host in chosen:
        nspawn = leader(host)
        if nspawn is None:
            continue
        log(f"{host.name}: powering off")
        with contextlib.suppress(ProcessLookupError):
            os.kill(_container_pid(host) or nspawn, signal.SIGRTMIN + 3)
        running[host] = nspawn
    deadline = time.monotonic() + 30
    for host, nspawn in running.items():
        try:
            wait_gone([nspawn], timeout=max(1.0, deadline - time.monotonic()))
        except LabError:
            log(f"{host.name}: still running after 30 s: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn, signal.SIGKILL)
            wait_gone([nspawn])
    for host in chosen:
        _nspawn(host).pid_file.unlink(missing_ok=True)
        if unmount and os.path.ismount(host.root):
            run(["umount", str(host.root)])
        for group in host.cgroups:
            _remove_cgroup(group)


def _remove_cgroup(group: Path) -> None:
    if not group.exists():
        return
    for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        group.rmdir()


def reset(chosen: list[BareHost], count: int, authorized_keys: Path) -> list[str]:
    """Fresh hosts again: power off, drop everything they wrote, boot the tree anew; their
    known_hosts lines."""
    stop_hosts(chosen)
    lines = []
    for host in chosen:
        # links the host made in its namespace (libvirt's bridges) outlive it: a new namespace
        net.remove_node_network(host.netns, host.guest_subnet)
        for sub in ("upper", "work"):
            shutil.rmtree(host.dir / sub, ignore_errors=True)
        lines.append(_prepare(host, ensure_tree(), authorized_keys))
        _ensure_network(host, hosts(count))
        _boot(host)
    return lines


def stop_all(count: int, nspawn_run_existed: bool) -> None:
    """Every bare host, their network and the proxy (the caches stay)."""
    stop_hosts(hosts(count))
    for host in hosts(count):
        net.remove_node_network(host.netns, host.guest_subnet)
    for top in CGROUP_ROOTS:
        with contextlib.suppress(OSError):
            (top / "vmctl-lab").rmdir()
    PROXY.stop()
    if not nspawn_run_existed and NSPAWN_RUN.exists():
        shutil.rmtree(NSPAWN_RUN, ignore_errors=True)


def status(count: int) -> dict[str, object]:
    return {
        "proxy": {"up": PROXY.pid() is not None, "url": proxy_url()},
        "hosts": [{**h.describe(), "up": is_running(h)} for h in hosts(count)],
    }


def found_hosts() -> list[BareHost]:
    """Bare hosts that have a directory (a lab whose state was lost still gets them down)."""
    if not BARE_DIR.is_dir():
        return []
    found = []
    for d in BARE_DIR.iterdir():
        if d.name.startswith("bare") and d.name[4:].isdigit():
            found.append(BareHost(int(d.name[4:])))
    return sorted(found, key=lambda h: h.index)


# --- warming the proxy -------------------------------------------------------------------------

ROLES = config.REPO / "deploy" / "ansible" / "roles"


def role_packages() -> list[str]:
    """What the roles of deploy/ansible install with apt: their ``*_packages`` defaults and the
    packages their apt tasks name literally."""
    import yaml  # Debian's python3-yaml (setup-host)

    names: set[str] = set()
    for defaults in ROLES.glob("*/defaults/main.yml"):
        for key, value in (yaml.safe_load(defaults.read_text()) or {}).items():
            if key.endswith("_packages"):
                names.update(value)
    for tasks in ROLES.glob("*/tasks/*.yml"):
        for task in yaml.safe_load(tasks.read_text()) or []:
            name = (task.get("ansible.builtin.apt") or {}).get("name")
            if isinstance(name, str) and "{{" not in name:
                names.add(name)
    return sorted(names)


def warm(host: BareHost) -> None:
    """Fetch through the proxy every package the roles install, with their dependencies, from
    ``host`` (apt-get --download-only: nothing is installed, and the downloads are cleaned from
    the host after): a later run of the roles on a fresh host waits for no mirror. The test suite
    runs this beside its other tests; the first fetch from the mirrors takes minutes."""
    packages = role_packages()
    log(f"{host.name}: fetching {len(packages)} packages and their dependencies through the proxy")
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
        f"apt-get install -y -qq --download-only {' '.join(packages)} >/dev/null; apt-get clean"
    )
    ssh = ["ssh", "-i", str(config.SSH_KEY), "-o", f"UserKnownHostsFile={config.KNOWN_HOSTS}"]
    ssh += ["-o", "BatchMode=yes", f"root@{host.address}", script]
    started = time.monotonic()
    run(ssh, timeout=3600)
    log(f"{host.name}: the proxy holds them ({time.monotonic() - started:.0f} s)")
