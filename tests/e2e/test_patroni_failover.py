"""PostgreSQL failover under load, on the lab's Patroni cluster (`lab/lab up --ha`).

A stream of creates (no --wait, tiny VMs, each deleted right after: one guest booting at a
time), lists and deletes runs through the CLI and through an API replica of the test's own
(`vmctl serve` on loopback), both pointed at the multi-host URL, while the Patroni primary is
killed (its Patroni and its postmaster, SIGKILL by PID: a lost machine). Patroni promotes the
replica. Then: every create that reported success had its row (its delete found it, and a VM
made just before the kill is read back from the new primary); no claim was made twice (no
create was told its own name is taken; one row per name; the node usage sums match the rows);
every command that failed said PostgreSQL was unreachable (exit 6 / HTTP 503) and left nothing
(no domain, directory, reservation, row or cache key of the test's names; reconcile clean).
The killed member is brought back (as a replica) at the end.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import LAB, REPO, eventually, leftovers, run_vmctl

pytestmark = pytest.mark.e2e

VM = ("--ram", "256", "--cpu", "1", "--disk", "1")
STREAM_AFTER_KILL_S = 35  # the stream goes on this long after the kill (promotion takes ~10-15)


@dataclass
class Outcome:
    what: str  # e.g. "cli create hat-1a2b-c3"
    at: float  # seconds since the stream began
    took: float
    ok: bool
    detail: str = ""


@dataclass
class Stream:
    prefix: str
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    names: list[str] = field(default_factory=list)  # every name the stream tried to create
    created: list[str] = field(default_factory=list)  # names whose create reported success

    def record(self, what: str, began: float, ok: bool, detail: str = "") -> bool:
        now = time.monotonic()
        self.outcomes.append(Outcome(what, began - self.started, now - began, ok, detail))
        return ok


@pytest.fixture(scope="module")
def ha_env(vmctl_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """vmctl's environment with the Patroni cluster's multi-host URL (brought up if it is not:
    additive, the rest of the lab is left as it is)."""
    subprocess.run([str(LAB), "up", "--ha"], check=True)
    out = subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    url = exported["VMCTL_HA_DATABASE_URL"].strip("'")
    # Redis database 1: the cache keys of this installation's VMs are not the lab watcher's
    # (it would see them as stale keys of VMs it does not know)
    redis_url = vmctl_env["VMCTL_REDIS_URL"].rsplit("/", 1)[0] + "/1"
    # and its own addresses (.90-.99 of each node's): the lab's installation does not know them
    inventory = exported["VMCTL_HA_INVENTORY"].strip("'")
    yield {
        **vmctl_env,
        "VMCTL_DATABASE_URL": url,
        "VMCTL_REDIS_URL": redis_url,
        "VMCTL_INVENTORY": inventory,
    }
    subprocess.run([str(LAB), "up", "--ha"], check=True)  # the killed member back, a replica


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ha_api(
    ha_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """An API replica of the test's own on the HA URL, and a client with a token of its own."""
    token = run_vmctl(ha_env, "token", "create", "--project", "hatest", "--name", "failover")
    assert token.returncode == 0, token.stderr
    port = _free_port()
    log = tmp_path_factory.mktemp("ha") / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "vmctl"), "serve", "--port", str(port)],
            env=ha_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token.stdout.strip()}"},
            timeout=120,
        ) as client:

            def ready() -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            eventually("vmctl serve on the HA URL", ready, timeout=60)
            yield client
    finally:
        server.terminate()
        server.wait(timeout=30)
        sys.stderr.write(f"serve log: {log}\n")


def _unavailable(text: str) -> bool:
    return "PostgreSQL at 127.0.0.1:" in text and "unreachable" in text


def _cli(stream: Stream, env: dict[str, str], verb: str, name: str, *args: str) -> bool:
    began = time.monotonic()
    proc = run_vmctl(env, verb, name, *args, timeout=300)
    detail = "" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()}"
    return stream.record(f"cli {verb} {name}", began, proc.returncode == 0, detail)


def _api(
    stream: Stream, api: httpx.Client, what: str, method: str, path: str, **kw: object
) -> bool:
    began = time.monotonic()
    try:
        response = api.request(method, path, **kw)  # type: ignore[arg-type]
    except httpx.TransportError as e:
        return stream.record(f"api {what}", began, False, f"transport: {e}")
    ok = response.status_code < 300
    detail = "" if ok else f"HTTP {response.status_code}: {response.text[:300]}"
    return stream.record(f"api {what}", began, ok, detail)


