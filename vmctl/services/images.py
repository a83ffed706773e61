"""Base images: `vmctl images import` puts one where each node's storage needs it, `vmctl images
list` shows where each is and what uses it.

An import reads the file once, checks its sha256 (against ``--sha256`` when given) and asks
every location first: an image that VM disks use there (the node's overlays or the pool's
clones, and PostgreSQL's VMs of that image on those nodes) is refused before anything is sent
anywhere (ImageInUse). Each location that lacks the same bytes then gets the file (scripts/
image.sh checks the sha256 of what arrived, and refuses once more, atomically, an image in use),
and the import is recorded in PostgreSQL and the event log (``image-import``, ok or failed). A
node that does not answer is reported (``unreachable``) and the others go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from vmctl.core import images as core
from vmctl.core.errors import (
    ChecksumMismatch,
    ImageInUse,
    InvalidInput,
    NodeUnreachable,
    RemoteCommandFailed,
)
from vmctl.core.images import ImageStatus, Location
from vmctl.core.nodecmd import describe
from vmctl.core.records import default_actor

if TYPE_CHECKING:
    from vmctl.core.inventory import Image, Inventory, Node
    from vmctl.services.ports import Runner, Store

INSTALL_TIMEOUT_S = 3600.0  # checksum and qemu-img convert of a large image on a slow disk
STATUS_TIMEOUT_S = 600.0  # file-status with checksums of large images


@dataclass
class Outcome:
    """What a command did or found: one row per (image, location); nodes that did not answer."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> why


