"""A throwaway Ceph cluster for the lab (Debian's ceph 16 packages, no cephadm, no systemd).

One monitor and one manager on the lab bridge address in the root namespace (the nodes reach it
through their veth), OSDs on memstore, pool `vms` of size 1, cephx on. Everything it keeps (conf,
keyrings, daemon data, logs, sockets, PID files) lives under ``CEPH_DIR``; the daemons run in the
foreground, detached, and are stopped by PID (OSDs first, then the manager, then the monitor).

Each node is a client: its private /etc/ceph (a bind mount, see nodes.BIND_MOUNTS) holds a
ceph.conf and the `client.libvirt` keyring, and its libvirtd holds a secret of usage type ceph with
that key under the fixed UUID ``SECRET_UUID``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from . import config, nodes
from .config import Node
from .procs import Daemon
from .sh import LabError, listening, log, run, wait_for

CEPH_DIR = config.LAB_DIR / "ceph"
CONF = CEPH_DIR / "ceph.conf"
ADMIN_KEYRING = CEPH_DIR / "ceph.client.admin.keyring"
LIBVIRT_KEYRING = CEPH_DIR / "ceph.client.libvirt.keyring"
CLUSTER_FILE = CEPH_DIR / "cluster.json"  # written once the bootstrap has finished
MON_ID = "a"
MGR_ID = "x"
OSD_COUNT = int(os.environ.get("VMCTL_LAB_CEPH_OSDS", "2"))
OSD_BYTES = 4 * 2**30  # memstore capacity per OSD (memory is used only as data is written)
MON_PORT_V2 = 3300
MON_PORT_V1 = 6789
POOL = "vms"
POOL_PGS = 32
CLIENT = "client.libvirt"
CLIENT_CAPS = ("mon", "profile rbd", "osd", f"profile rbd pool={POOL}")
SECRET_UUID = "3c1b9a52-6f0e-4c55-9a8e-7a6c2f1d0b11"  # the libvirt secret on every node
NODE_CEPH_DIR = "etc-ceph"  # the node's /etc/ceph, inside its directory (nodes.BIND_MOUNTS)


def mon_host() -> str:
    ip = config.bridge_address()
    return f"[v2:{ip}:{MON_PORT_V2},v1:{ip}:{MON_PORT_V1}]"


def monitor() -> str:
    """The monitor's msgr1 address (what libvirt's <host name=… port=…/> takes)."""
    return f"{config.bridge_address()}:{MON_PORT_V1}"


def metrics_address() -> str:
    """Where the manager's prometheus module serves /metrics (job `ceph`)."""
    return f"{config.bridge_address()}:{config.CEPH_METRICS_PORT}"


def metrics_options() -> dict[str, str]:
    """The prometheus module's settings (`ceph config set mgr mgr/prometheus/KEY VALUE`): the
    bridge address, the lab's port, fresh data at the lab's scrape interval."""
    return {
        "server_addr": config.bridge_address(),
        "server_port": str(config.CEPH_METRICS_PORT),
        "scrape_interval": config.SCRAPE_INTERVAL.removesuffix("s"),
    }


def render_conf(fsid: str, directory: Path, bind_ip: str) -> str:
    """The cluster's own ceph.conf: daemons, admin and libvirt clients; every path under
    ``directory``. No `keyring` under [global]: daemons find theirs in their data directory."""
    d = directory
    return f"""# vmctl lab: throwaway cluster, `lab/lab down` removes it
[global]
fsid = {fsid}
mon_host = {mon_host()}
public_addr = {bind_ip}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = {d}/run
admin_socket = {d}/run/$cluster-$name.asok
pid_file = {d}/run/$cluster-$name.pid
log_file = {d}/log/$cluster-$name.log
mon_cluster_log_file = default={d}/log/$cluster.$channel.log cluster={d}/log/$cluster.log
crash_dir = {d}/crash
mon_data = {d}/mon/$cluster-$id
mgr_data = {d}/mgr/$cluster-$id
osd_data = {d}/osd/$cluster-$id
osd_objectstore = memstore
memstore_device_bytes = {OSD_BYTES}
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 5
mgr_initial_modules = iostat prometheus
# one monitor, one machine: publish map changes and PG states sooner (faster bootstrap)
paxos_propose_interval = 0.1
mgr_tick_period = 1

[client]
# the CLI and libraries of the root namespace: no log file, no admin socket
log_file =
admin_socket =
[client.admin]
keyring = {d}/ceph.client.admin.keyring
[{CLIENT}]
keyring = {d}/ceph.client.libvirt.keyring
"""


