"""lab/lab up [--ha] | down | status [--json] | env"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from . import (
    api,
    bare,
    ceph,
    config,
    ha,
    inventory,
    monitoring,
    net,
    nodes,
    procs,
    services,
    snapshot,
    watcher,
    workers,
)
from .sh import LabError, log, run, write_atomically


def _load_state() -> dict[str, object] | None:
    try:
        return json.loads(config.STATE_FILE.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _build_image() -> Path:
    """The cached guest image directory (built on first use; VMCTL_LAB_IMAGE_DIR overrides)."""
    if os.environ.get("VMCTL_LAB_IMAGE_DIR"):
        return Path(os.environ["VMCTL_LAB_IMAGE_DIR"])
    script = config.REPO / "lab" / "image" / "build.sh"
    proc = run([str(script)], timeout=1800)
    return Path(proc.stdout.strip().splitlines()[-1])


def _ensure_ssh_key() -> Path:
    config.SSH_DIR.mkdir(parents=True, exist_ok=True)
    config.SSH_DIR.chmod(0o700)
    if not config.SSH_KEY.exists():
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "vmctl-lab",
                "-f",
                str(config.SSH_KEY),
            ]
        )
    authorized = config.SSH_DIR / "authorized_keys"
    authorized.write_text(config.SSH_KEY.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    return authorized


def up(count: int, bare_count: int = 0) -> None:
    started = time.monotonic()
    state = _load_state()
    # bare hosts are only ever added by `up` (`down` removes them): a lab up with two keeps them
    bare_count = max(bare_count, _bare_count(state))
    if state and state.get("node_count") != count:
        raise LabError(
            f"the lab is up with {state['node_count']} nodes; "
            "run `lab/lab down` before changing --nodes"
        )
    if state is None:
        net.check_no_collision()
        config.LAB_DIR.mkdir(parents=True, exist_ok=True)
        config.BEFORE_FILE.write_text(json.dumps(snapshot.machine_state()))
    background = ThreadPoolExecutor(max_workers=2)
    try:
        _up(count, bare_count, state, background)
    finally:
        background.shutdown(wait=True)
    elapsed = time.monotonic() - started
    extra = f", {bare_count} bare hosts" if bare_count else ""
    log(
        f"up: {count} nodes{extra}, PostgreSQL, Redis, Ceph and monitoring ready in {elapsed:.1f} s"
    )


def _bare_count(state: dict[str, object] | None) -> int:
    return int((state or {}).get("bare_count", 0))  # type: ignore[call-overload]


def _up(
    count: int,
    bare_count: int,
    state: dict[str, object] | None,
    background: ThreadPoolExecutor,
) -> None:
    image_dir = _build_image()
    authorized = _ensure_ssh_key()
    lab_nodes = config.nodes(count)
    net.ensure_bridge()
    host_keys = []
    for node in lab_nodes:
        net.ensure_node_network(node)
        host_keys.append(nodes.prepare(node, image_dir, authorized))
        nodes.start(node)
        nodes.ensure_guest_network(node)
    nspawn_run_existed = (state or {}).get("nspawn_run_existed", bare.NSPAWN_RUN.exists())
    if bare_count:
        host_keys += bare.ensure(bare_count, authorized)
    write_atomically(config.KNOWN_HOSTS, "\n".join(host_keys) + "\n")
    services.ensure_postgres()
    services.ensure_redis()
    ceph.ensure(lab_nodes)
    ceph.ensure_base_image(config.IMAGE_NAME, nodes.base_image_path(lab_nodes[0]))
    write_atomically(config.INVENTORY, inventory.render(lab_nodes))
    # Prometheus and the exporters start while the schema is upgraded and the vmctl processes
    # start (a scrape that comes before them fails; the next one works)
    started_monitoring: Future[None] = background.submit(
        monitoring.ensure, lab_nodes, vmctl_settings()
    )
    _migrate()
    _start_vmctl()
    started_monitoring.result()
    new_state = {
        "node_count": count,
        "prefix": config.PREFIX,
        "image_dir": str(image_dir),
        "bare_count": bare_count,
        "nspawn_run_existed": nspawn_run_existed,
    }
    if new_state != state:
        write_atomically(config.STATE_FILE, json.dumps(new_state, indent=2) + "\n")


def _migrate() -> None:
    """Bring the vmctl schema up to date, when vmctl is installed (`make` installs it first)."""
    if procs.VMCTL.exists():
        env = {"VMCTL_DATABASE_URL": services.postgres_url()}
        log(procs.run_vmctl(env, "db", "upgrade").stderr.strip().removeprefix("vmctl: "))


def _start_vmctl() -> None:
    """The lab's own vmctl processes: the watcher, the API replicas and HAProxy, the workers."""
    watcher.start(vmctl_settings())
    api.start(vmctl_settings())
    workers.start(vmctl_settings())


