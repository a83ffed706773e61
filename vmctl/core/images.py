"""Base images where each node's storage needs them: pure parts of `vmctl images import|list`.

A base image of the inventory (``images.NAME``) lives in one *location* per storage: on a node
with ``type: dir`` storage it is a qcow2 file at ``images.NAME.path`` (VM root disks are qcow2
overlays backed by it); in an RBD pool, shared by every node that uses the pool, it is the RBD
image NAME with its snapshot NAME@base (VM root disks are clones of it). Here: the locations and
which of them an import goes to, checksums and formats, the node commands (they run
scripts/image.sh, whose header says what each guarantees) and the parser of what they print.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from vmctl.core.errors import InvalidInput
from vmctl.core.inventory import Image, Inventory, Node
from vmctl.core.nodecmd import script_command
from vmctl.core.storage import parse_rbd_image

# scripts/image.sh's exit statuses (documented there, and equal: a unit test checks)
IN_USE = 4  # clones or overlays use the image: nothing changed
BAD_SUM = 5  # the upload's sha256 differs from what was sent: removed, nothing changed
BAD_IMAGE = 6  # the upload is not a usable base image: removed, nothing changed

SHA256_RE = re.compile(r"[0-9a-f]{64}")
QCOW2_MAGIC = b"QFI\xfb"
UPLOADS = ".images"  # under a node's storage directory: uploads on their way into a pool
RESULTS = ("installed", "already there", "unreachable")


@dataclass(frozen=True)
class Location:
    """Where an image goes: one node's directory (``dir``), or an RBD pool (``rbd``) that
    ``nodes`` share (any of them can put it there; the first that answers does)."""

    key: str  # what PostgreSQL records: the node's name, or the pool's key (pool@monitors)
    kind: str  # "dir" or "rbd"
    nodes: tuple[Node, ...]

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def describe(self, image: Image | None = None) -> str:
        """For people: "node node1 /var/lib/.../debian-12.qcow2", "rbd pool vms (nodes ...)"."""
        if self.kind == "dir":
            return f"node {self.key}" + (f" {image.path}" if image is not None else "")
        names = ", ".join(sorted(self.node_names))
        return f"rbd pool {self.nodes[0].storage.pool} (nodes {names})"


def locations(inventory: Inventory) -> list[Location]:
    """Every location of the inventory, in the order of its nodes: each `dir` node, each pool
    (once, with every node that uses it)."""
    found: dict[str, Location] = {}
    for node in inventory.nodes:
        key = node.storage.pool_key
        if key is None:
            found[node.name] = Location(node.name, "dir", (node,))
        elif key in found:
            found[key] = Location(key, "rbd", (*found[key].nodes, node))
        else:
            found[key] = Location(key, "rbd", (node,))
    return list(found.values())


def plan(inventory: Inventory, node: str | None = None) -> list[Location]:
    """Where an import goes: every location, or the one of ``node`` (its pool, for an RBD node,
    with ``node`` first to do the work). NotFound for an unknown node."""
    if node is None:
        return locations(inventory)
    wanted = inventory.node(node)
    for loc in locations(inventory):
        if wanted in loc.nodes:
            rest = tuple(n for n in loc.nodes if n is not wanted)
            return [Location(loc.key, loc.kind, (wanted, *rest))]
    raise AssertionError("every node has a location")  # pragma: no cover


def check_sha256(value: str) -> str:
    """A sha256 as given by people (any case, surrounding blanks) or InvalidInput."""
    digest = value.strip().lower()
    if not SHA256_RE.fullmatch(digest):
        raise InvalidInput("sha256", f"{value!r} is not a sha256 (64 hexadecimal digits)")
    return digest


def file_format(head: bytes) -> str:
    """ "qcow2" for a file that starts with qcow2's magic, else "raw"."""
    return "qcow2" if head.startswith(QCOW2_MAGIC) else "raw"


def upload_path(loc: Location, node: Node, name: str, image: Image, token: str) -> str:
    """Where the file is sent: beside the image's path (so the final rename is atomic) on a
    `dir` node; under the node's storage directory for a pool. ``token``: 8 hex digits."""
    if not re.fullmatch(r"[0-9a-f]{8}", token):
        raise ValueError(f"bad upload token {token!r}")
    if loc.kind == "dir":
        path = PurePosixPath(image.path)
        return f"{path.parent}/.{path.name}.vmctl-upload-{token}"
    return f"{node.storage.directory}/{UPLOADS}/{name}.vmctl-upload-{token}"


# -- node commands (scripts/image.sh) ----------------------------------------------------------