def render_client_conf(fsid: str) -> str:
    """ceph.conf of a node: where the monitor is, cephx; the keyring sits next to it."""
    return f"""# vmctl lab: client of the lab's Ceph cluster
[global]
fsid = {fsid}
mon_host = {mon_host()}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
"""


def render_keyring(name: str, key: str) -> str:
    return f"[{name}]\n\tkey = {key}\n"


def secret_xml(secret_uuid: str = SECRET_UUID) -> str:
    return f"""<secret ephemeral='no' private='no'>
  <uuid>{secret_uuid}</uuid>
  <usage type='ceph'>
    <name>{CLIENT} secret</name>
  </usage>
</secret>
"""


def summarize(health: dict[str, object], osd_dump: dict[str, object]) -> dict[str, object]:
    """What `lab/lab status` shows, from `ceph health -f json` and `ceph osd dump -f json`."""
    pools = {str(p["pool_name"]): p for p in osd_dump.get("pools", [])}  # type: ignore[attr-defined]
    osds = osd_dump.get("osds", [])
    pool = pools.get(POOL)
    return {
        "health": health.get("status"),
        "checks": sorted(health.get("checks", {})),  # type: ignore[call-overload]
        "pool": POOL if pool else None,
        "pool_size": pool["size"] if pool else None,
        "osds": {
            "total": len(osds),  # type: ignore[arg-type]
            "up": sum(1 for o in osds if o["up"]),  # type: ignore[attr-defined]
            "in": sum(1 for o in osds if o["in"]),  # type: ignore[attr-defined]
        },
        "require_min_compat_client": osd_dump.get("require_min_compat_client"),
    }


def _daemons() -> list[Daemon]:
    """In stop order: OSDs, manager, monitor."""
    osds = [Daemon(f"osd.{i}", CEPH_DIR / "daemons") for i in range(OSD_COUNT)]
    return [*osds, Daemon(f"mgr.{MGR_ID}", CEPH_DIR / "daemons"), _mon()]


def _mon() -> Daemon:
    return Daemon(f"mon.{MON_ID}", CEPH_DIR / "daemons")


def _argv(daemon: Daemon) -> list[str]:
    kind, ident = daemon.name.split(".", 1)
    return [f"ceph-{kind}", "-f", "-c", str(CONF), "-i", ident]


def ceph(*args: str, timeout: float = 60, check: bool = True) -> str:
    argv = ["ceph", "-c", str(CONF), "--connect-timeout", "15", *args]
    return run(argv, timeout=timeout, check=check).stdout


