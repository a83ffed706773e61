"""The differences `vmctl reconcile` finds (``Drift``) and their kinds, in the order ``--fix``
repairs them; ``vmctl.core.reconcile.compare`` finds them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# -- the kinds of drift ------------------------------------------------------------------------

ROW_WITHOUT_DOMAIN = "row-without-domain"
DOMAIN_WITHOUT_ROW = "domain-without-row"
ORPHAN_DIR = "orphan-dir"  # a VM directory: disks, seed, console log
ORPHAN_IMAGE = "orphan-image"  # an image of shared storage (RBD) named as a VM's, no row
ORPHAN_STAGING = "orphan-staging"
ORPHAN_RESERVATION = "orphan-reservation"
WRONG_STATE = "wrong-state"
STALE_CACHE = "stale-cache-key"
SNAPSHOT_WITHOUT_ROW = "snapshot-without-row"  # on a disk, not recorded: reported only
ROW_WITHOUT_SNAPSHOT = "row-without-snapshot"  # recorded, missing from a disk: reported only
STUCK_CREATING = "stuck-creating"
STUCK_DELETING = "stuck-deleting"
STUCK_MOVING = "stuck-moving"  # a move began, its process died: move_node is set
FOREIGN = "foreign"  # information only: not vmctl's, never touched

KINDS = (
    STUCK_CREATING,
    STUCK_DELETING,
    STUCK_MOVING,
    DOMAIN_WITHOUT_ROW,
    ORPHAN_DIR,
    ORPHAN_IMAGE,
    ORPHAN_STAGING,
    ORPHAN_RESERVATION,
    ROW_WITHOUT_DOMAIN,
    WRONG_STATE,
    STALE_CACHE,
    SNAPSHOT_WITHOUT_ROW,
    ROW_WITHOUT_SNAPSHOT,
)
"""Every kind of drift, in the order ``--fix`` repairs them (rows first: rolling back a stuck
create removes its domain, directory and reservation too)."""

# -- drift -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    kind: str
    node: str | None
    vm: str | None  # the VM it concerns (its lock is held while it is repaired)
    subject: str  # what differs: a domain, a path, a reservation, a cache key, a row
    detail: str
    fix: str | None = None  # what `--fix` does about it; None: only reported
    data: Mapping[str, str] = field(default_factory=dict)  # what the repair needs

    @property
    def info(self) -> bool:
        """Information only (``foreign``): not drift."""
        return self.kind == FOREIGN

    @property
    def key(self) -> tuple[str, str | None, str]:
        """The same drift in two passes has the same key (the watcher records it once)."""
        return (self.kind, self.node, self.subject)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = dict(self.data)
        d["fixable"] = self.fix is not None
        return d
