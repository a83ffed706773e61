"""What the node scripts' exit statuses for snapshots mean, for both storage backends
(scripts/snapshot.sh and scripts/rbd.sh share them: vmctl.core.snapshots.EXISTS, NO_FREEZE,
MISSING)."""

from __future__ import annotations

from collections.abc import Sequence

from vmctl.core import snapshots as snap
from vmctl.core.errors import Conflict, NotFound, RemoteCommandFailed, Unavailable
from vmctl.core.nodecmd import describe


def check_create(node: str, vm: str, command: Sequence[str], status: int, stderr: str) -> None:
    """A snapshot create's exit status as vmctl's errors (both backends' scripts share them)."""
    if status == snap.EXISTS:
        raise Conflict(
            f"{vm}: {_line(stderr, 'already')} on node {node} "
            "(not recorded in PostgreSQL: see `vmctl reconcile`)"
        )
    if status == snap.NO_FREEZE:
        why = _line(stderr, "did not freeze")
        raise Unavailable(
            f"{vm}: {why}; is qemu-guest-agent running in the guest? (--no-quiesce "
            "takes the snapshot unfrozen then)"
        )
    if status != 0:
        raise RemoteCommandFailed(node, describe(command), status, stderr)


def check_revert(node: str, vm: str, command: Sequence[str], status: int, stderr: str) -> None:
    if status == snap.MISSING:
        raise NotFound(f"{vm}: {stderr.strip()}")
    if status != 0:
        raise RemoteCommandFailed(node, describe(command), status, stderr)


def _line(stderr: str, marker: str) -> str:
    """The script's line about ``marker`` (without its "snapshot-create: " prefix)."""
    line = next((ln for ln in stderr.splitlines() if marker in ln), stderr.strip())
    return line.removeprefix("snapshot-create: ")