def _cluster() -> dict[str, str] | None:
    try:
        return json.loads(CLUSTER_FILE.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def ensure(lab_nodes: list[Node]) -> None:
    """Bootstrap the cluster unless all its daemons run; then make every node a client."""
    cluster = _cluster()
    missing = [d.name for d in _daemons() if d.pid() is None]
    if cluster is not None and missing:
        # memstore keeps no data across a crash, and a restarted OSD was seen to leave PGs
        # unknown: a cluster with a daemon gone is thrown away and made again (~6 s)
        log(f"ceph: {', '.join(missing)} not running: rebuilding the throwaway cluster")
        cluster = None
    elif cluster is not None:
        try:  # every daemon runs: one `ceph status` (~0.3 s) shows the cluster is usable
            _wait_health_ok(timeout=20)
        except LabError as exc:
            log(f"ceph: {exc}: rebuilding the throwaway cluster")
            cluster = None
    if cluster is None:
        stop()
        shutil.rmtree(CEPH_DIR, ignore_errors=True)  # also a bootstrap that did not finish
        cluster = _bootstrap()
    for node in lab_nodes:
        ensure_node_client(node, cluster)


def _start(daemon: Daemon) -> None:
    def ready(_: str) -> bool:
        return (CEPH_DIR / "run" / f"ceph-{daemon.name}.asok").exists()

    daemon.start(_argv(daemon), {}, ready, timeout=60)


def _bootstrap() -> dict[str, str]:
    started = time.monotonic()
    ip = config.bridge_address()
    for port in (MON_PORT_V2, MON_PORT_V1):
        if listening(ip, port):
            raise LabError(f"port {ip}:{port} is taken by another program (not the lab's monitor)")
    fsid = str(uuid.uuid4())
    log(f"ceph: bootstrapping cluster {fsid}, monitor {mon_host()}")
    for sub in ("run", "log", "crash", "daemons", f"mon/ceph-{MON_ID}", f"mgr/ceph-{MGR_ID}"):
        (CEPH_DIR / sub).mkdir(parents=True, exist_ok=True)
    CEPH_DIR.chmod(0o700)
    CONF.write_text(render_conf(fsid, CEPH_DIR, ip))
    mon_keyring = CEPH_DIR / "mon.keyring"
    authtool = ["ceph-authtool", "--create-keyring"]
    run([*authtool, str(mon_keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])
    caps = [("mon", "allow *"), ("osd", "allow *"), ("mds", "allow *"), ("mgr", "allow *")]
    _keyring(ADMIN_KEYRING, "client.admin", caps)
    mgr_keyring = CEPH_DIR / "mgr" / f"ceph-{MGR_ID}" / "keyring"
    _keyring(mgr_keyring, f"mgr.{MGR_ID}", [("mon", "allow profile mgr"), ("osd", "allow *")])
    _keyring(LIBVIRT_KEYRING, CLIENT, [CLIENT_CAPS[:2], CLIENT_CAPS[2:]])
    for keyring in (ADMIN_KEYRING, mgr_keyring, LIBVIRT_KEYRING):
        run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(keyring)])
    monmap = CEPH_DIR / "monmap"
    run(["monmaptool", "--create", "--fsid", fsid, "--addv", MON_ID, mon_host(), str(monmap)])
    mkfs = ["ceph-mon", "-c", str(CONF), "--mkfs", "-i", MON_ID, "--monmap", str(monmap)]
    run([*mkfs, "--keyring", str(mon_keyring)])
    _start(_mon())
    ceph("osd", "set-require-min-compat-client", "mimic")
    for i in range(OSD_COUNT):
        _new_osd(i)
    # No device health metrics (memstore has no devices): else the manager creates a pool of its
    # own that takes ~5 s to peer.
    ceph("config", "set", "mgr", "mgr/devicehealth/enable_monitoring", "false", "--force")
    # The manager's prometheus module (mgr_initial_modules) on the bridge address only: set before
    # the manager first starts, or it listens on every address (its default is `::`).
    for key, value in metrics_options().items():
        ceph("config", "set", "mgr", f"mgr/prometheus/{key}", value, "--force")
    _start(Daemon(f"mgr.{MGR_ID}", CEPH_DIR / "daemons"))
    ceph("osd", "pool", "create", POOL, str(POOL_PGS), str(POOL_PGS))
    run(["rbd", "-c", str(CONF), "pool", "init", POOL], timeout=120)
    _wait_health_ok()
    key = run(["ceph-authtool", "-p", "-n", CLIENT, str(LIBVIRT_KEYRING)]).stdout.strip()
    cluster = {"fsid": fsid, "client_key": key}
    CLUSTER_FILE.write_text(json.dumps(cluster, indent=2) + "\n")
    CLUSTER_FILE.chmod(0o600)
    log(f"ceph: HEALTH_OK, pool {POOL} ready in {time.monotonic() - started:.1f} s")
    return cluster


