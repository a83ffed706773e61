"""The lab's monitoring: Prometheus and the exporters around vmctl (docs/lab.md, monitoring.md).

What runs where (every port overridable, see labkit.config):
- on each node, in the node's namespaces (network, mount, hostname: its libvirtd's, entered with
  `nsenter`): prometheus-node-exporter on NODE_ADDRESS:9100 and prometheus-libvirt-exporter on
  NODE_ADDRESS:9177. The libvirt exporter's `qemu:///system` is the node's own libvirtd: its
  socket is /run/libvirt/libvirt-sock on the node's /run, a tmpfs only its mount namespace sees;
- in the root namespace, on loopback: prometheus-postgres-exporter (127.0.0.1:19187, the lab's
  PostgreSQL as role vmctl), prometheus-redis-exporter (127.0.0.1:19121, the lab's Redis with its
  password) and Prometheus (127.0.0.1:19090, data in the lab directory, kept 1 day);
- the Ceph manager's prometheus module on the bridge address (10.213.0.1:19283; labkit.ceph sets
  it up when it bootstraps a cluster, `ensure` enables it on a cluster made before);
- HAProxy's monitoring frontend (labkit.api, 127.0.0.1:18404) and watch-ip's metrics
  (labkit.watcher, 127.0.0.1:18469) belong to the lab's vmctl processes.

Prometheus's configuration is `vmctl monitoring scrape-config` of the lab's inventory (its
`monitoring:` section comes from `inventory_section`); its rules are the lab's copy of
deploy/prometheus/rules/*.yml with every `for:` capped (labkit.promql.lab_rules). Every process
is a `Daemon` (PID file, log) in MONITORING_DIR; `stop` ends each by its PID.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import api, ceph, config, nodes, services, sh, watcher
from .config import Node
from .procs import Daemon, cmdline, run_vmctl
from .sh import LabError, log, run, wait_for

DIR = config.MONITORING_DIR
CONFIG_FILE = DIR / "prometheus.yml"
DATA_DIR = DIR / "prometheus-data"
RULES_DIR = DIR / "rules"
RULES_SOURCE = config.REPO / "deploy" / "prometheus" / "rules"
RULE_FOR_CAP = "5s"  # every `for:` of the lab's rules at most this: alerts fire within seconds
RETENTION = "1d"
PROMETHEUS = Daemon("prometheus", DIR)

# Which setting moves each exporter's port (named when the port is taken).
PORT_SETTINGS = {
    "node": "VMCTL_LAB_NODE_EXPORTER_PORT",
    "libvirt": "VMCTL_LAB_LIBVIRT_EXPORTER_PORT",
    "postgres": "VMCTL_LAB_POSTGRES_EXPORTER_PORT",
    "redis": "VMCTL_LAB_REDIS_EXPORTER_PORT",
    "prometheus": "VMCTL_LAB_PROMETHEUS_PORT",
}


def prometheus_address() -> str:
    return f"127.0.0.1:{config.PROMETHEUS_PORT}"


def prometheus_url() -> str:
    return f"http://{prometheus_address()}"


@dataclass(frozen=True)
class Exporter:
    """An exporter the lab starts: on a node (``node``) or on loopback."""

    job: str  # the scrape job it answers (vmctl.core.scrape)
    address: str  # HOST:PORT it listens on
    node: Node | None = None

    @property
    def name(self) -> str:
        return f"{self.job}-exporter" + (f"-{self.node.name}" if self.node else "")

    @property
    def daemon(self) -> Daemon:
        return Daemon(self.name, DIR)


def exporters(lab_nodes: list[Node]) -> list[Exporter]:
    """Every exporter process of the lab, in start order."""
    found = []
    for node in lab_nodes:
        found.append(Exporter("node", f"{node.address}:{config.NODE_EXPORTER_PORT}", node))
        found.append(Exporter("libvirt", f"{node.address}:{config.LIBVIRT_EXPORTER_PORT}", node))
    found.append(Exporter("postgres", f"127.0.0.1:{config.POSTGRES_EXPORTER_PORT}"))
    found.append(Exporter("redis", f"127.0.0.1:{config.REDIS_EXPORTER_PORT}"))
    return found


def in_node(node_pid: int) -> list[str]:
    """The prefix that runs a command in a node's namespaces: those of its libvirtd (PID)."""
    return ["nsenter", f"--target={node_pid}", "--mount", "--uts", "--net", "--"]