@dataclass
class ImageService:
    inventory: Inventory
    store: Store
    runner_for: Callable[[Node], Runner]  # one SSH connection per node for the command's life
    progress: Callable[[str], None] = lambda _msg: None
    actor: str = field(default_factory=default_actor)
    lock_timeout: float = 30.0

    # -- asking the nodes ----------------------------------------------------------------------

    def _ask(
        self,
        loc: Location,
        images: dict[str, Image],
        outcome: Outcome,
        with_sum: bool = False,
    ) -> tuple[Node, dict[str, ImageStatus]] | None:
        """The first node of ``loc`` that answers, and what it says of ``images``; None when
        none answers (each is in ``outcome.unreachable``)."""
        for node in loc.nodes:
            command = core.status_command(loc, node, images, with_sum)
            try:
                out = self.runner_for(node).run(command, timeout=STATUS_TIMEOUT_S).stdout
            except NodeUnreachable as exc:
                outcome.unreachable[node.name] = str(exc)
                continue
            return node, core.parse_status(out, core.status_keys(loc, images))
        return None

    def _vms(self) -> list[tuple[str, str, str]]:
        return [(vm.name, vm.node, vm.image) for vm in self.store.list()]

    # -- list ------------------------------------------------------------------------------------

    def list_images(self) -> Outcome:
        """One row per image of the inventory and location (and per recorded import of an
        image or location the inventory no longer has): where, whether it is there (asked of
        the nodes: None when none answered), the recorded import, and the VMs that use it."""
        outcome = Outcome()
        images = dict(self.inventory.images)
        records = {(r.name, r.location): r for r in self.store.image_records()}
        vms = self._vms()
        seen = set()
        for loc in core.locations(self.inventory):
            answer = self._ask(loc, images, outcome) if images else None
            for name, image in images.items():
                status = answer[1].get(name) if answer else None
                record = records.get((name, loc.key))
                seen.add((name, loc.key))
                used = set(core.vm_users(vms, name, loc)) | set(status.users if status else ())
                outcome.rows.append(
                    _row(name, loc.key, loc.describe(image), status, record, sorted(used))
                )
        for (name, key), record in sorted(records.items()):
            if (name, key) not in seen:
                where = f"{key} (not in the inventory)"
                outcome.rows.append(_row(name, key, where, None, record, []))
        return outcome

    # -- import ----------------------------------------------------------------------------------

    def import_image(
        self, name: str, file: Path, node: str | None = None, sha256: str | None = None
    ) -> Outcome:
        """Put ``file`` where image ``name`` goes in every location (or ``node``'s)."""
        image = self.inventory.image(name)
        given = core.check_sha256(sha256) if sha256 is not None else None
        targets = core.plan(self.inventory, node)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise InvalidInput("FILE", f"cannot read {file}: {exc.strerror}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if given is not None and given != digest:
            raise InvalidInput(
                "sha256", f"{file} has sha256 {digest}, not {given}: nothing was uploaded"
            )
        fmt = core.file_format(data[:4])
        if fmt != "qcow2" and any(loc.kind == "dir" for loc in targets):
            raise InvalidInput(
                "FILE",
                f"{file} is not a qcow2 image: nodes with dir storage need one "
                "(`qemu-img convert -O qcow2 FILE NEW.qcow2`)",
            )
        outcome = Outcome()
        with self.store.vm_lock(f"image:{name}", "image-import", self.lock_timeout):
            todo = self._check_all(name, image, targets, digest, len(data), outcome)
            for loc, worker in todo:
                self._install(name, image, loc, worker, data, digest, fmt, outcome)
        return outcome

    def _check_all(
        self,
        name: str,
        image: Image,
        targets: list[Location],
        digest: str,
        size: int,
        outcome: Outcome,
    ) -> list[tuple[Location, Node]]:
        """Ask every location before anything is sent: those that need the file (and the
        node to send it to); ImageInUse naming every location where VMs use the image."""
        vms = self._vms()
        records = {(r.name, r.location): r.sha256 for r in self.store.image_records()}
        todo: list[tuple[Location, Node]] = []
        in_use: list[tuple[str, list[str]]] = []
        for loc in targets:
            where = loc.describe(image)
            answer = self._ask(loc, {name: image}, outcome, with_sum=True)
            if answer is None:
                outcome.rows.append(_done(name, loc, where, "unreachable", digest, size))
                continue
            worker, statuses = answer
            status = statuses.get(name, ImageStatus(present=False))
            if status.present and status.sha256 == digest:
                self.progress(f"{name}: already in {where}")
                if records.get((name, loc.key)) != digest:  # there, but not recorded so
                    self._record(name, loc, worker, digest, size, "already there")
                outcome.rows.append(_done(name, loc, where, "already there", digest, size))
                continue
            used = sorted(set(core.vm_users(vms, name, loc)) | set(status.users))
            if used:
                in_use.append((where, used))
            todo.append((loc, worker))
        if in_use:
            raise ImageInUse(name, core.in_use_message(name, in_use), dict(in_use))
        return todo

    def _install(
        self,
        name: str,
        image: Image,
        loc: Location,
        node: Node,
        data: bytes,
        digest: str,
        fmt: str,
        outcome: Outcome,
    ) -> None:
        where = loc.describe(image)
        runner = self.runner_for(node)
        upload = core.upload_path(loc, node, name, image, secrets.token_hex(4))
        detail: dict[str, Any] = {
            "actor": self.actor,
            "image": name,
            "location": loc.key,
            "sha256": digest,
            "size_bytes": len(data),
        }
        try:
            self.progress(f"{name}: sending {_size(len(data))} to {node.name} ({where})")
            runner.run(core.stage_command(node, str(PurePosixPath(upload).parent)))
            try:
                runner.put(data, upload, 0o600)
            except Exception:
                with contextlib.suppress(Exception):
                    runner.run(core.discard_command(node, upload), check=False)
                raise
            self.progress(f"{name}: checking and installing it on {node.name}")
            command = core.install_command(loc, node, name, image, upload, digest, fmt)
            result = runner.run(command, check=False, timeout=INSTALL_TIMEOUT_S)
            _check_install(name, node.name, where, command, result.exit_status, result)
        except NodeUnreachable as exc:
            self._event(node.name, "failed", {**detail, "cause": str(exc)})
            outcome.unreachable[node.name] = str(exc)
            outcome.rows.append(_done(name, loc, where, "unreachable", digest, len(data)))
            return
        except Exception as exc:
            self._event(node.name, "failed", {**detail, "cause": str(exc)})
            raise
        for line in result.stderr.splitlines():  # e.g. an old pool image kept: said, not fatal
            if line.startswith("image.sh: "):
                self.progress(f"{node.name}: {line.removeprefix('image.sh: ')}")
        done = core.install_result(result.stdout)
        self._record(name, loc, node, digest, len(data), done)
        self.progress(f"{name}: {done} in {where}")
        outcome.rows.append(_done(name, loc, where, done, digest, len(data)))

    def _record(
        self, name: str, loc: Location, node: Node, digest: str, size: int, result: str
    ) -> None:
        self.store.record_image(name, loc.key, digest, size)
        detail = {"actor": self.actor, "image": name, "location": loc.key, "sha256": digest}
        self._event(node.name, "ok", {**detail, "size_bytes": size, "result": result})

    def _event(self, node: str, result: str, detail: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # PostgreSQL down: the cause matters more
            self.store.add_event(None, node, "image-import", result, detail)


def _check_install(
    name: str, node: str, where: str, command: list[str], status: int, result: Any
) -> None:
    """scripts/image.sh's exit status as vmctl's errors."""
    if status == 0:
        return
    if status == core.IN_USE:
        used = core.users(result.stdout)
        raise ImageInUse(name, core.in_use_message(name, [(where, used)]), {where: used})
    if status == core.BAD_SUM:
        raise ChecksumMismatch(
            f"{name}: what node {node} received is not what was sent ({_last(result.stderr)}); "
            "nothing was changed there"
        )
    if status == core.BAD_IMAGE:
        raise InvalidInput("FILE", f"{_last(result.stderr)} (node {node}; nothing was changed)")
    raise RemoteCommandFailed(node, describe(command), status, result.stderr)


def _last(stderr: str) -> str:
    lines = [ln.removeprefix("image.sh: ") for ln in stderr.strip().splitlines()]
    return lines[-1] if lines else "no error output"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _done(
    name: str, loc: Location, where: str, result: str, digest: str, size: int
) -> dict[str, Any]:
    return {
        "image": name,
        "location": loc.key,
        "where": where,
        "result": result,
        "sha256": digest,
        "size_bytes": size,
    }


def _row(
    name: str,
    key: str,
    where: str,
    status: ImageStatus | None,
    record: core.ImageRecord | None,
    used_by: list[str],
) -> dict[str, Any]:
    return {
        "image": name,
        "location": key,
        "where": where,
        "present": None if status is None else status.present,
        "sha256": record.sha256 if record else None,
        "size_bytes": record.size_bytes if record else (status.size if status else None),
        "imported_at": record.imported_at if record else None,
        "imported_by": record.imported_by if record else None,
        "used_by": used_by,
    }


__all__ = ["ImageService", "Outcome"]
