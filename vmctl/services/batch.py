"""`create --count N`: the VMs made side by side. Each VM is its own create (claim, node work,
rollback of that VM alone on failure) and, when asked, its own wait; they run in threads, so
the node work of VMs on different nodes overlaps, and so do their boots and waits. The node work
on one node is bounded (``VmService.node_slot``): a node is not asked to copy ten disks at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmctl.core.errors import VmctlError
from vmctl.core.records import VmRecord
from vmctl.core.requests import CreateRequest

if TYPE_CHECKING:
    from vmctl.services.vms import VmService

MAX_THREADS = 32  # VMs handled at once; the rest queue (their claims wait for a thread)


@dataclass(frozen=True)
class Outcome:
    """One VM of a batch: its record, or why it failed (nothing of it is left then, unless
    its node stopped answering during the rollback: see ``create.rollback``)."""

    name: str
    vm: VmRecord | None = None
    error: VmctlError | None = None


def create_many(
    svc: VmService, requests: list[CreateRequest], until: str | None, timeout: float
) -> list[Outcome]:
    """Create every VM of ``requests`` (and wait for each until ``until``, unless None), side by
    side; the outcomes in the requests' order. Input is checked for all of them before any is
    made: one bad request fails the whole batch (InvalidInput, Conflict) with nothing made."""
    for req in requests:
        svc.check(req)

    def one(req: CreateRequest) -> Outcome:
        try:
            vm = svc.create(req)
            if until is not None:
                vm = svc.wait(vm.name, timeout, until)
        except VmctlError as exc:
            if len(requests) > 1:  # a batch goes on: say so now (one VM's error is raised)
                svc.progress(f"{req.name}: failed: {exc}")
            return Outcome(req.name, error=exc)
        return Outcome(req.name, vm=vm)

    if len(requests) == 1:
        return [one(requests[0])]
    with ThreadPoolExecutor(min(len(requests), MAX_THREADS), "create") as pool:
        return list(pool.map(one, requests))