def exporter_argv(exporter: Exporter, node_pid: int | None = None) -> list[str]:
    """The command line of ``exporter``; a node's needs the PID of that node's libvirtd."""
    listen = f"--web.listen-address={exporter.address}"
    if exporter.job in ("node", "libvirt"):
        if node_pid is None:
            raise LabError(f"{exporter.name}: the node's libvirtd is not running")
        if exporter.job == "node":
            # no systemd here: its collector would log a failure at every scrape
            return [
                *in_node(node_pid),
                "prometheus-node-exporter",
                listen,
                "--no-collector.systemd",
            ]
        # in the node's mount namespace, qemu:///system is the node's libvirtd
        argv = ["prometheus-libvirt-exporter", listen, "--libvirt.uri=qemu:///system"]
        return [*in_node(node_pid), *argv]
    if exporter.job == "postgres":
        return ["prometheus-postgres-exporter", listen]
    if exporter.job == "redis":
        return [
            "prometheus-redis-exporter",
            f"-redis.addr=redis://127.0.0.1:{config.REDIS_PORT}",
            f"-web.listen-address={exporter.address}",
        ]
    raise LabError(f"unknown exporter {exporter.job}")


def exporter_env(exporter: Exporter) -> dict[str, str]:
    """Credentials go in the environment, never on the command line (`ps` shows that)."""
    if exporter.job == "postgres":
        return {"DATA_SOURCE_NAME": f"{services.postgres_url()}?sslmode=disable"}
    if exporter.job == "redis":
        return {"REDIS_PASSWORD": services.redis_password()}
    return {}


def prometheus_argv() -> list[str]:
    return [
        "prometheus",
        f"--config.file={CONFIG_FILE}",
        f"--storage.tsdb.path={DATA_DIR}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={prometheus_address()}",
        "--web.enable-lifecycle",  # POST /-/reload after `up` changed the config or the rules
    ]


def inventory_section() -> dict[str, object]:
    """The `monitoring:` section of the lab's inventory: where each target is."""
    return {
        "prometheus": prometheus_address(),
        "api": [api.replica_address(i) for i in range(len(config.API_REPLICA_PORTS))],
        "haproxy": api.monitoring_address(),
        "watch_ip": [watcher.metrics_address()],
        "postgres_exporter": f"127.0.0.1:{config.POSTGRES_EXPORTER_PORT}",
        "redis_exporter": f"127.0.0.1:{config.REDIS_EXPORTER_PORT}",
        "ceph": [ceph.metrics_address()],
        "node_exporter_port": config.NODE_EXPORTER_PORT,
        "libvirt_exporter_port": config.LIBVIRT_EXPORTER_PORT,
        "scrape_interval": config.SCRAPE_INTERVAL,
        "evaluation_interval": config.SCRAPE_INTERVAL,
        "rule_files": [f"{RULES_DIR}/*.yml"],
    }


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def listening(address: str) -> bool:
    return sh.listening(*_split(address))