def _run_stream(
    stream: Stream, env: dict[str, str], api: httpx.Client, stop: threading.Event
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        name = f"{stream.prefix}-c{i}"
        stream.names.append(name)
        created = _cli(stream, env, "create", name, "--no-wait", *VM)
        _cli(stream, env, "list", "--json")
        if created:
            stream.created.append(name)
            _cli(stream, env, "delete", name, "--yes")
        name = f"{stream.prefix}-a{i}"
        stream.names.append(name)
        body = {"Name": name, "RAM": "256", "CPU": "1", "Disk": "1"}
        created = _api(stream, api, f"create {name}", "POST", "/api/v1/vm", json=body)
        _api(stream, api, "list", "GET", "/api/v1/vm")
        if created:
            stream.created.append(name)
            _api(stream, api, f"delete {name}", "DELETE", f"/api/v1/vm/{name}")


def _run_lists(
    stream: Stream, env: dict[str, str], api: httpx.Client, stop: threading.Event
) -> None:
    """Lists beside the creates and deletes (no guest): more calls in flight at the kill."""
    while not stop.is_set():
        _cli(stream, env, "list", "--json")
        _api(stream, api, "list", "GET", "/api/v1/vm")
        stop.wait(0.5)


def test_a_stream_of_creates_lists_and_deletes_rides_out_a_patroni_failover(
    lab: dict,  # type: ignore[type-arg]
    ha_env: dict[str, str],
    ha_api: httpx.Client,
) -> None:
    from labkit import ha

    from vmctl.adapters.store import PgStore

    stream = Stream(prefix=f"hat-{secrets.token_hex(2)}")
    keep = f"{stream.prefix}-keep"
    names = [keep]
    before = ha.primary()
    assert before is not None, "no Patroni primary"
    stop = threading.Event()
    workers = [
        threading.Thread(target=run, args=(stream, ha_env, ha_api, stop))
        for run in (_run_stream, _run_lists)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(10)  # the stream runs on the old primary a while
        kept = run_vmctl(ha_env, "create", keep, "--no-wait", *VM)
        assert kept.returncode == 0, kept.stderr  # committed (synchronously) on the old primary
        killed_at = time.monotonic() - stream.started
        killed = ha.kill_member(before)
        sys.stderr.write(f"killed {before.name} (pids {killed}) at {killed_at:.1f} s\n")
        after = eventually("a new primary", ha.primary, timeout=60)
        promoted_at = time.monotonic() - stream.started
        sys.stderr.write(f"{after.name} primary at {promoted_at:.1f} s\n")
        assert after != before
        with PgStore(ha_env["VMCTL_DATABASE_URL"]) as store:
            assert store.get(keep).name == keep  # the row acknowledged before the kill is there
        time.sleep(max(0.0, killed_at + STREAM_AFTER_KILL_S - (time.monotonic() - stream.started)))
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=600)
        deleted_keep = run_vmctl(ha_env, "delete", keep, "--yes")
    names += stream.names

    for o in sorted(stream.outcomes, key=lambda o: o.at):
        sys.stderr.write(
            f"{o.at:6.1f} s {o.took:5.1f} s {'ok ' if o.ok else 'ERR'} {o.what} {o.detail}\n"
        )
    assert deleted_keep.returncode == 0, deleted_keep.stderr
    failures = [o for o in stream.outcomes if not o.ok]
    # no claim made twice: a create was never told that its own name is taken
    assert not [o for o in failures if "exists already" in o.detail or "HTTP 409" in o.detail]
    # every failure is an outage, said as one: exit 6 (the CLI) or 503 (the API)
    for o in failures:
        assert _unavailable(o.detail), o
        assert o.detail.startswith(("exit 6:", "HTTP 503")), o
        assert "Traceback" not in o.detail
    # no success lost its row: each created VM's delete found it (or failed as an outage)
    for name in stream.created:
        deletes = [o for o in stream.outcomes if o.what.endswith(f"delete {name}")]
        assert deletes and (deletes[0].ok or _unavailable(deletes[0].detail)), (name, deletes)
    # the stream went on through the failover, on both sides: creates that ended after the kill
    after_kill = [o for o in stream.outcomes if o.at + o.took > killed_at]
    assert any(o.ok and o.what.startswith("cli create") for o in after_kill)
    assert any(o.ok and o.what.startswith("api create") for o in after_kill)

    # rows left: only VMs whose create succeeded and whose delete failed (an outage); a failed
    # create left none. They are deleted now; then nothing of the test's names may remain.
    undeleted = {o.what.split()[-1] for o in failures if o.what.split()[1] == "delete"}
    with PgStore(ha_env["VMCTL_DATABASE_URL"]) as store:
        rows = [vm for vm in store.list() if vm.name.startswith(stream.prefix)]
        assert len({vm.name for vm in rows}) == len(rows)
        assert {vm.name for vm in rows} <= undeleted, rows
        for vm in rows:
            again = run_vmctl(ha_env, "delete", vm.name, "--yes")
            assert again.returncode == 0, again.stderr
        everything = store.list()
        usage = {u.node: (u.cpu, u.ram_mb, u.disk_gb, u.vms) for u in store.usage()}
    summed: dict[str, tuple[int, int, int, int]] = {}
    for vm in everything:
        cpu, ram, disk, count = summed.get(vm.node, (0, 0, 0, 0))
        # a VM counts its data and root disks (schema 0008)
        summed[vm.node] = (cpu + vm.cpu, ram + vm.ram_mb, disk + vm.disk_gb + vm.root_gb, count + 1)
    assert usage == summed  # the kept sums (schema 0008) match the rows: nothing counted twice
    assert leftovers(lab, ha_env, names) == {}
    reconcile = run_vmctl(ha_env, "reconcile", "--json")
    report = json.loads(reconcile.stdout)
    ours = [d for d in report["drift"] if any(n in json.dumps(d) for n in names)]
    assert ours == [], ours


def test_with_a_window_shorter_than_the_promotion_commands_fail_cleanly(
    lab: dict,  # type: ignore[type-arg]
    ha_env: dict[str, str],
) -> None:
    """The same stream through the CLI with `VMCTL_FAILOVER_TIMEOUT=1`: the commands caught by
    the failover fail, as outages (exit 6, both hosts named), and leave nothing behind."""
    from labkit import ha

    from vmctl.adapters.store import PgStore

    env = {**ha_env, "VMCTL_FAILOVER_TIMEOUT": "1"}
    stream = Stream(prefix=f"haf-{secrets.token_hex(2)}")
    subprocess.run([str(LAB), "up", "--ha"], check=True)  # both members (the test before)
    before = eventually("a Patroni primary", ha.primary, timeout=60)
    stop = threading.Event()

    def creates_and_deletes() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            name = f"{stream.prefix}-{i}"
            stream.names.append(name)
            if _cli(stream, env, "create", name, "--no-wait", *VM):
                stream.created.append(name)
                _cli(stream, env, "delete", name, "--yes")

    worker = threading.Thread(target=creates_and_deletes)
    worker.start()
    try:
        time.sleep(5)
        killed_at = time.monotonic() - stream.started
        ha.kill_member(before)
        eventually("a new primary", ha.primary, timeout=60)
        promoted_at = time.monotonic() - stream.started
        time.sleep(8)
    finally:
        stop.set()
        worker.join(timeout=600)
    for o in sorted(stream.outcomes, key=lambda o: o.at):
        sys.stderr.write(
            f"{o.at:6.1f} s {o.took:5.1f} s {'ok ' if o.ok else 'ERR'} {o.what} {o.detail}\n"
        )
    sys.stderr.write(f"killed at {killed_at:.1f} s, promoted at {promoted_at:.1f} s\n")
    failures = [o for o in stream.outcomes if not o.ok]
    assert failures, "no command was caught by the failover"
    for o in failures:
        assert o.detail.startswith("exit 6:") and _unavailable(o.detail), o
        assert "127.0.0.1:15441,127.0.0.1:15442" in o.detail and "Traceback" not in o.detail
        assert "exists already" not in o.detail
    failed_creates = {o.what.split()[-1] for o in failures if o.what.split()[1] == "create"}
    undeleted = {o.what.split()[-1] for o in failures if o.what.split()[1] == "delete"}
    with PgStore(ha_env["VMCTL_DATABASE_URL"]) as store:
        rows = {vm.name for vm in store.list() if vm.name.startswith(stream.prefix)}
    assert rows <= undeleted, (rows, failed_creates)  # a failed create left no row
    for name in rows:
        again = run_vmctl(ha_env, "delete", name, "--yes")
        assert again.returncode == 0, again.stderr
    assert leftovers(lab, ha_env, stream.names) == {}
    report = json.loads(run_vmctl(ha_env, "reconcile", "--json").stdout)
    ours = [d for d in report["drift"] if any(n in json.dumps(d) for n in stream.names)]
    assert ours == [], ours
