"""The vmctl command line: a thin layer over the library core.

Each command parses, calls the service, and hands records to `output.emit`. Library errors become
a message on stderr and an exit code (`errors.ExitStatus`) in `main`, and only there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from vmctl import __version__, db, logs, readiness, settings, validation, wiring
from vmctl.addressing import SOURCES, parse_sources
from vmctl.errors import ExitStatus, InvalidInput, VmctlError
from vmctl.output import Format, emit
from vmctl.service import CreateRequest, VmService
from vmctl.store import VmRecord

app = typer.Typer(
    name="vmctl",
    help="Run a small private cloud of KVM hosts over SSH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The PostgreSQL schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
token_app = typer.Typer(
    help="Bearer tokens of the HTTP API (one project each).", no_args_is_help=True
)
app.add_typer(token_app, name="token")

_state: dict[str, Any] = {"debug": False, "flags": {}}

VM_COLUMNS = [
    ("name", "NAME"),
    ("node", "NODE"),
    ("state", "STATE"),
    ("ram_mb", "RAM(MiB)"),
    ("cpu", "CPU"),
    ("disk_gb", "DISK(GiB)"),
    ("ip", "IP"),
    ("image", "IMAGE"),
    ("created_at", "CREATED (UTC)"),
]
SHOW_COLUMNS = [
    *VM_COLUMNS,
    ("root_gb", "ROOT(GiB)"),
    ("mac", "MAC"),
    ("ip_state", "IP STATE"),
    ("group", "GROUP"),
    ("updated_at", "UPDATED (UTC)"),
]
NODE_COLUMNS = [
    ("name", "NODE"),
    ("vms", "VMS"),
    ("cpu_used", "CPU USED"),
    ("cpu_free", "CPU FREE"),
    ("ram_mb_used", "RAM USED"),
    ("ram_mb_free", "RAM FREE"),
    ("disk_gb_used", "DISK USED"),
    ("disk_gb_free", "DISK FREE"),
]

WATCH_COLUMNS = [
    ("name", "NAME"),
    ("node", "NODE"),
    ("ip", "IP"),
    ("previous", "PREVIOUS"),
    ("source", "SOURCE"),
    ("changed", "CHANGED"),
]

WaitForOpt = Annotated[
    str | None,
    typer.Option(
        "--wait-for",
        help="ip, ssh or cloud-init (the default): how ready --wait waits for. Implies --wait.",
    ),
]
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table, json or yaml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as -o json.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    inventory: Annotated[Path | None, typer.Option(help="inventory.yaml [VMCTL_INVENTORY]")] = None,
    database_url: Annotated[str | None, typer.Option(help="[VMCTL_DATABASE_URL]")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[VMCTL_REDIS_URL]")] = None,
) -> None:
    """vmctl: create, list, show and delete VMs on KVM nodes."""
    _state["debug"] = debug
    _state["flags"] = {"inventory": inventory, "database_url": database_url, "redis_url": redis_url}


def _settings() -> settings.Settings:
    return settings.load(_state["flags"])


def _service(quiet: bool = False) -> VmService:
    return wiring.service(_settings(), quiet=quiet)


def _fmt(output: Format, json_flag: bool) -> Format:
    return Format.json if json_flag else output


def record(vm: VmRecord) -> dict[str, Any]:
    """A VM as scripts see it: stable keys, ISO-8601 UTC times."""
    return {
        "name": vm.name,
        "node": vm.node,
        "state": vm.state,
        "ram_mb": vm.ram_mb,
        "cpu": vm.cpu,
        "disk_gb": vm.disk_gb,
        "root_gb": vm.root_gb,
        "image": vm.image,
        "mac": vm.mac,
        "ip": vm.ip,
        "ip_state": vm.ip_state,
        "group": vm.group_name,
        "project": vm.project,
        "created_at": vm.created_at,
        "updated_at": vm.updated_at,
    }


@app.command()
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
    node: Annotated[str | None, typer.Option(help="Put it on this node.")] = None,
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
    timeout: Annotated[float, typer.Option(help="Seconds --wait may take.")] = 300,
    output: OutputOpt = Format.table,
    json_flag: JsonOpt = False,
) -> None:
    """Create VMs: place, make disks and seed, boot; record in PostgreSQL."""
    svc = _service()
    defaults = svc.inventory.defaults
    extra = None
    if user_data is not None:
        try:
            extra = user_data.read_text()
        except OSError as exc:
            raise InvalidInput("user-data", f"cannot read {user_data}: {exc.strerror}") from exc
    n = _count(count)
    until = readiness.check_step(wait_for or "cloud-init")
    names = [name] if n == 1 else [f"{name}-{i}" for i in range(1, n + 1)]
    keys = wiring.authorized_keys(_settings(), ssh_key)
    requests = [
        CreateRequest(
            name=vm_name,
            ram_mb=ram if ram is not None else defaults.ram_mb,
            cpu=cpu if cpu is not None else defaults.cpu,
            disk_gb=disk if disk is not None else defaults.disk_gb,
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
    for req in requests:  # refuse bad input for all of them before making any
        svc.check(req)
    made = [svc.create(req) for req in requests]
    if wait or wait_for is not None:
        made = [svc.wait(vm.name, timeout, until) for vm in made]
    rows = [record(vm) for vm in made]
    emit(
        rows[0] if n == 1 else rows, SHOW_COLUMNS if n == 1 else VM_COLUMNS, _fmt(output, json_flag)
    )


def _count(text: str) -> int:
    return validation.integer("count", text)


@app.command("list")
def list_vms(
    node: Annotated[str | None, typer.Option(help="Only VMs on this node.")] = None,
    state: Annotated[str | None, typer.Option(help="Only VMs in this state.")] = None,
    project: Annotated[str | None, typer.Option(help="Only VMs of this project.")] = None,
    output: OutputOpt = Format.table,
    json_flag: JsonOpt = False,
) -> None:
    """List VMs (from PostgreSQL)."""
    vms = _service(quiet=True).list_vms(node=node, state=state, project=project)
    emit([record(vm) for vm in vms], VM_COLUMNS, _fmt(output, json_flag))


@app.command()
def show(name: str, output: OutputOpt = Format.table, json_flag: JsonOpt = False) -> None:
    """Show one VM."""
    emit(record(_service(quiet=True).get(name)), SHOW_COLUMNS, _fmt(output, json_flag))


@app.command("wait")
def wait_vm(
    name: str,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 300,
    wait_for: WaitForOpt = None,
    output: OutputOpt = Format.table,
    json_flag: JsonOpt = False,
) -> None:
    """Wait until a VM is ready: address confirmed, SSH answers, cloud-init finished."""
    until = readiness.check_step(wait_for or "cloud-init")
    emit(record(_service().wait(name, timeout, until)), SHOW_COLUMNS, _fmt(output, json_flag))


@app.command("watch-ip")
def watch_ip(
    names: Annotated[
        list[str] | None, typer.Argument(help="With --once: only these VMs (asked at once).")
    ] = None,
    once: Annotated[bool, typer.Option(help="One pass over every node, then exit.")] = False,
    sources: Annotated[
        str, typer.Option(help="Where to look, in order: lease, arp, agent.")
    ] = ",".join(SOURCES),
    follow: Annotated[
        bool,
        typer.Option(
            help="Follow each node's DHCP lease file (leases the moment they are written); "
            "--no-follow only looks at the nodes, every 0.5 s while a VM waits."
        ),
    ] = True,
    log_format: Annotated[
        str, typer.Option(help="Log lines on stderr: logfmt or json.")
    ] = "logfmt",
    output: OutputOpt = Format.table,
    json_flag: JsonOpt = False,
) -> None:
    """Learn new VMs' addresses from their nodes; record them in PostgreSQL, announce on Redis.

    Runs until stopped (SIGTERM, Ctrl-C) unless --once: then prints what it updated."""
    try:
        order = parse_sources(sources)
    except ValueError as exc:
        raise InvalidInput("sources", str(exc)) from exc
    if names and not once:
        raise InvalidInput("names", "VM names are only taken with --once")
    log = logs.setup("vmctl.watch-ip", log_format)
    ip_watcher = wiring.watcher(_settings(), log, order, follow=follow)
    if once:
        rows, problems = ip_watcher.once(names or [])
        emit(rows, WATCH_COLUMNS, _fmt(output, json_flag))
        for problem in problems:
            print(f"vmctl: error: {problem}", file=sys.stderr)
        if problems:
            raise typer.Exit(ExitStatus.UNAVAILABLE)
        return
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ip_watcher.run(stop)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The VM.")],
) -> None:
    """Log into a VM (or run COMMAND there) with its host key verified: vmctl ssh NAME [COMMAND]."""
    svc = _service(quiet=True)
    argv = wiring.ssh_argv(_settings(), svc, name, list(ctx.args))
    os.execvp(argv[0], argv)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="VMs to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete VMs: domain, disks, seed, row and cache key. Keeps going past failures."""
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput("yes", "refusing to delete without --yes when not on a terminal")
        typer.confirm(f"Delete {', '.join(names)}?", abort=True, err=True)
    svc = _service()
    failed = 0
    for vm_name in names:
        try:
            svc.delete(vm_name)
            wiring.progress(f"{vm_name}: deleted")
        except VmctlError as exc:
            failed += 1
            print(f"vmctl: error: {exc}", file=sys.stderr)
    if failed:
        noun = "VM" if len(names) == 1 else "VMs"
        print(f"vmctl: {failed} of {len(names)} {noun} failed to delete.", file=sys.stderr)
        raise typer.Exit(ExitStatus.ERROR)