def _get(url: str, timeout: float = 2) -> int:
    """The HTTP status of GET ``url``; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()  # all of it: an exporter logs each write to a closed connection
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _answers(url: str) -> Callable[[str], bool]:
    return lambda _logged: _get(url) == 200


def _keep(daemon: Daemon, argv: list[str]) -> bool:
    """True if ``daemon`` runs with ``argv`` (what follows nsenter's `--`: nsenter execs it);
    one that runs with another command line (the lab's code changed) is stopped."""
    pid = daemon.pid()
    if pid is None:
        return False
    if cmdline(pid) == (argv[argv.index("--") + 1 :] if "--" in argv else argv):
        return True
    log(f"{daemon.name}: its command line changed: restarting it")
    daemon.stop()
    return False


def _start_exporter(exporter: Exporter) -> None:
    daemon = exporter.daemon
    node_pid = nodes.node_pid(exporter.node) if exporter.node else None
    argv = exporter_argv(exporter, node_pid)
    if _keep(daemon, argv):
        return
    if listening(exporter.address):
        raise LabError(
            f"{exporter.address} is taken by another program; set {PORT_SETTINGS[exporter.job]}"
        )
    daemon.start(
        argv,
        exporter_env(exporter),
        _answers(f"http://{exporter.address}/metrics"),
    )


def ensure_ceph_metrics() -> None:
    """The Ceph manager's prometheus module answers on the bridge address. A cluster bootstrapped
    by this lab has it from the start; one made before gets it now (the manager restarts its
    modules, ~5 s)."""
    url = f"http://{ceph.metrics_address()}/metrics"
    if _get(url) == 200:
        return
    log(f"ceph: enabling the manager's prometheus module on {ceph.metrics_address()}")
    for key, value in ceph.metrics_options().items():
        ceph.ceph("config", "set", "mgr", f"mgr/prometheus/{key}", value, "--force")
    if "prometheus" in ceph.ceph("mgr", "module", "ls", "-f", "json"):
        ceph.ceph("mgr", "fail", ceph.MGR_ID)  # the module reads server_addr when it starts
    else:
        ceph.ceph("mgr", "module", "enable", "prometheus")
    wait_for("the Ceph manager's prometheus module", lambda: _get(url) == 200, timeout=60)


def lab_rules() -> dict[str, str]:
    """The lab's rule files (name → text): deploy/prometheus/rules/*.yml through
    labkit.promql.lab_rules."""
    from . import promql

    return {
        path.name: promql.lab_rules(path.read_text(), cap=RULE_FOR_CAP)
        for path in sorted(RULES_SOURCE.glob("*.yml"))
    }


def _write_rules() -> bool:
    """Bring RULES_DIR in line with lab_rules(); True if anything changed."""
    RULES_DIR.mkdir(parents=True, exist_ok=True)
    rules = lab_rules()
    if not rules:
        log(f"monitoring: no rules loaded: {RULES_SOURCE} has no *.yml")
    changed = False
    for stale in RULES_DIR.glob("*.yml"):
        if stale.name not in rules:
            stale.unlink()
            changed = True
    for name, text in rules.items():
        path = RULES_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed = True
    return changed


def _write_config(env: dict[str, str]) -> bool:
    """prometheus.yml from `vmctl monitoring scrape-config`; True if it changed."""
    old = CONFIG_FILE.read_text() if CONFIG_FILE.exists() else None
    run_vmctl(env, "monitoring", "scrape-config", "--output", str(CONFIG_FILE))
    return CONFIG_FILE.read_text() != old


def _check_config() -> None:
    """promtool checks the configuration and every rule file it names."""
    proc = run(["promtool", "check", "config", str(CONFIG_FILE)], check=False)
    if proc.returncode != 0:
        raise LabError(f"promtool check config {CONFIG_FILE}: {proc.stdout}{proc.stderr}".strip())


def _reload() -> None:
    request = urllib.request.Request(f"{prometheus_url()}/-/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except OSError as exc:
        raise LabError(f"prometheus: reload failed: {exc}") from exc
    log("prometheus: configuration and rules reloaded")


def ensure_prometheus(env: dict[str, str]) -> None:
    DIR.mkdir(parents=True, exist_ok=True)
    changed = _write_config(env)
    changed = _write_rules() or changed
    running = _keep(PROMETHEUS, prometheus_argv())
    if running and not changed:
        return
    _check_config()
    if running:
        _reload()
        return
    if listening(prometheus_address()):
        raise LabError(
            f"{prometheus_address()} is taken by another program; set VMCTL_LAB_PROMETHEUS_PORT"
        )
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    PROMETHEUS.start(prometheus_argv(), {}, _answers(f"{prometheus_url()}/-/ready"), timeout=60)


def ensure(lab_nodes: list[Node], env: dict[str, str]) -> None:
    """Start what is missing, all at once: the exporters, the Ceph module, Prometheus (with the
    configuration of the inventory as written now)."""
    DIR.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [pool.submit(_start_exporter, e) for e in exporters(lab_nodes)]
        jobs.append(pool.submit(ensure_ceph_metrics))
        jobs.append(pool.submit(ensure_prometheus, env))
        problems = [str(exc) for exc in (job.exception() for job in jobs) if exc is not None]
    if problems:
        raise LabError("monitoring: " + "; ".join(problems))


def stop() -> None:
    """Prometheus and every exporter (also those of nodes no longer listed), each by its PID, all
    at once: each waits until its process is reaped (~2 s here, where PID 1 reaps them).
    (`lab/lab down` then removes the lab directory: configuration, rules, data.)"""
    daemons = [Daemon(pid_file.stem, DIR) for pid_file in sorted(DIR.glob("*.pid"))]
    if not daemons:
        return
    with ThreadPoolExecutor(max_workers=len(daemons)) as pool:
        for done in [pool.submit(daemon.stop) for daemon in daemons]:
            done.result()


def status(lab_nodes: list[Node]) -> dict[str, object]:
    targets: dict[str, dict[str, object]] = {}
    for exporter in exporters(lab_nodes):
        pid = exporter.daemon.pid()
        targets[exporter.name] = {
            "job": exporter.job,
            "node": exporter.node.name if exporter.node else None,
            "address": exporter.address,
            "up": pid is not None and listening(exporter.address),
            "pid": pid,
            "log": str(exporter.daemon.log_file),
        }
    mgr = Daemon(f"mgr.{ceph.MGR_ID}", ceph.CEPH_DIR / "daemons").pid()
    targets["ceph-mgr"] = {
        "job": "ceph",
        "node": None,
        "address": ceph.metrics_address(),
        "up": mgr is not None and listening(ceph.metrics_address()),
        "pid": mgr,
        "log": None,
    }
    prometheus_pid = PROMETHEUS.pid()
    prometheus = {
        "url": prometheus_url(),
        "up": prometheus_pid is not None and _get(f"{prometheus_url()}/-/ready") == 200,
        "pid": prometheus_pid,
        "config": str(CONFIG_FILE),
        "data": str(DATA_DIR),
        "log": str(PROMETHEUS.log_file),
        "rules": sorted(p.name for p in RULES_DIR.glob("*.yml")),
    }
    return {
        "up": bool(prometheus["up"]) and all(t["up"] for t in targets.values()),
        "prometheus_url": prometheus_url(),
        "prometheus": prometheus,
        "exporters": targets,
        "haproxy": api.monitoring_address(),
        "watch_ip": watcher.metrics_address() if watcher.serves_metrics() else None,
    }
