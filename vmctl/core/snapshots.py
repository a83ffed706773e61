"""Snapshots of a VM's local qcow2 disks (root and data together): pure functions.

A snapshot is a qcow2 *internal* snapshot of the same name in each of the VM's disks
(``root.qcow2``, and ``data.qcow2`` when the VM has a data disk; never the raw seed). A stopped
VM's disks are changed with ``qemu-img snapshot``; a running VM's through QEMU's monitor (QMP):
one ``transaction`` of ``blockdev-snapshot-internal-sync`` actions, so both disks are taken at
the same instant, between the guest agent's fs-freeze and fs-thaw. Here: the record, the QMP
commands, the parsers of ``query-block`` and ``qemu-img snapshot -l``, and the node commands
(most run scripts/snapshot.sh, whose header says what each guarantees).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.nodecmd import VIRSH, script_command

DISKS = ("root.qcow2", "data.qcow2")  # the order of their targets, vda and vdb
TARGETS = {"root.qcow2": "vda", "data.qcow2": "vdb"}
ACTIONS = ("snapshot-create", "snapshot-revert", "snapshot-delete")

# scripts/snapshot.sh's exit status (documented there, and equal: a unit test checks) when the
# guest agent did not freeze the filesystems (create-running) ...
NO_FREEZE = 10
# ... and when a disk has a snapshot of that name already (create-stopped, create-running).
EXISTS = 4
# exit status of a revert when a disk lacks the snapshot (no disk changed)
MISSING = 3


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as PostgreSQL records it."""

    vm: str
    name: str
    vm_state: str  # "running" (through QMP) or "stopped" (through qemu-img)
    quiesced: bool  # whether the guest's filesystems were frozen for it
    created_at: datetime
    actor: str


def as_dict(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as scripts see it (stable keys; the CLI writes times ISO-8601 UTC)."""
    return {
        "vm": snap.vm,
        "name": snap.name,
        "vm_state": snap.vm_state,
        "quiesced": snap.quiesced,
        "created_at": snap.created_at,
        "actor": snap.actor,
    }


def disk_paths(storage_dir: str, vm: str, data_disk: bool) -> list[str]:
    """The VM's qcow2 disks on its node: root, then data (when it has one)."""
    names = DISKS if data_disk else DISKS[:1]
    return [f"{storage_dir}/{vm}/{disk}" for disk in names]


# -- QMP ---------------------------------------------------------------------------------------


def qmp(execute: str, arguments: dict[str, Any] | None = None) -> str:
    """One QMP command as the JSON text `virsh qemu-monitor-command` sends."""
    command: dict[str, Any] = {"execute": execute}
    if arguments is not None:
        command["arguments"] = arguments
    return json.dumps(command, separators=(",", ":"))


QUERY_BLOCK = qmp("query-block")


def create_transaction(node_names: Sequence[str], snapshot: str) -> str:
    """One transaction taking internal snapshot ``snapshot`` of every block node at once (all or
    none: QEMU undoes the ones done when one fails)."""
    actions = [
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": node, "name": snapshot}}
        for node in node_names
    ]
    return qmp("transaction", {"actions": actions})


def delete_command(node_name: str, snapshot: str) -> str:
    return qmp("blockdev-snapshot-delete-internal-sync", {"device": node_name, "name": snapshot})


def qmp_error(output: str) -> str | None:
    """The error of a QMP answer (`virsh qemu-monitor-command` exits 0 even then), or None when
    it is a ``return``; text that is no QMP answer is an error too."""
    try:
        answer = json.loads(output)
    except ValueError:
        return f"not a QMP answer: {output.strip()[:200]!r}"
    if not isinstance(answer, dict):
        return f"not a QMP answer: {output.strip()[:200]!r}"
    if "return" in answer:
        return None
    error = answer.get("error")
    if isinstance(error, dict):
        return str(error.get("desc") or error.get("class") or error)
    return f"not a QMP answer: {output.strip()[:200]!r}"


def block_nodes(query_block: str, paths: Sequence[str]) -> list[str]:
    """The block node names (what blockdev-snapshot-internal-sync calls ``device``) of the
    disks ``paths``, in their order, from QMP ``query-block``'s answer. A disk is found by its
    image's file name, else by its qdev (vda is virtio-disk0, vdb virtio-disk1). ValueError
    when one is not attached, or the answer is not what query-block gives."""
    answer = json.loads(query_block)
    entries = answer.get("return") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"query-block: unexpected answer: {query_block.strip()[:200]!r}")
    by_file: dict[str, str] = {}
    by_qdev: dict[str, str] = {}
    for entry in entries:
        inserted = entry.get("inserted") if isinstance(entry, dict) else None
        if not isinstance(inserted, dict) or not isinstance(inserted.get("node-name"), str):
            continue
        node = inserted["node-name"]
        image = inserted.get("image")
        for name in (inserted.get("file"), image.get("filename") if image else None):
            if isinstance(name, str):
                by_file.setdefault(name, node)
        qdev = entry.get("qdev")
        if isinstance(qdev, str):
            by_qdev[qdev] = node
    found = []
    for index, path in enumerate(paths):
        node = by_file.get(path) or by_qdev.get(
            f"/machine/peripheral/virtio-disk{index}/virtio-backend"
        )
        if node is None:
            raise ValueError(f"query-block: no block node holds {path}")
        found.append(node)
    return found


