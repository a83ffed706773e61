"""The VM commands: create, list, show, wait, ssh, delete, nodes. Each parses, calls the VM
service, and hands records to `output.emit`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from vmctl.cli.complete import node_names, vm_names
from vmctl.cli.options import (
    Format,
    LockTimeoutOpt,
    QueueOpt,
    output_options,
    queued,
    settings,
    vm_service,
)
from vmctl.cli.output import NODE_COLUMNS, SHOW_COLUMNS, VM_COLUMNS, emit, record, stream_json
from vmctl.core import validation
from vmctl.core.errors import ExitStatus, InvalidInput
from vmctl.core.readiness import check_step

app = typer.Typer()

TABLE_LIMIT = 500  # rows `vmctl list` shows as a table unless --limit says otherwise

WaitForOpt = Annotated[
    str | None,
    typer.Option(
        "--wait-for",
        help="ip, ssh or cloud-init (the default): how ready --wait waits for. Implies --wait.",
    ),
]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait (more than 0).")]
NodeOpt = Annotated[
    str | None, typer.Option(help="Only VMs on this node.", autocompletion=node_names)
]
VmArg = Annotated[str, typer.Argument(help="The VM.", autocompletion=vm_names)]


@app.command()
@output_options
def create(
    name: Annotated[
        str,
        typer.Argument(
            help="VM name (becomes its hostname); with --count, a prefix: NAME-1 … NAME-N."
        ),
    ],
    ram: Annotated[str | None, typer.Option("--ram", help="RAM in MiB.")] = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="vCPUs.")] = None,
    disk: Annotated[str | None, typer.Option("--disk", help="Data disk in GiB.")] = None,
    image: Annotated[str | None, typer.Option(help="Image name from the inventory.")] = None,
    node: Annotated[
        str | None, typer.Option(help="Put it on this node.", autocompletion=node_names)
    ] = None,
    group: Annotated[str | None, typer.Option(help="Anti-affinity group: one per node.")] = None,
    project: Annotated[str | None, typer.Option(help="Project (API tokens see theirs).")] = None,
    pack: Annotated[bool, typer.Option("--pack/--spread", help="Fill nodes or spread.")] = False,
    ssh_key: Annotated[
        list[str] | None,
        typer.Option("--ssh-key", help="Public key file for the guest (repeatable)."),
    ] = None,
    user_data: Annotated[
        Path | None, typer.Option(help="Extra #cloud-config or #! script, merged after vmctl's.")
    ] = None,
    count: Annotated[str, typer.Option(help="How many VMs.")] = "1",
    wait: Annotated[
        bool, typer.Option(help="Wait until the VMs are ready (see --wait-for).")
    ] = False,
    wait_for: WaitForOpt = None,
    timeout: TimeoutOpt = 300,
    lock_timeout: LockTimeoutOpt = None,
    queue: QueueOpt = None,
    *,
    fmt: Format,
) -> None:
    """Create VMs: place, make disks and seed, boot; record in PostgreSQL."""
    from vmctl import wiring
    from vmctl.core.requests import CreateRequest

    # Every option is checked before anything is touched.
    n = validation.integer("count", count)
    until = check_step(wait_for or "cloud-init")
    validation.seconds("timeout", timeout)
    extra = _read_user_data(user_data)
    keys = wiring.authorized_keys(settings(), ssh_key)
    names = [name] if n == 1 else [f"{name}-{i}" for i in range(1, n + 1)]
    requests = [
        CreateRequest(
            name=vm_name,
            ram_mb=ram,
            cpu=cpu,
            disk_gb=disk,
            image=image,
            node=node,
            group=group,
            policy="pack" if pack else "spread",
            authorized_keys=keys,
            user_data=extra,
            project=project,
        )
        for vm_name in names
    ]
    svc = vm_service(lock_timeout=lock_timeout)
    until_or_none = until if wait or wait_for is not None else None
    if queued(queue):
        from vmctl.cli.jobs import create_queued

        outcomes = create_queued(svc, requests, until_or_none, timeout)
    else:
        outcomes = svc.create_many(requests, until_or_none, timeout)
    made = [o.vm for o in outcomes if o.vm is not None]
    failed = [o for o in outcomes if o.error is not None]
    if n == 1 and failed:
        assert failed[0].error is not None
        raise failed[0].error
    rows = [record(vm) for vm in made]
    emit(rows[0] if n == 1 else rows, SHOW_COLUMNS if n == 1 else VM_COLUMNS, fmt)
    if failed:  # each one's error was told as it came
        which = ", ".join(o.name for o in failed)
        print(f"vmctl: {len(failed)} of {n} VMs failed to create ({which}).", file=sys.stderr)
        raise typer.Exit(ExitStatus.ERROR)


def _read_user_data(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInput("user-data", f"cannot read {path}: {exc.strerror}") from exc


@app.command("list")
@output_options
def list_vms(
    node: NodeOpt = None,
    state: Annotated[str | None, typer.Option(help="Only VMs in this state.")] = None,
    project: Annotated[str | None, typer.Option(help="Only VMs of this project.")] = None,
    limit: Annotated[
        int | None,
        typer.Option(help=f"At most N VMs (0: all). Tables show {TABLE_LIMIT} unless told."),
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="Only VMs whose names come after NAME (the next page).")
    ] = None,
    *,
    fmt: Format,
) -> None:
    """List VMs (from PostgreSQL), by name. `-o json` streams them: any number, little memory."""
    if limit is not None and limit < 0:
        raise InvalidInput("limit", f"must be 0 or more, not {limit}")
    svc = vm_service(quiet=True)
    cap = None if limit == 0 else limit
    if fmt is Format.table and limit is None:
        cap = TABLE_LIMIT
    fetch = None if cap is None else cap + 1  # one more than shown: whether there are more
    if fmt is Format.json:
        capped = _Capped(svc.list_json(node, state, project, limit=fetch, after=after), cap)
        stream_json(capped)
        if capped.more:
            last = json.loads(capped.last)["name"]
            _say_there_are_more(svc.count_vms(node, state, project), capped.shown, last, after)
        return
    vms = svc.list_vms(node, state, project, limit=fetch, after=after)
    shown = vms if cap is None else vms[:cap]
    emit([record(vm) for vm in shown], VM_COLUMNS, fmt)
    if len(vms) > len(shown):
        _say_there_are_more(svc.count_vms(node, state, project), len(shown), shown[-1].name, after)


class _Capped:
    """The first ``cap`` elements (all of them for None); then whether more came, how many were
    given and the last one. The elements are closed when no more are wanted (a stream from
    PostgreSQL then gives its connection back)."""

    def __init__(self, elements: Iterator[str], cap: int | None) -> None:
        self.elements, self.cap = elements, cap
        self.shown, self.more, self.last = 0, False, ""

    def __iter__(self) -> Iterator[str]:
        try:
            for text in self.elements:
                if self.shown == self.cap:
                    self.more = True
                    return
                self.shown += 1
                self.last = text
                yield text
        finally:
            close = getattr(self.elements, "close", None)
            if close is not None:
                close()


def _say_there_are_more(total: int, shown: int, last: str, after: str | None) -> None:
    """The note on stderr of a list cut short: how many in all, how to see the rest."""
    vms = "VM" if shown == 1 else "VMs"
    where = f"{vms} after {after}" if after else vms
    print(
        f"vmctl: showing {shown} {where} of {total} in all (by name); --after {last} shows the "
        "next ones, --limit 0 all of them, -o json streams them.",
        file=sys.stderr,
    )


@app.command()
@output_options
def show(name: VmArg, *, fmt: Format) -> None:
    """Show one VM."""
    emit(record(vm_service(quiet=True).get(name)), SHOW_COLUMNS, fmt)


@app.command("wait")
@output_options
def wait_vm(
    name: VmArg, timeout: TimeoutOpt = 300, wait_for: WaitForOpt = None, *, fmt: Format
) -> None:
    """Wait until a VM is ready: address confirmed, SSH answers, cloud-init finished."""
    until = check_step(wait_for or "cloud-init")
    validation.seconds("timeout", timeout)
    emit(record(vm_service().wait(name, timeout, until)), SHOW_COLUMNS, fmt)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(ctx: typer.Context, name: VmArg) -> None:
    """Log into a VM (or run COMMAND there) with its host key verified: vmctl ssh NAME [COMMAND]."""
    from vmctl.core.sshcmd import ssh_argv

    login = vm_service(quiet=True).login(name)
    argv = ssh_argv(settings().ssh_key, name, login.user, login.ip, login.host_key, ctx.args)
    os.execvp(argv[0], argv)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="VMs to delete.", autocompletion=vm_names)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    lock_timeout: LockTimeoutOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Delete VMs: domain, disks, seed, snapshots, row and cache key. Keeps going past failures;
    a VM whose node does not answer stays `deleting` until it does (exit 6)."""
    from vmctl.cli.lifecycle import each

    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput("yes", "refusing to delete without --yes when not on a terminal")
        typer.confirm(f"Delete {', '.join(names)}?", abort=True, err=True)
    svc = vm_service(lock_timeout=lock_timeout)
    if queued(queue):
        from vmctl.cli.jobs import delete_queued

        each(names, "delete", delete_queued(svc), "deleted")
        return
    each(names, "delete", svc.delete, "deleted")


@app.command()
@output_options
def nodes(*, fmt: Format) -> None:
    """Capacity used and free on each node (free = capacity x overcommit - allocated)."""
    emit(vm_service(quiet=True).nodes(), NODE_COLUMNS, fmt)
