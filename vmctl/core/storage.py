"""A VM's disks as libvirt sees them, and the names vmctl gives them in an RBD pool: pure data.

Which backend a node uses is known only to the storage adapters (``vmctl.adapters.storage``);
they describe each disk with one of the types here, and ``vmctl.core.domainxml`` renders it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RBD_PREFIX = "vmctl."  # VM images: vmctl.NAME.root, vmctl.NAME.data, vmctl.NAME.seed
RBD_KINDS = ("root", "data", "seed")
BASE_SNAPSHOT = "base"  # a base image IMAGE in a pool is cloned from IMAGE@base
_RBD_IMAGE = re.compile(
    r"vmctl\.(?P<vm>[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?)\.(?P<kind>root|data|seed)"
)
DEFAULT_MON_PORT = 6789


@dataclass(frozen=True)
class FileDisk:
    """A disk image file on the node."""

    path: str
    format: str = "qcow2"


@dataclass(frozen=True)
class RbdDisk:
    """An image in a Ceph pool, reached by librbd with cephx (key in a libvirt secret)."""

    pool: str
    image: str
    monitors: tuple[str, ...]
    user: str
    secret_uuid: str
    format: str = "raw"

    def hosts(self) -> list[tuple[str, str]]:
        """(host, port) of each monitor."""
        return [split_monitor(m) for m in self.monitors]


Disk = FileDisk | RbdDisk


@dataclass(frozen=True)
class GuestDisks:
    """Root (vda), data (vdb, none when the VM has no data disk) and the cloud-init seed."""

    root: Disk
    data: Disk | None
    seed: Disk


def split_monitor(monitor: str) -> tuple[str, str]:
    """ "10.0.0.1:6789" -> ("10.0.0.1", "6789"); "[fd00::1]:3300" -> ("fd00::1", "3300"); the
    port defaults to 6789 (msgr v1, which every librbd speaks)."""
    if monitor.startswith("["):
        host, _, rest = monitor[1:].partition("]")
        return host, rest.removeprefix(":") or str(DEFAULT_MON_PORT)
    host, _, port = monitor.partition(":")
    return host, port or str(DEFAULT_MON_PORT)


def rbd_image(vm: str, kind: str) -> str:
    """The name of a VM's image in the pool."""
    if kind not in RBD_KINDS:
        raise ValueError(f"unknown disk kind {kind!r}")
    return f"{RBD_PREFIX}{vm}.{kind}"


def parse_rbd_image(image: str) -> tuple[str, str] | None:
    """(vm, kind) of an image named as vmctl names them; None for any other name."""
    match = _RBD_IMAGE.fullmatch(image)
    return (match["vm"], match["kind"]) if match else None
