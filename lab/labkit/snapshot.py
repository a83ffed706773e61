"""What the lab may change on this machine, listed so that `down` can be checked against `up`."""

from __future__ import annotations

import os
import re

from . import net
from .sh import run


def _lines(args: list[str]) -> list[str]:
    return sorted(
        line.strip() for line in run(args, check=False).stdout.splitlines() if line.strip()
    )


def machine_state() -> dict[str, list[str]]:
    """Namespaces, links, routes, mounts and process ids of the root namespace, and the files in
    Ceph's default directories; sorted."""
    return {
        "netns": _lines(["ip", "netns", "list"]),
        "links": sorted(net.links()),
        "routes": _lines(["ip", "route", "show", "table", "all"]),
        "mounts": sorted(" ".join(line.split()[1:3]) for line in net.mount_points()),
        "iptables": _iptables(),
        "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        "ceph_files": ceph_files(),
        "nspawn": nspawn_leftovers(),
    }


def nspawn_leftovers() -> list[str]:
    """What the bare hosts' systemd-nspawn leaves unless `down` removes it: the lab's cgroup
    directories and nspawn's runtime directory."""
    paths = [
        "/sys/fs/cgroup/systemd/vmctl-lab",
        "/sys/fs/cgroup/unified/vmctl-lab",
        "/sys/fs/cgroup/cpu/vmctl-lab",
        "/run/systemd/nspawn",
    ]
    return [p for p in paths if os.path.exists(p)]


CEPH_PATHS = ("/etc/ceph", "/var/lib/ceph", "/var/log/ceph", "/run/ceph")


def ceph_files() -> list[str]:
    """Everything in Ceph's default directories (the lab keeps its cluster elsewhere)."""
    found = []
    for top in CEPH_PATHS:
        for root, dirs, files in os.walk(top):
            found += [os.path.join(root, name) for name in dirs + files]
    return sorted(found)


def _iptables() -> list[str]:
    """Rules of the root namespace, without comments and packet counters."""
    if not os.path.exists("/usr/sbin/iptables-save"):
        return []
    rules = _lines(["iptables-save"])
    return [re.sub(r"\[\d+:\d+\]", "", r) for r in rules if not r.startswith("#")]
