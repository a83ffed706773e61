"""The lab's HTTP API: two `vmctl serve` replicas on loopback behind HAProxy, which uses the
project's own deploy/haproxy/haproxy.cfg (external TLS frontend on loopback, internal frontend on
the lab bridge where guests reach it), a TLS certificate the lab makes, and an API token of the
project `demo` for scripts (`lab/lab env` exports VMCTL_API_URL and VMCTL_API_TOKEN)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import urllib.request

from . import config
from .procs import Daemon, require_vmctl, run_vmctl
from .sh import LabError, listening, run, wait_for

API_DIR = config.LAB_DIR / "api"
CA_PEM = API_DIR / "ca.pem"  # the certificate clients trust (self-signed)
TLS_PEM = API_DIR / "tls.pem"  # certificate + key, for HAProxy
TOKEN_FILE = API_DIR / "token"
HAPROXY_CFG = config.REPO / "deploy" / "haproxy" / "haproxy.cfg"
REPLICAS = [Daemon(f"api-{i}", API_DIR) for i in (1, 2)]
HAPROXY = Daemon("haproxy", API_DIR)
PROJECT = "demo"


def server_status(server: str, backend: str = "api") -> str:
    """What HAProxy thinks of one backend server now (UP, DOWN, "UP 1/2", MAINT...), from its admin
    socket's `show stat`; "" when HAProxy does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(API_DIR / "admin.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    header = lines[0].lstrip("# ").split(",") if lines else []
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") == server:
            return row.get("status", "")
    return ""


def external_url() -> str:
    return f"https://127.0.0.1:{config.API_EXTERNAL_PORT}"


def internal_url() -> str:
    return f"http://{config.bridge_address()}:{config.API_INTERNAL_PORT}"


def monitoring_address() -> str:
    """HAProxy's monitoring frontend: its own /metrics, /metrics/cloud from one replica."""
    return f"127.0.0.1:{config.HAPROXY_MONITORING_PORT}"


def replica_address(index: int) -> str:
    return f"127.0.0.1:{config.API_REPLICA_PORTS[index]}"


def haproxy_env() -> dict[str, str]:
    return {
        "VMCTL_EXTERNAL_BIND": f"127.0.0.1:{config.API_EXTERNAL_PORT}",
        "VMCTL_INTERNAL_BIND": f"{config.bridge_address()}:{config.API_INTERNAL_PORT}",
        "VMCTL_MONITORING_BIND": monitoring_address(),
        "VMCTL_TLS_PEM": str(TLS_PEM),
        "VMCTL_API_1": replica_address(0),
        "VMCTL_API_2": replica_address(1),
        "VMCTL_RATE_LIMIT": os.environ.get("VMCTL_LAB_RATE_LIMIT", "3000"),
        "VMCTL_HAPROXY_RUN": str(API_DIR),
    }


def _make_certificate() -> None:
    if TLS_PEM.exists():
        return
    API_DIR.mkdir(parents=True, exist_ok=True)
    key, crt = API_DIR / "tls.key", API_DIR / "tls.crt"
    run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "30", "-subj", "/CN=vmctl-lab-api",
            "-addext", f"subjectAltName=IP:127.0.0.1,IP:{config.bridge_address()},DNS:localhost",
            "-keyout", str(key), "-out", str(crt),
        ]
    )  # fmt: skip
    TLS_PEM.write_text(crt.read_text() + key.read_text())
    TLS_PEM.chmod(0o600)
    CA_PEM.write_text(crt.read_text())
    key.unlink()
    crt.unlink()


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _freed(host: str, port: int, within: float = 10) -> bool:
    """Nothing listens at host:port, or stops listening within ``within`` s: a replica just
    killed lets its port go only once its last thread has exited, a moment after its main
    thread is a zombie (which `pid()` no longer counts)."""
    try:
        wait_for(f"{host}:{port} to be let go", lambda: not listening(host, port), within)
    except LabError:
        return False
    return True


def start(env: dict[str, str]) -> None:
    """Replicas, certificate, HAProxy and the demo token (each only if missing)."""
    vmctl = require_vmctl()
    _make_certificate()
    for i, replica in enumerate(REPLICAS):
        port = config.API_REPLICA_PORTS[i]
        if replica.pid() is None and not _freed("127.0.0.1", port):
            raise LabError(f"port {port} is taken by another program; set VMCTL_LAB_API_PORT_BASE")
        replica.start(
            [vmctl, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env,
            lambda _logged, p=port: _answers(f"http://127.0.0.1:{p}/readyz"),  # type: ignore[misc]
        )
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(HAPROXY_CFG)],
        env={**os.environ, **haproxy_env()},
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise LabError(f"haproxy -c: {check.stdout}{check.stderr}")
    context = ssl.create_default_context(cafile=str(CA_PEM))
    HAPROXY.start(
        ["haproxy", "-db", "-f", str(HAPROXY_CFG)],
        haproxy_env(),
        lambda _logged: _answers(f"{external_url()}/healthz", context),
    )
    if not TOKEN_FILE.exists():
        made = run_vmctl(env, "token", "create", "--project", PROJECT, "--name", "lab")
        token = made.stdout.strip()
        TOKEN_FILE.write_text(token + "\n")
        TOKEN_FILE.chmod(0o600)


def token() -> str:
    try:
        return TOKEN_FILE.read_text().strip()
    except OSError:
        return ""


def stop() -> None:
    HAPROXY.stop()
    for replica in REPLICAS:
        replica.stop()


def status() -> dict[str, object]:
    return {
        "external": external_url(),
        "internal": internal_url(),
        "ca": str(CA_PEM),
        "haproxy": {"up": HAPROXY.pid() is not None, "pid": HAPROXY.pid()},
        "replicas": [
            {"url": f"http://{replica_address(i)}", "up": r.pid() is not None, "pid": r.pid()}
            for i, r in enumerate(REPLICAS)
        ],
    }
