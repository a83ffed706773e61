"""PostgreSQL under Patroni for the lab (`lab/lab up --ha`): one etcd and two Patroni members,
each PostgreSQL 15 on a loopback port of its own, data under /var/lib/vmctl-lab/ha/.

Additive: it starts only its own processes (recorded by PID, as the lab's other daemons) and
never touches the lab's PostgreSQL, Redis, nodes or vmctl processes. `lab/lab down` stops it
and removes its directory with the rest of the lab's.

Failover is quick on purpose: ttl 10 s, loop_wait 2 s, retry_timeout 3 s, so a replica is
promoted within ~10-15 s of its primary's loss (Patroni's defaults take ~30 s or more).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import config
from .procs import Daemon, require_vmctl, run_vmctl
from .services import _secret
from .sh import LabError, alive, listening, log, run, wait_for, wait_gone

HA_DIR = config.LAB_DIR / "ha"
SCOPE = "vmctl-lab"
ETCD_CLIENT_PORT = int(os.environ.get("VMCTL_LAB_ETCD_PORT", "12379"))
ETCD_PEER_PORT = ETCD_CLIENT_PORT + 1
_PG_BASE = int(os.environ.get("VMCTL_LAB_HA_PG_PORT_BASE", "15440"))
_REST_BASE = int(os.environ.get("VMCTL_LAB_HA_REST_PORT_BASE", "18800"))
TTL_S, LOOP_WAIT_S, RETRY_TIMEOUT_S = 10, 2, 3
ETCD = Daemon("etcd", HA_DIR / "etcd")
SETPRIV_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


@dataclass(frozen=True)
class Member:
    index: int  # from 1

    @property
    def name(self) -> str:
        return f"pg{self.index}"

    @property
    def pg_port(self) -> int:
        return _PG_BASE + self.index

    @property
    def rest_port(self) -> int:
        return _REST_BASE + self.index

    @property
    def directory(self) -> Path:
        return HA_DIR / self.name

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def daemon(self) -> Daemon:
        return Daemon("patroni", self.directory)


MEMBERS = (Member(1), Member(2))


def patroni_config(member: Member, passwords: dict[str, str]) -> dict[str, object]:
    """Patroni's configuration of ``member`` (JSON is YAML: Patroni reads it as it is)."""
    host = "127.0.0.1"
    return {
        "scope": SCOPE,
        "name": member.name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"{host}:{member.rest_port}",
            "connect_address": f"{host}:{member.rest_port}",
        },
        "etcd3": {"host": f"{host}:{ETCD_CLIENT_PORT}"},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_S,
                "loop_wait": LOOP_WAIT_S,
                "retry_timeout": RETRY_TIMEOUT_S,
                "maximum_lag_on_failover": 1048576,
                # a commit returns once the replica has it: a failover loses no acknowledged
                # commit (Patroni promotes only the synchronous standby); while one member is
                # down the other goes on alone (not strict)
                "synchronous_mode": True,
                "postgresql": {"use_pg_rewind": True, "parameters": {"wal_log_hints": "on"}},
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            "pg_hba": [
                "local all all peer",
                f"host replication replicator {host}/32 scram-sha-256",
                f"host all all {host}/32 scram-sha-256",
            ],
        },
        "postgresql": {
            "listen": f"{host}:{member.pg_port}",
            "connect_address": f"{host}:{member.pg_port}",
            "data_dir": str(member.data),
            "bin_dir": str(config.PG_BIN),
            "pgpass": str(member.directory / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": passwords["postgres"]},
                "replication": {"username": "replicator", "password": passwords["replicator"]},
                "rewind": {"username": "postgres", "password": passwords["postgres"]},
            },
            "parameters": {
                "unix_socket_directories": str(member.directory),
                "password_encryption": "scram-sha-256",
            },
        },
    }


INVENTORY = HA_DIR / "inventory.yaml"
HA_FIRST_HOST = 90  # the HA installation's addresses: .90-.99 of each node's reserved range


def inventory(text: str) -> str:
    """The lab's inventory for the HA installation: the same nodes, but only the top of each
    node's reserved addresses (.90-.99). The two installations (the lab's database and this
    one) do not know each other's reservations; the lab's takes addresses from .10 up."""
    import re

    return re.sub(
        r"addresses: \{first: (\d+\.\d+\.\d+)\.\d+,",
        lambda m: f"addresses: {{first: {m.group(1)}.{HA_FIRST_HOST},",
        text,
    )


def url() -> str:
    """vmctl's URL of the HA database: both members, the primary whichever it is."""
    password = _secret(HA_DIR / "vmctl.password")
    hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in MEMBERS)
    return f"postgresql://vmctl:{password}@{hosts}/vmctl?target_session_attrs=read-write"


def _passwords() -> dict[str, str]:
    return {who: _secret(HA_DIR / f"{who}.password") for who in ("postgres", "replicator")}


def _rest(member: Member, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{member.rest_port}{path}", timeout=2
        ) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return 0, {}


def role(member: Member) -> str | None:
    """'primary', 'replica' (streaming), or None (down, starting, or neither)."""
    if _rest(member, "/primary")[0] == 200:
        return "primary"
    if _rest(member, "/replica")[0] == 200:
        return "replica"
    return None