def _keyring(path: Path, name: str, caps: list[tuple[str, str]]) -> None:
    argv = ["ceph-authtool", "--create-keyring", str(path), "--gen-key", "-n", name]
    for service, cap in caps:
        argv += ["--cap", service, cap]
    run(argv)
    path.chmod(0o600)


def _new_osd(i: int) -> None:
    osd_uuid = str(uuid.uuid4())
    key = run(["ceph-authtool", "--gen-print-key"]).stdout.strip()
    data = CEPH_DIR / "osd" / f"ceph-{i}"
    data.mkdir(parents=True, exist_ok=True)
    secrets_json = json.dumps({"cephx_secret": key})
    argv = ["ceph", "-c", str(CONF), "osd", "new", osd_uuid, str(i), "-i", "-"]
    got = run(argv, input=secrets_json).stdout.strip()
    if got != str(i):
        raise LabError(f"ceph: `osd new` gave id {got}, expected {i}")
    (data / "keyring").write_text(render_keyring(f"osd.{i}", key))
    (data / "keyring").chmod(0o600)
    run(["ceph-osd", "-c", str(CONF), "--mkfs", "-i", str(i), "--osd-uuid", osd_uuid])
    _start(Daemon(f"osd.{i}", CEPH_DIR / "daemons"))


def health() -> dict[str, object]:
    return json.loads(ceph("health", "-f", "json", timeout=30))  # type: ignore[no-any-return]


def ready(cluster_status: dict[str, object]) -> bool:
    """HEALTH_OK, every OSD up and in, every placement group active (`ceph status -f json`)."""
    health = cluster_status.get("health", {})
    pgmap = cluster_status.get("pgmap", {})
    osdmap = cluster_status.get("osdmap", {})
    states = pgmap.get("pgs_by_state", [])  # type: ignore[attr-defined]
    osds = [osdmap.get(k, 0) for k in ("num_osds", "num_up_osds", "num_in_osds")]  # type: ignore[attr-defined]
    return (
        health.get("status") == "HEALTH_OK"  # type: ignore[attr-defined]
        and osds[0] > 0
        and osds[0] == osds[1] == osds[2]
        and pgmap.get("num_pgs", 0) > 0  # type: ignore[attr-defined]
        and all(str(s["state_name"]).startswith("active") for s in states)
    )


def _wait_health_ok(timeout: float = 90) -> None:
    last: dict[str, object] = {}

    def ok() -> bool:
        nonlocal last
        last = json.loads(ceph("status", "-f", "json", timeout=30))
        return ready(last)

    try:
        wait_for("ceph HEALTH_OK, all PGs active", ok, timeout=timeout, interval=0.5)
    except LabError as exc:
        detail = {"health": last.get("health"), "pgs": last.get("pgmap", {}).get("pgs_by_state")}  # type: ignore[attr-defined]
        raise LabError(f"{exc}: {json.dumps(detail)}") from None


