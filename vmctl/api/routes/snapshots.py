"""/api/v1/vm/{name}/snapshots: snapshots of a VM's disks (root and data together), one project
per token (another project's VM is 404, as if it did not exist). Taking, reverting and deleting
one honour an Idempotency-Key (they stay synchronous: no job kinds for them)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from vmctl.api import idempotent
from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.api.idempotent import Keyed
from vmctl.api.models import VmDetail, vm_detail
from vmctl.core.logfields import fields
from vmctl.core.snapshots import Snapshot

router = APIRouter(prefix="/api/v1/vm/{name}/snapshots", responses=ERRORS)
log = logging.getLogger("vmctl.serve")


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["before-upgrade"], description="a VM name's rules")
    quiesce: bool = Field(
        True,
        description="a running VM: fail when the guest agent cannot freeze its filesystems "
        "(true), or take the snapshot unfrozen then (false)",
    )


class SnapshotOut(BaseModel):
    vm: str
    name: str
    vm_state: str = Field(description="running or stopped when it was taken")
    quiesced: bool = Field(description="whether the guest's filesystems were frozen for it")
    created_at: str = Field(description="ISO-8601 UTC", examples=["2026-12-02T07:52:26.123Z"])
    actor: str


def snapshot_out(snap: Snapshot) -> dict[str, Any]:
    return {
        "vm": snap.vm,
        "name": snap.name,
        "vm_state": snap.vm_state,
        "quiesced": snap.quiesced,
        "created_at": snap.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": snap.actor,
    }


@router.get("", response_model=list[SnapshotOut])
def list_snapshots(name: str, project: Project, svc: Svc) -> list[dict[str, Any]]:
    vm = svc.vms.get_in_project(name, project)
    return [snapshot_out(s) for s in svc.vms.snapshot_list(vm.name)]


@router.post("", status_code=201, response_model=SnapshotOut, responses=idempotent.responses(201))
def create_snapshot(name: str, body: SnapshotIn, call: Keyed) -> Response:
    def work() -> tuple[int, Any]:
        vm = call.svc.vms.get_in_project(name, call.project)
        snap = call.svc.vms.snapshot_create(vm.name, body.name, body.quiesce)
        _log("snapshot taken", vm.name, snap.name, call.project)
        return 201, snapshot_out(snap)

    return call.answer(body.model_dump(mode="json"), work)


@router.post("/{snapshot}/revert", response_model=VmDetail, responses=idempotent.responses(200))
def revert_snapshot(name: str, snapshot: str, call: Keyed) -> Response:
    """Put the disks back to the snapshot; a running VM is powered off hard and started again."""

    def work() -> tuple[int, Any]:
        vm = call.svc.vms.get_in_project(name, call.project)
        reverted = call.svc.vms.snapshot_revert(vm.name, snapshot)
        _log("snapshot reverted", vm.name, snapshot, call.project)
        return 200, vm_detail(reverted)

    return call.answer(None, work)


@router.delete("/{snapshot}", status_code=204, responses=idempotent.responses(204))
def delete_snapshot(name: str, snapshot: str, call: Keyed) -> Response:
    def work() -> tuple[int, Any]:
        vm = call.svc.vms.get_in_project(name, call.project)
        call.svc.vms.snapshot_delete(vm.name, snapshot)
        _log("snapshot deleted", vm.name, snapshot, call.project)
        return 204, None

    return call.answer(None, work)


def _log(what: str, vm: str, snapshot: str, project: str) -> None:
    log.info(what, extra=fields(vm=vm, snapshot=snapshot, project=project))
