"""PostgreSQL and Redis for the lab: own data directories, loopback only, non-default ports."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from pathlib import Path

from . import config
from .sh import LabError, listening, log, run, wait_for, wait_gone

PG_DIR = config.LAB_DIR / "postgres"
PG_DATA = PG_DIR / "data"
PG_SOCKET_DIR = PG_DIR / "run"
REDIS_DIR = config.LAB_DIR / "redis"


def _secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_hex(16))
        path.chmod(0o600)
    return path.read_text().strip()


def _chown(path: Path, user: str) -> None:
    run(["chown", "-R", f"{user}:{user}", str(path)])


def postgres_url() -> str:
    password = _secret(PG_DIR / "vmctl.password")
    return f"postgresql://vmctl:{password}@127.0.0.1:{config.PG_PORT}/vmctl"


def _pg(*args: str, check: bool = True) -> str:
    return run(["runuser", "-u", "postgres", "--", *args], check=check).stdout


def postgres_pid() -> int | None:
    try:
        pid = int((PG_DATA / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def ensure_postgres() -> None:
    PG_DIR.mkdir(parents=True, exist_ok=True)
    password = _secret(PG_DIR / "vmctl.password")
    if not (PG_DATA / "PG_VERSION").exists():
        log(f"postgres: initdb {PG_DATA}")
        PG_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        _chown(PG_DIR, "postgres")
        _pg(
            str(config.PG_BIN / "initdb"),
            "-D",
            str(PG_DATA),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        )
    if postgres_pid() is None:
        if listening("127.0.0.1", config.PG_PORT):
            raise LabError(
                f"port {config.PG_PORT} is taken by another program; set VMCTL_LAB_PG_PORT"
            )
        log(f"postgres: starting on 127.0.0.1:{config.PG_PORT}")
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {config.PG_PORT} "
            f"-c unix_socket_directories={PG_SOCKET_DIR} -c fsync=off"
        )
        _pg(
            str(config.PG_BIN / "pg_ctl"),
            "-D",
            str(PG_DATA),
            "-l",
            str(PG_DIR / "postgres.log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )
    psql = [
        "psql",
        "-h",
        str(PG_SOCKET_DIR),
        "-p",
        str(config.PG_PORT),
        "-U",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
    ]
    if _pg(*psql, "SELECT 1 FROM pg_roles WHERE rolname='vmctl'").strip() != "1":
        _pg(*psql, f"CREATE ROLE vmctl LOGIN PASSWORD '{password}'")
    if _pg(*psql, "SELECT 1 FROM pg_database WHERE datname='vmctl'").strip() != "1":
        _pg(*psql, "CREATE DATABASE vmctl OWNER vmctl")


def stop_postgres() -> None:
    pid = postgres_pid()
    if pid is not None:
        log(f"postgres: stopping (pid {pid})")
        os.kill(pid, signal.SIGINT)  # fast shutdown
        wait_gone([pid], timeout=30)


def redis_password() -> str:
    return _secret(REDIS_DIR / "password")


def redis_url() -> str:
    return f"redis://:{redis_password()}@127.0.0.1:{config.REDIS_PORT}/0"


def redis_pid() -> int | None:
    try:
        pid = int((REDIS_DIR / "redis.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def ensure_redis() -> None:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    password = _secret(REDIS_DIR / "password")
    conf = REDIS_DIR / "redis.conf"
    conf.write_text(
        f"""bind 127.0.0.1
port {config.REDIS_PORT}
protected-mode yes
requirepass {password}
daemonize yes
pidfile {REDIS_DIR / "redis.pid"}
logfile {REDIS_DIR / "redis.log"}
dir {REDIS_DIR}
save ""
appendonly no
"""
    )
    if redis_pid() is None:
        if listening("127.0.0.1", config.REDIS_PORT):
            raise LabError(
                f"port {config.REDIS_PORT} is taken by another program; set VMCTL_LAB_REDIS_PORT"
            )
        log(f"redis: starting on 127.0.0.1:{config.REDIS_PORT}")
        _chown(REDIS_DIR, "redis")
        run(["runuser", "-u", "redis", "--", "redis-server", str(conf)])
        wait_for("redis", lambda: listening("127.0.0.1", config.REDIS_PORT), timeout=15)


def stop_redis() -> None:
    pid = redis_pid()
    if pid is not None:
        log(f"redis: stopping (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        wait_gone([pid])


def postgres_answers() -> bool:
    out = run(["psql", postgres_url(), "-tAc", "SELECT 1"], check=False)
    return out.returncode == 0 and out.stdout.strip() == "1"


def redis_answers() -> bool:
    with socket.create_connection(("127.0.0.1", config.REDIS_PORT), timeout=2) as s:
        s.sendall(f"AUTH {_secret(REDIS_DIR / 'password')}\r\nPING\r\n".encode())
        time.sleep(0.05)
        return b"+PONG" in s.recv(100)