def _stop_vmctl() -> None:
    workers.stop()
    api.stop()
    watcher.stop()


def down() -> None:
    ha.stop()
    monitoring.stop()
    _stop_vmctl()
    ceph.stop()
    state = _load_state() or {}
    bare_count = max([_bare_count(state), *(h.index for h in bare.found_hosts())])
    bare.stop_all(bare_count, bool(state.get("nspawn_run_existed", True)))
    count = int(state.get("node_count", 0))  # type: ignore[call-overload]
    known = {n.netns: n for n in config.nodes(count)}
    for netns in sorted(set(net.lab_netns()) | set(known)):
        log(f"down: stopping {netns}")
        nodes.stop(netns)
        node = known.get(netns)
        net.remove_node_network(netns, node.guest_subnet if node else None)
    net.remove_bridge()
    try:
        before = json.loads(config.BEFORE_FILE.read_text())
        net.release_netns_mount(before["mounts"])
    except (OSError, ValueError, KeyError):
        pass
    services.stop_postgres()
    services.stop_redis()
    if config.LAB_DIR.exists():
        shutil.rmtree(config.LAB_DIR)
    log("down: the lab is gone")


def status() -> dict[str, object]:
    state = _load_state()
    if state is None:
        return {
            "running": False,
            "nodes": [],
            "postgres": {"up": False},
            "redis": {"up": False},
            "ceph": {"up": False},
            "monitoring": {"up": False, "prometheus_url": monitoring.prometheus_url()},
            "bare": {"proxy": {"up": False, "url": bare.proxy_url()}, "hosts": []},
            "ha": {"up": False},
        }
    lab_nodes = config.nodes(int(state["node_count"]))  # type: ignore[call-overload]
    node_info = []
    for node in lab_nodes:
        info = node.describe()
        info["up"] = nodes.is_running(node)
        info["domains"] = nodes.virsh(node, "list", "--all", "--name").split() if info["up"] else []
        node_info.append(info)
    pg_up = services.postgres_pid() is not None and services.postgres_answers()
    redis_up = services.redis_pid() is not None and services.redis_answers()
    ceph_info = ceph.status()
    bare_info = bare.status(_bare_count(state))
    bare_up = all(h["up"] for h in bare_info["hosts"])  # type: ignore[attr-defined]
    return {
        "running": all(n["up"] for n in node_info)
        and pg_up
        and redis_up
        and ceph_info["up"]
        and bare_up,
        "prefix": config.PREFIX,
        "bridge": {"name": config.BRIDGE, "address": config.bridge_address()},
        "nodes": node_info,
        "postgres": {"up": pg_up, "url": services.postgres_url(), "port": config.PG_PORT},
        "redis": {"up": redis_up, "url": services.redis_url(), "port": config.REDIS_PORT},
        "ceph": ceph_info,
        "image": {
            "name": config.IMAGE_NAME,
            "dir": state["image_dir"],
            "default_user": config.GUEST_USER,
        },
        "ssh": {"key": str(config.SSH_KEY), "known_hosts": str(config.KNOWN_HOSTS)},
        "watcher": {
            "up": watcher.pid() is not None,
            "pid": watcher.pid(),
            "log": str(watcher.LOG_FILE),
        },
        "inventory": str(config.INVENTORY),
        "api": api.status(),
        "workers": workers.status(),
        "monitoring": monitoring.status(lab_nodes),
        "bare": bare_info,
        "ha": ha.status(),
    }


def warm_bare(name: str | None) -> None:
    count = _bare_count(_load_state())
    known = {h.name: h for h in bare.hosts(count)}
    if not known:
        raise LabError("the lab has no bare hosts: run `lab/lab up --bare`")
    if name is not None and name not in known:
        raise LabError(f"no bare host {name} (the lab has {', '.join(known)})")
    bare.warm(known[name] if name else next(iter(known.values())))


