"""Day-2 commands: start, stop, reboot, resize, console, events. Each calls the VM service; the
batch verbs keep going past a failed VM and say how many failed (exit 1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from vmctl.cli.complete import vm_names
from vmctl.cli.options import (
    Format,
    LockTimeoutOpt,
    QueueOpt,
    output_options,
    progress,
    queued,
    settings,
    vm_service,
)
from vmctl.cli.output import EVENT_COLUMNS, SHOW_COLUMNS, emit, event_row, record
from vmctl.core import validation
from vmctl.core.errors import ExitStatus, InvalidInput, VmctlError

if TYPE_CHECKING:
    from vmctl.services.vms import VmService

app = typer.Typer()

NamesArg = Annotated[list[str], typer.Argument(help="The VMs.", autocompletion=vm_names)]
VmArg = Annotated[str, typer.Argument(help="The VM.", autocompletion=vm_names)]


def each(names: list[str], verb: str, act: Callable[[str], object], done: str) -> None:
    """``act`` on every VM in turn; a failure is reported and the rest still run. Exit 1 (with
    "N of M VMs failed to VERB") when any failed, else 0. A busy VM, a timeout or a bad name
    in a batch of one keeps its own exit code."""
    failed: list[VmctlError] = []
    for name in names:
        try:
            act(name)
            progress(f"{name}: {done}")
        except VmctlError as exc:
            failed.append(exc)
            print(f"vmctl: error: {exc}", file=sys.stderr)
    if not failed:
        return
    if len(names) == 1:
        raise typer.Exit(failed[0].exit_status)
    print(f"vmctl: {len(failed)} of {len(names)} VMs failed to {verb}.", file=sys.stderr)
    raise typer.Exit(ExitStatus.ERROR)


@app.command()
def start(names: NamesArg, lock_timeout: LockTimeoutOpt = None, queue: QueueOpt = None) -> None:
    """Start stopped VMs."""
    svc = vm_service(lock_timeout=lock_timeout)
    each(names, "start", _queued_or(svc, queue, "start") or svc.start, "started")


@app.command()
def stop(
    names: NamesArg,
    timeout: Annotated[
        float, typer.Option(help="Seconds the guest gets to shut down (ACPI, then its agent).")
    ] = 60,
    force: Annotated[
        bool, typer.Option("--force", help="Power off the ones still running after --timeout.")
    ] = False,
    lock_timeout: LockTimeoutOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Shut VMs down gracefully; with --force, power off what does not stop in time."""
    validation.seconds("timeout", timeout)
    svc = vm_service(lock_timeout=lock_timeout)
    act = _queued_or(svc, queue, "stop", timeout, force)
    each(names, "stop", act or (lambda name: svc.stop(name, timeout, force)), "stopped")


@app.command()
def reboot(
    names: NamesArg,
    force: Annotated[bool, typer.Option("--force", help="Reset at once (no ACPI).")] = False,
    lock_timeout: LockTimeoutOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Reboot running VMs (ACPI, else the guest agent; --force resets them)."""
    svc = vm_service(lock_timeout=lock_timeout)
    act = _queued_or(svc, queue, "reboot", force=force)
    each(names, "reboot", act or (lambda name: svc.reboot(name, force)), "rebooting")


def _queued_or(
    svc: VmService, queue: bool | None, kind: str, timeout: float = 60.0, force: bool = False
) -> Callable[[str], object] | None:
    """With --queue (or the setting): the verb as a job for `vmctl worker`; else None."""
    if not queued(queue):
        return None
    from vmctl.cli.jobs import lifecycle_queued

    return lifecycle_queued(svc, kind, timeout, force)


@app.command()
@output_options
def resize(
    name: VmArg,
    ram: Annotated[str | None, typer.Option("--ram", help="RAM in MiB.")] = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="vCPUs.")] = None,
    disk: Annotated[
        str | None, typer.Option("--disk", help="Data disk in GiB (it only grows).")
    ] = None,
    lock_timeout: LockTimeoutOpt = None,
    *,
    fmt: Format,
) -> None:
    """Change a stopped VM's vCPUs and RAM, or grow its data disk (the guest grows /dataxfs
    at its next boot)."""
    vm = vm_service(lock_timeout=lock_timeout).resize(name, ram=ram, cpu=cpu, disk=disk)
    emit(record(vm), SHOW_COLUMNS, fmt)


@app.command()
def console(
    name: VmArg,
    log: Annotated[
        bool, typer.Option("--log", help="Print what the console has written so far, and exit.")
    ] = False,
) -> None:
    """The VM's serial console (Ctrl+] leaves it); --log prints its boot log for scripts."""
    svc = vm_service(quiet=True)
    if log:
        sys.stdout.write(svc.console_log(name))
        return
    if not sys.stdin.isatty():
        raise InvalidInput("console", "not a terminal: use `vmctl console --log` in scripts")
    from vmctl.core.sshcmd import console_argv

    node, domain = svc.console_target(name)
    config = settings()
    argv = console_argv(
        config.ssh_key, config.known_hosts, node.ssh.user, node.ssh.host, node.ssh.port, domain
    )
    os.execvp(argv[0], argv)


@app.command()
@output_options
def events(
    name: Annotated[str | None, typer.Argument(help="Only this VM's (also once deleted).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only since then: an age (15m, 2h, 7d) or an ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most the newest N.")] = 100,
    *,
    fmt: Format,
) -> None:
    """The audit log: who did what to which VM, when, how it went and why it failed."""
    if limit < 1:
        raise InvalidInput("limit", f"must be 1 or more, not {limit}")
    rows = vm_service(quiet=True).events(name, since=since, limit=limit)
    emit([event_row(e) for e in rows], EVENT_COLUMNS, fmt)
