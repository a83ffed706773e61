"""Deleting a VM: from the node its PostgreSQL row names, then the cache key and the row.

When the node does not answer, the VM stays recorded as ``deleting`` and the command says so
(NodeUnreachable, exit 6): `vmctl watch-ip` (within seconds of the node answering again) or
`vmctl reconcile --fix` finishes it. Any other failure records the VM as ``error``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from vmctl.core import validation
from vmctl.core.errors import NodeUnreachable
from vmctl.services.create import elapsed

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.core.records import VmRecord
    from vmctl.services.ports import Hypervisor
    from vmctl.services.vms import VmService


def delete(svc: VmService, name: str) -> None:
    """Never from where a cache entry says: a stale one would send the delete to a node without
    the domain."""
    with svc.locked(validation.name(name), "delete"):
        started = time.monotonic()  # the events' "seconds": the cloud's delete duration metrics
        record = svc.get(name)
        svc.store.set_state(record.name, "deleting")
        node = svc.inventory.node(record.node)
        detail: dict[str, Any] = {"actor": svc.actor}
        try:
            remove_from_node(svc.connect(node), node, record, svc.store.installation_id())
        except NodeUnreachable as exc:
            pending = {**detail, "cause": str(exc), "pending": True}
            svc.store.add_event(record.name, node.name, "delete", "failed", pending)
            raise NodeUnreachable(
                f"{exc}; {record.name} stays recorded as deleting, and the delete completes when "
                f"node {node.name} answers again (watch-ip, or `vmctl reconcile --fix`)"
            ) from exc
        except Exception as exc:
            svc.store.set_state(record.name, "error")
            failed = {**detail, "cause": str(exc), "seconds": elapsed(started)}
            svc.store.add_event(record.name, node.name, "delete", "failed", failed)
            raise
        svc.cache.forget(record.name)
        svc.store.delete(record.name)
        detail["seconds"] = elapsed(started)
        svc.store.add_event(record.name, node.name, "delete", "ok", detail)


def remove_from_node(
    hv: Hypervisor, node: Node, vm: VmRecord, installation: str, keep_disks: bool = False
) -> None:
    """Domain, disks, seed, staging leftovers and (managed networks) the DHCP reservation; a
    VM marked by another installation is left alone. ``keep_disks``: the disks stay (shared
    storage: the VM lives on in another node)."""
    if vm.reserved_ip is not None:
        hv.delete(vm.name, node.network.name, vm.mac, installation, keep_disks=keep_disks)
    else:
        hv.delete(vm.name, installation=installation, keep_disks=keep_disks)