def reset_bare(names: list[str]) -> None:
    """Bare hosts made fresh again (every one when ``names`` is empty)."""
    state = _load_state()
    count = _bare_count(state)
    if not count:
        raise LabError("the lab has no bare hosts: run `lab/lab up --bare`")
    known = {h.name: h for h in bare.hosts(count)}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise LabError(f"no bare host {', '.join(unknown)} (the lab has {', '.join(known)})")
    chosen = [known[n] for n in names] if names else list(known.values())
    authorized = _ensure_ssh_key()
    lines = bare.reset(chosen, count, authorized)
    addresses = {h.address for h in chosen}
    kept = [
        line
        for line in config.KNOWN_HOSTS.read_text().splitlines()
        if line.split(" ", 1)[0] not in addresses
    ]
    write_atomically(config.KNOWN_HOSTS, "\n".join(kept + lines) + "\n")


def vmctl_settings() -> dict[str, str]:
    """The VMCTL_* variables that point vmctl at the lab."""
    return {
        "VMCTL_INVENTORY": str(config.INVENTORY),
        "VMCTL_DATABASE_URL": services.postgres_url(),
        "VMCTL_REDIS_URL": services.redis_url(),
        "VMCTL_SSH_KEY": str(config.SSH_KEY),
        "VMCTL_KNOWN_HOSTS": str(config.KNOWN_HOSTS),
        "VMCTL_API_INTERNAL_URL": api.internal_url(),
    }