def _node_has_ceph_mount(node: Node) -> bool:
    pid = nodes.node_pid(node)
    try:
        mounts = Path(f"/proc/{pid}/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[1] == "/etc/ceph" for line in mounts)


def ensure_node_client(node: Node, cluster: dict[str, str]) -> None:
    """The node's /etc/ceph (conf + client.libvirt keyring) and its libvirt secret."""
    etc = node.dir / NODE_CEPH_DIR
    etc.mkdir(parents=True, exist_ok=True)
    files = {
        etc / "ceph.conf": render_client_conf(cluster["fsid"]),
        etc / f"ceph.{CLIENT}.keyring": render_keyring(CLIENT, cluster["client_key"]),
    }
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            path.chmod(0o600 if path.name.endswith(".keyring") else 0o644)
    if not _node_has_ceph_mount(node):  # a node started before the lab knew Ceph
        nodes.node_exec(node, ["mount", "--bind", str(etc), "/etc/ceph"])
    current = nodes.virsh(node, "secret-get-value", SECRET_UUID, check=False).strip()
    if current != cluster["client_key"]:
        log(f"{node.name}: libvirt secret {SECRET_UUID} ({CLIENT})")
        xml = node.dir / "ceph-secret.xml"
        xml.write_text(secret_xml())
        nodes.virsh(node, "secret-undefine", SECRET_UUID, check=False)  # a stale one, if any
        nodes.virsh(node, "secret-define", str(xml))
        keyfile = node.dir / "ceph-secret.key"
        keyfile.write_text(cluster["client_key"])
        keyfile.chmod(0o600)
        try:
            nodes.virsh(node, "secret-set-value", SECRET_UUID, "--file", str(keyfile))
        finally:
            keyfile.unlink()


def ensure_base_image(name: str, qcow2: Path) -> None:
    """The base image in the pool as IMAGE with its snapshot IMAGE@base (what RBD VMs' root disks
    are cloned from), unless it is there; written under a temporary name, snapshotted, then
    renamed, so a bootstrap that dies leaves no half image under the real name."""
    rbd = ["rbd", "-c", str(CONF)]
    snaps = run([*rbd, "snap", "ls", f"{POOL}/{name}"], check=False).stdout.split()
    if "base" in snaps:
        return
    started = time.monotonic()
    temp = f"{name}.lab-import"
    for image in (temp, name):  # leftovers of a bootstrap that died
        run([*rbd, "snap", "purge", "--no-progress", f"{POOL}/{image}"], check=False)
        run([*rbd, "rm", "--no-progress", f"{POOL}/{image}"], check=False)
    target = f"rbd:{POOL}/{temp}:conf={CONF}:id=admin"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), target], timeout=600)
    # the tag `vmctl images import` writes: the same file imported again is "already there"
    digest = hashlib.sha256()
    with qcow2.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    run([*rbd, "image-meta", "set", f"{POOL}/{temp}", "vmctl.sha256", digest.hexdigest()])
    run([*rbd, "snap", "create", f"{POOL}/{temp}@base"])
    run([*rbd, "rename", f"{POOL}/{temp}", f"{POOL}/{name}"])
    log(f"ceph: base image {POOL}/{name}@base imported in {time.monotonic() - started:.1f} s")


def stop() -> None:
    """OSDs first, then the manager, then the monitor; each by its PID."""
    for daemon in _daemons():
        daemon.stop()
    # daemons of an OSD count that changed since the bootstrap
    for pid_file in sorted((CEPH_DIR / "daemons").glob("*.pid")):
        Daemon(pid_file.stem, pid_file.parent).stop()


def status() -> dict[str, object]:
    cluster = _cluster()
    base: dict[str, object] = {
        "up": False,
        "monitor": monitor(),
        "mon_host": mon_host(),
        "conf": str(CONF),
        "admin_keyring": str(ADMIN_KEYRING),
        "client": CLIENT,
        "libvirt_secret_uuid": SECRET_UUID,
        "dir": str(CEPH_DIR),
    }
    if cluster is None:
        return base
    daemons = _daemons()
    pids = {d.name: d.pid() for d in daemons[-1:] + daemons[-2:-1] + daemons[:-2]}
    base["fsid"] = cluster["fsid"]
    base["pids"] = pids
    if None in pids.values():
        return base
    try:
        info = summarize(health(), json.loads(ceph("osd", "dump", "-f", "json", timeout=30)))
    except (LabError, ValueError) as exc:
        base["error"] = str(exc)
        return base
    base.update(info)
    base["up"] = info["health"] == "HEALTH_OK"
    return base