def _rbd_args(node: Node) -> list[str]:
    s = node.storage
    if s.type != "rbd":
        return []
    assert s.pool and s.user and s.monitors
    mons = ",".join(s.monitors)
    return ["--rbd-pool", s.pool, "--rbd-user", s.user, "--rbd-mons", mons]


def _command(node: Node, *args: str) -> list[str]:
    rbd = _rbd_args(node)
    if rbd:
        rbd += ["--rbd-keyring", node.storage.keyring_path]
    return script_command("image.sh", [*rbd, *args])


def stage_command(node: Node, directory: str) -> list[str]:
    return _command(node, "stage", directory)


def discard_command(node: Node, upload: str) -> list[str]:
    return _command(node, "discard", upload)


def status_command(
    loc: Location, node: Node, images: dict[str, Image], with_sum: bool = False
) -> list[str]:
    """What the node knows of ``images`` (name -> its inventory entry) in ``loc``."""
    if loc.kind == "dir":
        paths = [image.path for image in images.values()]
        return _command(
            node, "file-status", node.storage.directory, "yes" if with_sum else "no", *paths
        )
    return _command(node, "rbd-status", *images)


def install_command(
    loc: Location, node: Node, name: str, image: Image, upload: str, sha256: str, fmt: str
) -> list[str]:
    if loc.kind == "dir":
        directory = node.storage.directory
        return _command(node, "file-install", directory, image.path, upload, sha256)
    return _command(node, "rbd-install", name, upload, sha256, fmt)


# -- what the node says ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageStatus:
    """An image in one location, as its node reports it."""

    present: bool
    size: int | None = None
    sha256: str | None = None  # of the file (dir, when asked), or as recorded in the pool
    users: tuple[str, ...] = ()  # VMs (or, for a clone not named as vmctl names, the image)


def user_name(user: str) -> str:
    """ "vms/vmctl.web-1.root" -> "web-1"; a VM name as is; another image's name as is."""
    image = user.rpartition("/")[2]
    parsed = parse_rbd_image(image)
    return parsed[0] if parsed else user


def users(output: str) -> list[str]:
    """The users of an image from the "user=" lines of a command's output."""
    return [user_name(line[5:].strip()) for line in output.splitlines() if line[:5] == "user="]


def parse_status(output: str, keys: dict[str, str]) -> dict[str, ImageStatus]:
    """file-status / rbd-status output -> image name -> status; ``keys`` maps what the script
    prints after "== " (a path, or the image name) to the image's name."""
    found: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in output.splitlines():
        if line.startswith("== "):
            name = keys.get(line[3:].strip())
            current = found.setdefault(name, {"users": []}) if name is not None else None
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            continue
        if key == "present":
            current["present"] = value.strip() == "1"
        elif key == "size" and value.strip().isdigit():
            current["size"] = int(value)
        elif key == "sha256" and SHA256_RE.fullmatch(value.strip()):
            current["sha256"] = value.strip()
        elif key == "user":
            current["users"].append(user_name(value.strip()))
    return {
        name: ImageStatus(
            present=bool(s.get("present")),
            size=s.get("size"),
            sha256=s.get("sha256"),
            users=tuple(sorted(set(s["users"]))),
        )
        for name, s in found.items()
    }


def status_keys(loc: Location, images: dict[str, Image]) -> dict[str, str]:
    """What file-status / rbd-status prints for each image -> the image's name."""
    if loc.kind == "dir":
        return {image.path: name for name, image in images.items()}
    return {name: name for name in images}


def install_result(output: str) -> str:
    """ "installed" or "already there" from an install's "result=" line."""
    for line in output.splitlines():
        if line.strip() == "result=unchanged":
            return "already there"
    return "installed"


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """An import as PostgreSQL records it: the last one of each image in each location."""

    name: str
    location: str  # a node's name, or an RBD pool's key
    sha256: str
    size_bytes: int
    imported_at: datetime
    imported_by: str


def vm_users(vms: Iterable[tuple[str, str, str]], name: str, loc: Location) -> list[str]:
    """Names of the VMs (name, node, image) made from image ``name`` on nodes of ``loc``."""
    nodes = set(loc.node_names)
    return sorted(vm for vm, node, image in vms if image == name and node in nodes)


def in_use_message(image: str, uses: Sequence[tuple[str, Sequence[str]]]) -> str:
    """ "image debian-12 is in use, not overwritten: node node1 /x.qcow2 by web-1, web-2"."""
    where = "; ".join(f"{label} by {', '.join(names)}" for label, names in uses)
    return (
        f"image {image} is in use, not overwritten: {where} "
        "(delete those VMs first, or import under another name)"
    )