def env_lines() -> list[str]:
    if _load_state() is None:
        raise LabError("the lab is not up: run `lab/lab up`")
    values = {
        **vmctl_settings(),
        "VMCTL_API_URL": api.external_url(),
        "VMCTL_API_TOKEN": api.token(),
        "VMCTL_API_CA": str(api.CA_PEM),
        "LAB_SSH_KEY": str(config.SSH_KEY),
        "LAB_KNOWN_HOSTS": str(config.KNOWN_HOSTS),
        "LAB_GUEST_USER": config.GUEST_USER,
        "CEPH_CONF": str(ceph.CONF),  # `ceph health` as client.admin
        "VMCTL_LAB_PROMETHEUS_URL": monitoring.prometheus_url(),
    }
    if ha.is_up():  # `lab/lab up --ha`: PostgreSQL under Patroni, by its multi-host URL
        values["VMCTL_HA_DATABASE_URL"] = ha.url()
        values["VMCTL_HA_INVENTORY"] = str(ha.INVENTORY)  # its own addresses (.90-.99)
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lab/lab", description="The vmctl lab.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="create or complete the lab (idempotent)")
    p_up.add_argument("--nodes", type=int, default=3, help="number of virtualization nodes (1-9)")
    p_up.add_argument(
        "--bare",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="N",
        help="also N bare hosts (fresh Debian, systemd as PID 1) for deploy/ansible (default 3)",
    )
    p_up.add_argument(
        "--ha",
        action="store_true",
        help="also PostgreSQL under Patroni (etcd, two members); on a lab that is up, only adds it",
    )
    p_down = sub.add_parser("down", help="remove everything the lab made (safe to run twice)")
    p_down.add_argument(
        "--ha", action="store_true", help="remove only what `up --ha` added (etcd, Patroni)"
    )
    p_status = sub.add_parser("status", help="what runs, where")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("env", help="print export lines for vmctl and the tests")
    sub.add_parser(
        "start-workers",
        help="start the lab's two `vmctl worker`s if they do not run (touches nothing else)",
    )
    sub.add_parser(
        "restart-vmctl",
        help="restart the lab's vmctl processes: watch-ip, API (after code changes)",
    )
    p_reset = sub.add_parser("reset-bare", help="make bare hosts fresh Debian hosts again")
    p_reset.add_argument("names", nargs="*", help="bare host names (default: all)")
    p_warm = sub.add_parser(
        "warm-bare",
        help="fetch the packages deploy/ansible's roles install into the bare hosts' proxy",
    )
    p_warm.add_argument("name", nargs="?", help="the bare host to fetch from (default: the first)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: must run as root (namespaces, bridges, daemons)", file=sys.stderr)
        return 1
    try:
        with _lab_lock(args.command):
            return _dispatch(args)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _lab_lock(command: str) -> Iterator[None]:
    """One command that changes the lab at a time (two test runs side by side, a reset of bare
    hosts during another run's `up`): they wait for each other. Reading commands do not."""
    if command in ("status", "env", "warm-bare"):  # (warm-bare changes only a proxy's cache)
        yield
        return
    config.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(config.CACHE_DIR / "lab.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        if not 1 <= args.nodes <= 9:
            raise LabError(f"--nodes must be between 1 and 9, not {args.nodes}")
        if not 0 <= args.bare <= 9:
            raise LabError(f"--bare must be between 0 and 9, not {args.bare}")
        if args.ha and _load_state() is not None:
            ha.ensure()  # additive: the rest of the lab runs and is left as it is
        else:
            up(args.nodes, args.bare)
            if args.ha:
                ha.ensure()
    elif args.command == "down":
        if args.ha:
            ha.remove()
        else:
            down()
    elif args.command == "status":
        info = status()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_status(info)
        return 0 if info["running"] else 3
    elif args.command == "env":
        print("\n".join(env_lines()))
    elif args.command == "reset-bare":
        reset_bare(args.names)
    elif args.command == "warm-bare":
        warm_bare(args.name)
    elif args.command == "start-workers":
        if _load_state() is None:
            raise LabError("the lab is not up: run `lab/lab up`")
        workers.start(vmctl_settings())
    elif args.command == "restart-vmctl":
        if _load_state() is None:
            raise LabError("the lab is not up: run `lab/lab up`")
        _stop_vmctl()
        _start_vmctl()
    return 0


def _print_status(info: dict[str, object]) -> None:
    if not info["running"] and not info["nodes"]:
        print("lab: down")
        return
    for n in info["nodes"]:  # type: ignore[attr-defined]
        state = "up" if n["up"] else "DOWN"
        print(
            f"{n['name']:8} {n['address']:14} {state:5} guests {n['guest_subnet']:16} "
            f"domains: {', '.join(n['domains']) or '-'}"
        )
    for svc in ("postgres", "redis"):
        s = info[svc]
        print(f"{svc:8} 127.0.0.1:{s['port']:<6} {'up' if s['up'] else 'DOWN'}")  # type: ignore[index]
    c = info["ceph"]
    print(
        f"ceph     {c['monitor']:15} {'up' if c['up'] else 'DOWN':5} "  # type: ignore[index]
        f"{c.get('health') or '-'}, pool {c.get('pool') or '-'}, conf {c['conf']}"  # type: ignore[attr-defined,index]
    )
    a = info["api"]
    replicas = " ".join(
        f"{r['url']}({'up' if r['up'] else 'DOWN'})"
        for r in a["replicas"]  # type: ignore[index]
    )
    print(f"api      {a['external']} (external), {a['internal']} (internal); {replicas}")  # type: ignore[index]
    w = info["watcher"]
    print(f"watch-ip pid {w['pid'] or '-':<15} {'up' if w['up'] else 'DOWN'}  log {w['log']}")  # type: ignore[index]
    for k in info.get("workers", []):  # type: ignore[attr-defined]
        print(f"worker   pid {k['pid'] or '-':<15} {'up' if k['up'] else 'DOWN'}  log {k['log']}")
    b = info["bare"]
    for h in b["hosts"]:  # type: ignore[index]
        print(f"{h['name']:8} {h['address']:14} {'up' if h['up'] else 'DOWN':5} bare host")
    h = info.get("ha") or {}
    if h.get("up") or h.get("members"):  # type: ignore[attr-defined]
        roles = " ".join(
            f"{x['name']}:{x['port']}({x['role'] or 'DOWN'})"
            for x in h["members"]  # type: ignore[index]
        )
        etcd = "up" if h["etcd"]["pid"] else "DOWN"  # type: ignore[index]
        print(f"ha       etcd 127.0.0.1:{h['etcd']['port']} {etcd}; {roles}")  # type: ignore[index]
    m = info["monitoring"]
    p = m["prometheus"]  # type: ignore[index]
    down = [name for name, e in m["exporters"].items() if not e["up"]]  # type: ignore[index]
    print(
        f"prometheus {p['url']} {'up' if p['up'] else 'DOWN'}, "
        f"{len(m['exporters'])} exporters" + (f" (DOWN: {', '.join(down)})" if down else " up")  # type: ignore[index]
    )