def postmaster_pid(member: Member) -> int | None:
    try:
        pid = int((member.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def primary() -> Member | None:
    return next((m for m in MEMBERS if role(m) == "primary"), None)


def is_up() -> bool:
    return ETCD.pid() is not None and all(m.daemon.pid() is not None for m in MEMBERS)


def ensure() -> None:
    """Start etcd and both members unless they run; the vmctl role and database on the
    primary; the schema migrated through the multi-host URL. Idempotent."""
    for binary in ("/usr/bin/etcd", "/usr/bin/patroni"):
        if not Path(binary).exists():
            raise LabError(f"{binary} is missing: run lab/setup-host.sh (patroni, etcd-server)")
    HA_DIR.mkdir(parents=True, exist_ok=True)
    _start_etcd()
    passwords = _passwords()
    for member in MEMBERS:
        _start_member(member, passwords)
    # a replica that is not yet the synchronous standby would not be promoted (synchronous
    # mode): a failover right after `up --ha` would find no new primary
    wait_for(
        "a Patroni primary and a synchronous standby",
        lambda: (
            sorted(filter(None, (role(m) for m in MEMBERS))) == ["primary", "replica"]
            and any(_rest(m, "/sync")[0] == 200 for m in MEMBERS)
        ),
        timeout=120,
    )
    _ensure_vmctl_database(passwords["postgres"])
    INVENTORY.write_text(inventory(config.INVENTORY.read_text()))
    env = {"VMCTL_DATABASE_URL": url()}
    require_vmctl()
    log("ha: " + run_vmctl(env, "db", "upgrade").stderr.strip().removeprefix("vmctl: "))
    leader = primary()
    log(f"ha: up, primary {leader.name if leader else '?'}; VMCTL_HA_DATABASE_URL in lab/lab env")


def _start_etcd() -> None:
    if ETCD.pid() is None and listening("127.0.0.1", ETCD_CLIENT_PORT):
        raise LabError(f"port {ETCD_CLIENT_PORT} is taken; set VMCTL_LAB_ETCD_PORT")
    client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    ETCD.start(
        [
            "/usr/bin/etcd",
            "--name",
            SCOPE,
            "--data-dir",
            str(ETCD.directory / "data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{SCOPE}={peer}",
        ],
        {},
        lambda logged: "ready to serve client requests" in logged,
    )


def _start_member(member: Member, passwords: dict[str, str]) -> None:
    if member.daemon.pid() is not None:
        return
    if postmaster_pid(member) is None and listening("127.0.0.1", member.pg_port):
        raise LabError(f"port {member.pg_port} is taken; set VMCTL_LAB_HA_PG_PORT_BASE")
    member.directory.mkdir(parents=True, exist_ok=True)
    conf = member.directory / "patroni.yml"
    conf.write_text(json.dumps(patroni_config(member, passwords), indent=2) + "\n")
    conf.chmod(0o600)
    run(["chown", "-R", "postgres:postgres", str(member.directory)])
    member.daemon.start(
        # setpriv execs Patroni as postgres: the recorded PID is Patroni's own
        [*SETPRIV_POSTGRES, "/usr/bin/patroni", str(conf)],
        {},
        lambda _logged: _rest(member, "/health")[0] != 0 or role(member) is not None,
        timeout=120,
    )


def _psql(member: Member, password: str, sql: str) -> str:
    dsn = f"host=127.0.0.1 port={member.pg_port} user=postgres dbname=postgres"
    env = {**os.environ, "PGPASSWORD": password}
    import subprocess

    proc = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise LabError(f"ha: psql on {member.name}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _ensure_vmctl_database(superuser_password: str) -> None:
    leader = primary()
    if leader is None:
        raise LabError("ha: no primary")
    password = _secret(HA_DIR / "vmctl.password")
    if _psql(leader, superuser_password, "SELECT 1 FROM pg_roles WHERE rolname='vmctl'") != "1":
        _psql(leader, superuser_password, f"CREATE ROLE vmctl LOGIN PASSWORD '{password}'")
    if _psql(leader, superuser_password, "SELECT 1 FROM pg_database WHERE datname='vmctl'") != "1":
        _psql(leader, superuser_password, "CREATE DATABASE vmctl OWNER vmctl")


def stop() -> None:
    """Stop both members (Patroni stops its PostgreSQL), any PostgreSQL left behind, etcd."""
    for member in MEMBERS:
        member.daemon.stop()
        pid = postmaster_pid(member)
        if pid is not None:  # its Patroni was killed: the postmaster outlived it
            log(f"ha: stopping {member.name}'s postgres (pid {pid})")
            os.kill(pid, signal.SIGINT)
            wait_gone([pid], timeout=30)
    ETCD.stop()


def remove() -> None:
    """Stop it and remove its directory (`lab/lab down --ha`): the rest of the lab stays."""
    stop()
    if HA_DIR.exists():
        shutil.rmtree(HA_DIR)
    log("ha: removed")


def kill_member(member: Member) -> list[int]:
    """A lost machine: SIGKILL the member's Patroni and its postmaster (the PIDs killed).
    Patroni cannot restart PostgreSQL there nor keep its leader key: after ttl the other member
    takes over. `ensure` brings it back (as a replica, rewound)."""
    killed = []
    for pid in (member.daemon.pid(), postmaster_pid(member)):
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    wait_gone(killed, timeout=30)
    return killed


def status() -> dict[str, object]:
    if not HA_DIR.exists():
        return {"up": False}
    return {
        "up": is_up(),
        "url": url(),
        "etcd": {"pid": ETCD.pid(), "port": ETCD_CLIENT_PORT},
        "members": [
            {
                "name": m.name,
                "port": m.pg_port,
                "rest_port": m.rest_port,
                "patroni_pid": m.daemon.pid(),
                "postgres_pid": postmaster_pid(m),
                "role": role(m),
                "log": str(m.daemon.log_file),
            }
            for m in MEMBERS
        ],
    }
