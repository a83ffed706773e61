"""HAProxy's layer-7 retries never run a create twice (deploy/haproxy/haproxy.cfg).

A real HAProxy with the project's config and a short `timeout server`, in front of two real
`vmctl serve` replicas of this checkout (started here, on loopback, over the lab's PostgreSQL and
nodes; the lab's own HAProxy and replicas are left alone). The create is made slower than
`timeout server` in a controlled way: the test holds the new VM's operation lock for a while, so
the create waits for it, as it would behind another operation. HAProxy then gives up on the
first replica and sends the request again, to the other one, with the Idempotency-Key its
frontend set: that replica waits for the first create and answers with its result. The client
gets one 201 and one VM: never a 409 "exists already", never two VMs. One guest boots; it is
deleted at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest

from tests.conftest import LAB, REPO, eventually, leftovers

if TYPE_CHECKING:
    from vmctl.adapters.store import PgStore

pytestmark = pytest.mark.e2e

HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
MIGRATIONS = REPO / "vmctl" / "adapters" / "migrations"
SERVER_TIMEOUT_S = 8  # HAProxy's `timeout server` here: 4 tries (retries 3) cover 32 s
HOLD_S = 9  # the VM's lock is held this long: the first try surely times out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str, verify: ssl.SSLContext | bool = True) -> bool:
    try:
        return httpx.get(url, timeout=2, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Stack:
    url: str  # HAProxy's external frontend
    replicas: list[str]  # the replicas' own URLs
    verify: ssl.SSLContext
    token: str
    env: dict[str, str]
    lab: dict  # type: ignore[type-arg]
    haproxy_log: Path
    admin_sock: Path


@pytest.fixture(scope="module")
def lab_now(request: pytest.FixtureRequest) -> dict:  # type: ignore[type-arg]
    """The lab as it is (`lab/lab status --json`); brought up by the ``lab`` fixture if down."""
    proc = subprocess.run([str(LAB), "status", "--json"], capture_output=True, text=True)
    status = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
    return status if status.get("running") else request.getfixturevalue("lab")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stack(lab_now: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[type-arg]
    out = subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value.strip("'")
    vmctl = str(REPO / ".venv" / "bin" / "vmctl")
    # this checkout's schema (0010: idempotency keys) in the lab's database: additive, and only
    # when the lab's is behind (a lab shared with others is left as it is otherwise)
    if _schema_behind(env["VMCTL_DATABASE_URL"]):
        subprocess.run([vmctl, "db", "upgrade"], env=env, check=True, capture_output=True)
    procs: list[subprocess.Popen[bytes]] = []
    workdir = tmp_path_factory.mktemp("idem")  # logs, HAProxy's admin socket
    try:
        replicas = []
        for i in (1, 2):
            port = _free_port()
            log = (workdir / f"api-{i}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [vmctl, "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            replicas.append(f"http://127.0.0.1:{port}")
        for url in replicas:
            eventually(f"{url} ready", lambda u=url: _answers(f"{u}/readyz"), 60)  # type: ignore[misc]
        external = _free_port()
        hap_env = {
            **env,
            "VMCTL_EXTERNAL_BIND": f"127.0.0.1:{external}",
            "VMCTL_INTERNAL_BIND": f"127.0.0.1:{_free_port()}",
            "VMCTL_MONITORING_BIND": f"127.0.0.1:{_free_port()}",
            "VMCTL_TLS_PEM": str(Path(env["VMCTL_API_CA"]).parent / "tls.pem"),
            "VMCTL_API_1": replicas[0].removeprefix("http://"),
            "VMCTL_API_2": replicas[1].removeprefix("http://"),
            "VMCTL_RATE_LIMIT": "3000",
            "VMCTL_HAPROXY_RUN": str(workdir),
            "VMCTL_SERVER_TIMEOUT": f"{SERVER_TIMEOUT_S}s",
        }
        subprocess.run(["haproxy", "-c", "-q", "-f", str(HAPROXY_CFG)], env=hap_env, check=True)
        haproxy_log = workdir / "haproxy.log"
        procs.append(
            subprocess.Popen(
                ["haproxy", "-db", "-f", str(HAPROXY_CFG)],
                env=hap_env,
                stdout=haproxy_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        verify = ssl.create_default_context(cafile=env["VMCTL_API_CA"])
        url = f"https://127.0.0.1:{external}"
        eventually("HAProxy ready", lambda: _answers(f"{url}/healthz", verify), 30)
        eventually("both replicas UP in HAProxy", lambda: _up(workdir / "admin.sock") == 2, 30)
        yield Stack(
            url, replicas, verify, env["VMCTL_API_TOKEN"], env, lab_now, haproxy_log,
            workdir / "admin.sock",
        )  # fmt: skip
    finally:
        for proc in reversed(procs):  # HAProxy first, then the replicas: only what we started
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _schema_behind(url: str) -> bool:
    """Whether a migration of this checkout is not applied to the database at ``url``."""
    ours = {p.stem for p in MIGRATIONS.iterdir() if re.match(r"\d{4}_\w+\.(sql|py)$", p.name)}
    with psycopg.connect(url) as conn:
        applied = {row[0] for row in conn.execute("SELECT migration_id FROM _yoyo_migration")}
    return bool(ours - applied)


def _stat(sock_path: Path) -> list[dict[str, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]


def _up(sock_path: Path) -> int:
    try:
        rows = _stat(sock_path)
    except OSError:
        return 0
    return sum(
        1
        for r in rows
        if r["pxname"] == "api" and r["svname"].startswith("api") and r["status"] == "UP"
    )


def _answered(replica: str, method: str = "POST", route: str = "/api/v1/vm") -> dict[str, float]:
    """Requests of ``method`` to ``route`` answered by the replica, by status (its own
    metrics)."""
    text = httpx.get(f"{replica}/metrics", timeout=5).text
    labels = rf'method="{method}",route="{re.escape(route)}",status="(\d+)"'
    pattern = rf"vmctl_api_requests_total\{{{labels}\}} (\S+)"
    return {status: float(count) for status, count in re.findall(pattern, text)}


def _retried(stack: Stack, request: str) -> int:
    """How many times HAProxy sent ``request`` (its log's "METHOD PATH") again, each time to
    another replica (asserted)."""
    line = next(line for line in stack.haproxy_log.read_text().splitlines() if request in line)
    # the connection counters after the termination state: act/fe/be/srv/retries ("+":
    # redispatched to another server)
    counters = re.search(r" [-\w]{4} \d+/\d+/\d+/\d+/(\+?)(\d+) ", line)
    assert counters and counters.group(1) == "+" and int(counters.group(2)) >= 1, line
    return int(counters.group(2))


def _client(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url,
        verify=stack.verify,
        headers={"Authorization": f"Bearer {stack.token}"},  # no Idempotency-Key: HAProxy's
        timeout=120,
    )


def _slowly(
    store: PgStore, name: str, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, float]:
    """``send()``'s answer, and how long it took, sent while this test holds VM ``name``'s
    operation lock for HOLD_S: the request waits for it, longer than `timeout server`."""
    answers: list[httpx.Response] = []
    with store.vm_lock(name, "a test's slow request", 5):
        sender = threading.Thread(target=lambda: answers.append(send()))
        started = time.monotonic()
        sender.start()
        time.sleep(HOLD_S)
    sender.join(4 * SERVER_TIMEOUT_S + 10)
    assert answers, "no answer"
    return answers[0], time.monotonic() - started


def test_a_create_slower_than_timeout_server_is_retried_and_makes_one_vm(stack: Stack) -> None:
    from vmctl.adapters.store import PgStore

    name = f"idem-{secrets.token_hex(3)}"
    client = _client(stack)
    try:
        with PgStore(stack.env["VMCTL_DATABASE_URL"], actor="idem-e2e@test") as store:
            body = {"Name": name, "RAM": "384", "CPU": "1"}
            created, took = _slowly(store, name, lambda: client.post("/api/v1/vm", json=body))
            assert created.status_code == 201, created.text
            assert created.json()["Name"] == name
            # the answer came from a retry, which waited for the first create: replayed
            assert created.headers["Idempotent-Replayed"] == "true"
            assert took > SERVER_TIMEOUT_S
            assert [vm.name for vm in store.list() if vm.name == name] == [name]
        # HAProxy retried on the other replica
        retries = _retried(stack, "POST /api/v1/vm ")
        backend = next(
            r for r in _stat(stack.admin_sock) if r["pxname"] == "api" and r["svname"] == "BACKEND"
        )
        assert int(backend["wretr"]) >= 1 and int(backend["wredis"]) >= 1, backend
        # every try was answered 201 (the first create, the others its answer), on both replicas
        answered = [_answered(r) for r in stack.replicas]
        assert all(set(a) == {"201"} for a in answered), answered
        assert sum(a["201"] for a in answered) == retries + 1, answered
        # one key, kept once, with this VM's answer
        with psycopg.connect(stack.env["VMCTL_DATABASE_URL"]) as conn:
            kept = conn.execute(
                "SELECT key, status FROM idempotency_keys WHERE body->>'Name' = %s", (name,)
            ).fetchall()
        assert len(kept) == 1 and kept[0][1] == 201
        assert re.fullmatch(r"[0-9a-f-]{36}", kept[0][0])  # HAProxy's uuid()
    finally:
        deleted = client.delete(f"/api/v1/vm/{name}")
        client.close()
        assert deleted.status_code in (204, 404), deleted.text
        assert leftovers(stack.lab, stack.env, [name]) == {}


def test_a_delete_slower_than_timeout_server_is_retried_and_answers_204(stack: Stack) -> None:
    """A DELETE without a key gets HAProxy's; the first try waits for the VM's lock (held here
    past `timeout server`) and deletes it, the retry on the other replica waits for the first
    and answers its 204: never a 404. The VM is a row on node1 with nothing on the node (a
    delete of a VM that is not there is success for delete-vm.sh): no guest boots."""
    from vmctl.adapters.store import PgStore
    from vmctl.core.idempotency import fingerprint

    name = f"api2-idem-del-{secrets.token_hex(3)}"
    mac = "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))
    with psycopg.connect(stack.env["VMCTL_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac,
                                project)
               VALUES (%s, 'node1', 'stopped', 256, 1, 1, 4, 'debian-12', %s, 'demo')""",
            (name, mac),
        )
    client = _client(stack)
    before = [_answered(r, "DELETE", "/api/v1/vm/{name}") for r in stack.replicas]
    try:
        with PgStore(stack.env["VMCTL_DATABASE_URL"], actor="idem-e2e@test") as store:
            deleted, took = _slowly(store, name, lambda: client.delete(f"/api/v1/vm/{name}"))
            assert deleted.status_code == 204, deleted.text
            # the answer came from a retry, which waited for the first delete: replayed
            assert deleted.headers["Idempotent-Replayed"] == "true"
            assert took > SERVER_TIMEOUT_S
            assert [vm.name for vm in store.list() if vm.name == name] == []
        retries = _retried(stack, f"DELETE /api/v1/vm/{name} ")
        # every try was answered 204 (the first delete, the others its answer), none 404
        after = [_answered(r, "DELETE", "/api/v1/vm/{name}") for r in stack.replicas]
        new = [
            {s: n - b.get(s, 0) for s, n in a.items() if n != b.get(s, 0)}
            for a, b in zip(after, before, strict=True)
        ]
        assert all(set(d) <= {"204"} for d in new), new
        assert sum(d.get("204", 0) for d in new) == retries + 1, new
        # HAProxy's key, kept once with the 204
        digest = fingerprint("DELETE", f"/api/v1/vm/{name}", None)
        with psycopg.connect(stack.env["VMCTL_DATABASE_URL"]) as conn:
            kept = conn.execute(
                "SELECT key, status FROM idempotency_keys WHERE fingerprint = %s", (digest,)
            ).fetchall()
        assert len(kept) == 1 and kept[0][1] == 204, kept
        assert re.fullmatch(r"[0-9a-f-]{36}", kept[0][0])  # HAProxy's uuid()
    finally:
        with psycopg.connect(stack.env["VMCTL_DATABASE_URL"], autocommit=True) as conn:
            conn.execute("DELETE FROM vms WHERE name = %s", (name,))
            digest = fingerprint("DELETE", f"/api/v1/vm/{name}", None)
            conn.execute("DELETE FROM idempotency_keys WHERE fingerprint = %s", (digest,))
        client.close()
        assert leftovers(stack.lab, stack.env, [name]) == {}
