"""Moving VMs between nodes that share their disks' storage: `vmctl move` and `vmctl drain`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vmctl.cli.complete import vm_names
from vmctl.cli.options import (
    Format,
    LockTimeoutOpt,
    QueueOpt,
    output_options,
    progress,
    queued,
    vm_service,
)
from vmctl.cli.output import SHOW_COLUMNS, emit, record
from vmctl.core import validation
from vmctl.core.errors import ExitStatus

app = typer.Typer()

TimeoutOpt = Annotated[
    float,
    typer.Option(help="Seconds a running guest gets to shut down before it moves (ACPI/agent)."),
]


@app.command()
@output_options
def move(
    name: Annotated[str, typer.Argument(help="The VM.", autocompletion=vm_names)],
    to: Annotated[str, typer.Option("--to", help="The node it goes to.")],
    timeout: TimeoutOpt = 120,
    wait: Annotated[
        bool, typer.Option("--wait", help="Then wait for its new address and SSH.")
    ] = False,
    lock_timeout: LockTimeoutOpt = None,
    queue: QueueOpt = None,
    *,
    fmt: Format,
) -> None:
    """Move a VM whose disks are in shared storage (RBD) to another node that shares it: shut
    down, start there on the same disks, new address from that node's network. A failure leaves
    it running where it was; a move that died half-way is ended first."""
    validation.seconds("timeout", timeout)
    svc = vm_service(lock_timeout=lock_timeout)
    if queued(queue):
        from vmctl.cli.jobs import move_queued

        moved = move_queued(svc, name, to, timeout)
    else:
        moved = svc.move(name, to, timeout)
    progress(f"{moved.name}: moved to {moved.node}")
    if wait:
        moved = svc.wait(moved.name, timeout=600, until="ssh")
    emit(record(moved), SHOW_COLUMNS, fmt)


@app.command()
@output_options
def drain(
    node: Annotated[str, typer.Argument(help="The node to empty.")],
    stop_local: Annotated[
        bool,
        typer.Option(
            "--stop-local", help="Shut down the VMs whose disks are on the node (they stay)."
        ),
    ] = False,
    timeout: TimeoutOpt = 120,
    lock_timeout: LockTimeoutOpt = None,
    queue: QueueOpt = None,
    *,
    fmt: Format,
) -> None:
    """Move every VM on shared storage off NODE (to the nodes that share it, spread). VMs with
    local disks make it refuse, naming them, unless --stop-local. Exit 1 if any VM failed.
    With --queue, one job per VM, all queued at once (the workers run them side by side)."""
    validation.seconds("timeout", timeout)
    svc = vm_service(lock_timeout=lock_timeout)
    if queued(queue):
        from vmctl.cli.jobs import drain_queued

        result = drain_queued(svc, node, stop_local, timeout)
    else:
        result = svc.drain(node, stop_local, timeout)
    rows = [{"vm": vm, "result": "moved", "detail": f"to {to}"} for vm, to in result.moved]
    rows += [{"vm": vm, "result": "stopped", "detail": "local disks"} for vm in result.stopped]
    rows += [{"vm": vm, "result": "failed", "detail": why} for vm, why in result.failed]
    emit(rows, [("vm", "VM"), ("result", "RESULT"), ("detail", "DETAIL")], fmt)
    total = len(rows)
    if result.failed:
        print(f"vmctl: {len(result.failed)} of {total} VMs failed to drain.", file=sys.stderr)
        raise typer.Exit(ExitStatus.ERROR)
    progress(f"node {node}: drained ({len(result.moved)} moved, {len(result.stopped)} stopped)")