# -- qemu-img ----------------------------------------------------------------------------------


def parse_snapshot_list(output: str) -> list[str]:
    """The snapshot names (tags) in `qemu-img snapshot -l` output, in its order."""
    names = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():  # ID TAG VM-SIZE ... (header lines are not)
            names.append(fields[1])
    return names


def list_command(paths: Sequence[str]) -> list[str]:
    """`qemu-img snapshot -l -U` of each of ``paths`` that exists (-U: images in use too)."""
    return script_command("snapshot.sh", ["list", *paths])


def parse_list_output(output: str) -> dict[str, list[str]]:
    """``list_command``'s output: disk file -> its snapshot names."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line[3:], [])
        else:
            current.extend(parse_snapshot_list(line))
    return found


def create_stopped_command(snapshot: str, paths: Sequence[str]) -> list[str]:
    """Take the snapshot in each disk of a stopped VM with qemu-img, all or none. Exit EXISTS
    when a disk has ``snapshot`` already."""
    return script_command("snapshot.sh", ["create-stopped", snapshot, *paths])


def create_running_command(
    name: str, snapshot: str, paths: Sequence[str], transaction: str, quiesce: str
) -> list[str]:
    """Take ``transaction`` (``create_transaction``'s, for the disks ``paths``) between fs-freeze
    and fs-thaw. ``quiesce``: "yes" (freeze, or exit NO_FREEZE), "try" (freeze if the agent
    can) or "no" (do not freeze). Exit EXISTS when a disk has ``snapshot`` already."""
    if quiesce not in ("yes", "try", "no"):
        raise ValueError(f"quiesce must be yes, try or no, not {quiesce!r}")
    args = ["create-running", name, quiesce, transaction, snapshot, *paths]
    return script_command("snapshot.sh", args)


def parse_quiesced(output: str) -> bool:
    """Whether ``create_running_command`` froze the filesystems, from what it printed."""
    for line in reversed(output.splitlines()):
        if line.startswith("quiesced="):
            return line.strip() == "quiesced=1"
    raise ValueError(f"snapshot-create printed no quiesced= line: {output.strip()[:200]!r}")


def monitor_command(name: str, command: str) -> list[str]:
    return [*VIRSH, "qemu-monitor-command", name, command]


def revert_command(snapshot: str, paths: Sequence[str]) -> list[str]:
    """Apply the snapshot to each disk (the disks must not be in use): each disk is checked to
    hold it before any is changed, so a missing one changes none."""
    return script_command("snapshot.sh", ["revert", snapshot, *paths])


def delete_stopped_command(snapshot: str, paths: Sequence[str]) -> list[str]:
    """Delete the snapshot from each disk (of a stopped VM) in one command."""
    return script_command("snapshot.sh", ["delete-stopped", snapshot, *paths])


def check_qmp(node: str, what: str, output: str) -> None:
    """RemoteCommandFailed when ``output`` is a QMP error."""
    error = qmp_error(output)
    if error is not None:
        raise RemoteCommandFailed(node, what, 0, error)