@app.command()
def nodes(output: OutputOpt = Format.table, json_flag: JsonOpt = False) -> None:
    """Capacity used and free on each node (free = capacity x overcommit - allocated)."""
    emit(_service(quiet=True).nodes(), NODE_COLUMNS, _fmt(output, json_flag))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    trusted_proxies: Annotated[
        str, typer.Option(help="Addresses whose X-Forwarded-For is believed (HAProxy).")
    ] = "127.0.0.1",
    log_format: Annotated[str, typer.Option(help="logfmt or json.")] = "logfmt",
) -> None:
    """Serve the HTTP API (one replica; run several behind HAProxy). OpenAPI at /openapi.json."""
    import uvicorn

    log = logs.setup("vmctl.serve", log_format)
    application = wiring.api_app(_settings(), log)
    log.info("serving", extra=logs.fields(host=host, port=port, pid=os.getpid()))
    uvicorn.run(
        application,
        host=host,
        port=port,
        proxy_headers=True,
        forwarded_allow_ips=trusted_proxies,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


TOKEN_COLUMNS = [
    ("id", "ID"),
    ("project", "PROJECT"),
    ("name", "NAME"),
    ("created_at", "CREATED (UTC)"),
    ("revoked_at", "REVOKED (UTC)"),
]


@token_app.command("create")
def token_create(
    project: Annotated[str, typer.Option(help="The project whose VMs the token sees.")],
    name: Annotated[str, typer.Option(help="What the token is for (a note).")] = "",
) -> None:
    """Make a token; prints it once on stdout (only its SHA-256 is kept)."""
    from vmctl import tokens

    validation.name(project, "project")
    token, digest = tokens.new_secret(tokens.TOKEN_PREFIX)
    token_id = _service(quiet=True).store.create_token(project, digest, name)
    wiring.progress(f"token {token_id} for project {project}; it is not shown again")
    typer.echo(token)


@token_app.command("list")
def token_list(output: OutputOpt = Format.table, json_flag: JsonOpt = False) -> None:
    """The tokens (never their secrets)."""
    emit(_service(quiet=True).store.tokens(), TOKEN_COLUMNS, _fmt(output, json_flag))


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(help="The token's ID.")]) -> None:
    """Revoke a token: it stops working at once."""
    _service(quiet=True).store.revoke_token(token_id)
    wiring.progress(f"token {token_id} revoked")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    applied = db.upgrade(_settings().require_database())
    wiring.progress(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


def main() -> None:
    """Entry point: run the app, turning vmctl errors into a message and an exit code.

    Usage errors are reported by typer itself (exit 2); everything else ends here.
    """
    try:
        app()
    except VmctlError as exc:
        if _state["debug"]:
            raise
        print(f"vmctl: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except Exception as exc:
        if _state["debug"]:
            raise
        print(
            f"vmctl: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        sys.exit(ExitStatus.ERROR)


if __name__ == "__main__":
    main()
