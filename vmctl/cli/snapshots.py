"""`vmctl snapshot create|list|revert|delete NAME [SNAP]`: snapshots of a VM's local disks (root
and data together), recorded in PostgreSQL and removed with the VM."""

from __future__ import annotations

from typing import Annotated

import typer

from vmctl.cli.complete import vm_names
from vmctl.cli.options import Format, LockTimeoutOpt, output_options, progress, vm_service
from vmctl.cli.output import emit

app = typer.Typer(help="Snapshots of a VM's disks (root and data together).", no_args_is_help=True)

VmArg = Annotated[str, typer.Argument(help="The VM.", autocompletion=vm_names)]
SnapArg = Annotated[str, typer.Argument(help="The snapshot's name (a VM name's rules).")]

SNAPSHOT_COLUMNS = [
    ("vm", "VM"),
    ("name", "SNAPSHOT"),
    ("vm_state", "VM STATE"),
    ("quiesced", "QUIESCED"),
    ("created_at", "CREATED (UTC)"),
    ("actor", "BY"),
]


@app.command("create")
@output_options
def snapshot_create(
    name: VmArg,
    snapshot: SnapArg,
    no_quiesce: Annotated[
        bool,
        typer.Option(
            "--no-quiesce",
            help="If the guest agent cannot freeze the filesystems of a running VM, take the "
            "snapshot without (crash-consistent; recorded as not quiesced) instead of failing.",
        ),
    ] = False,
    lock_timeout: LockTimeoutOpt = None,
    *,
    fmt: Format,
) -> None:
    """Take a snapshot of the VM's disks: frozen through the guest agent when it runs."""
    from vmctl.core.snapshots import as_dict

    snap = vm_service(lock_timeout=lock_timeout).snapshot_create(name, snapshot, not no_quiesce)
    emit(as_dict(snap), SNAPSHOT_COLUMNS, fmt)


@app.command("list")
@output_options
def snapshot_list(name: VmArg, *, fmt: Format) -> None:
    """The VM's snapshots (from PostgreSQL), oldest first."""
    from vmctl.core.snapshots import as_dict

    snaps = vm_service(quiet=True).snapshot_list(name)
    emit([as_dict(s) for s in snaps], SNAPSHOT_COLUMNS, fmt)


@app.command("revert")
def snapshot_revert(name: VmArg, snapshot: SnapArg, lock_timeout: LockTimeoutOpt = None) -> None:
    """Put the VM's disks back to a snapshot. A running VM is powered off hard (what it has
    not written is lost), reverted and started again; a stopped one stays stopped."""
    vm = vm_service(lock_timeout=lock_timeout).snapshot_revert(name, snapshot)
    progress(f"{vm.name}: reverted to {snapshot}; {vm.state}")


@app.command("delete")
def snapshot_delete(name: VmArg, snapshot: SnapArg, lock_timeout: LockTimeoutOpt = None) -> None:
    """Delete a snapshot from the VM's disks and from PostgreSQL."""
    vm_service(lock_timeout=lock_timeout).snapshot_delete(name, snapshot)
    progress(f"{name}: snapshot {snapshot} deleted")
