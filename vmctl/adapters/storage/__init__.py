"""The storage adapters (the Storage port): where a node keeps VM disks, per the inventory.

``local.LocalStorage``: qcow2 files in a directory of the node; ``rbd.RbdStorage``: images in a
Ceph RBD pool that nodes share. Nothing else in vmctl knows which one a VM uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmctl.adapters.storage.local import LocalStorage
from vmctl.adapters.storage.rbd import RbdStorage

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.services.ports.storage import Storage


def storage_for(node: Node) -> Storage:
    """The node's storage, as its inventory entry says."""
    config = node.storage
    if config.type == "rbd":
        return RbdStorage(config)
    return LocalStorage(config.directory)


__all__ = ["LocalStorage", "RbdStorage", "storage_for"]
