"""The HTTP API on the lab, as programs use it: through HAProxy (TLS, external frontend), two
`vmctl serve` replicas, real nodes. The guest calls home through the internal frontend."""

from __future__ import annotations

import os
import re
import signal
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import leftovers, run_vmctl

pytestmark = pytest.mark.e2e

SEED_SAMPLE = {"Name": "test-1", "RAM": "1024", "CPU": "2", "Disk": "10"}
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def api(vmctl_env: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=vmctl_env["VMCTL_API_URL"],
        verify=ssl.create_default_context(cafile=vmctl_env["VMCTL_API_CA"]),
        headers={"Authorization": f"Bearer {vmctl_env['VMCTL_API_TOKEN']}"},
        timeout=120,
    ) as client:
        yield client


def _ip_events(env: dict[str, str], name: str) -> list[dict]:  # type: ignore[type-arg]
    from vmctl.adapters.store import PgStore

    with PgStore(env["VMCTL_DATABASE_URL"]) as store:
        return [e for e in store.events(name) if e["action"] == "ip"]


def test_seed_sample_to_phone_home_to_list_to_delete(
    lab: dict,
    vmctl_env: dict[str, str],
    api: httpx.Client,  # type: ignore[type-arg]
) -> None:
    """The seed's sample → 201 → the guest calls home (the watcher is stopped, so nothing else
    can tell) → the list shows it in the seed's shape → DELETE → gone everywhere."""
    from labkit import watcher

    earlier = len(_ip_events(vmctl_env, "test-1"))  # the event log keeps earlier runs'
    watcher.stop()
    try:
        created = api.post("/api/v1/vm", json=SEED_SAMPLE)
        assert created.status_code == 201, created.text
        vm = created.json()
        assert {k: vm[k] for k in ("Name", "RAM", "CPU", "Disk", "IP")} == {
            **SEED_SAMPLE,
            "IP": "unassigned",
        }
        assert CREATED_AT.match(vm["CreatedAt"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            shown = api.get("/api/v1/vm/test-1").json()
            if shown["IP"] != "unassigned":
                break
            time.sleep(1)
        else:
            raise AssertionError(f"test-1 never called home: {shown}")
        events = _ip_events(vmctl_env, "test-1")[earlier:]
        assert [e["detail"]["source"] for e in events] == ["phone-home"]
        assert shown["IP"] == events[0]["detail"]["ip"]

        listed = api.get("/api/v1/vm")
        assert listed.status_code == 200
        mine = [item for item in listed.json() if item["Name"] == "test-1"]
        assert mine == [{**SEED_SAMPLE, "IP": shown["IP"], "CreatedAt": vm["CreatedAt"]}], (
            listed.json()
        )
        assert all(
            set(item) == {"Name", "RAM", "CPU", "Disk", "IP", "CreatedAt"} for item in listed.json()
        )
    finally:
        watcher.start(_lab_settings())
        gone = api.delete("/api/v1/vm/test-1")
    assert gone.status_code in (204, 404), gone.text
    assert api.get("/api/v1/vm/test-1").status_code == 404
    assert leftovers(lab, vmctl_env, ["test-1"]) == {}


def _lab_settings() -> dict[str, str]:
    from labkit import cli

    return cli.vmctl_settings()


def test_tokens_errors_and_frontends(
    vmctl_env: dict[str, str],
    api: httpx.Client,  # type: ignore[type-arg]
) -> None:
    from labkit import api as lab_api

    url = vmctl_env["VMCTL_API_URL"]
    tls = ssl.create_default_context(cafile=vmctl_env["VMCTL_API_CA"])
    assert httpx.get(f"{url}/api/v1/vm", verify=tls).status_code == 401
    bad = httpx.get(
        f"{url}/api/v1/vm",
        verify=tls,
        headers={"Authorization": "Bearer nope"},
    )
    assert bad.status_code == 401 and bad.json()["error"]
    other = run_vmctl(vmctl_env, "token", "create", "--project", "e2e-other").stdout.strip()
    as_other = {"Authorization": f"Bearer {other}"}

    made = api.post("/api/v1/vm", json={"name": "api-err-1", "ram": "256", "cpu": "1", "disk": "1"})
    assert made.status_code == 201, made.text
    try:
        # another project's VM does not exist for this token
        assert (
            httpx.get(
                f"{url}/api/v1/vm/api-err-1",
                verify=tls,
                headers=as_other,
            ).status_code
            == 404
        )
        others = httpx.get(f"{url}/api/v1/vm", verify=tls, headers=as_other).json()
        assert "api-err-1" not in [vm["Name"] for vm in others]
        # the same validation as the CLI, as JSON naming the field
        again = api.post("/api/v1/vm", json={"Name": "api-err-1"})
        assert again.status_code == 409 and "exists already" in again.json()["error"]
        bad_ram = api.post("/api/v1/vm", json={**SEED_SAMPLE, "Name": "api-err-2", "RAM": "lots"})
        assert bad_ram.status_code == 400 and bad_ram.json()["field"] == "ram"
        no_name = api.post("/api/v1/vm", json={"RAM": "1024"})
        assert no_name.status_code == 422 and no_name.json()["field"] == "Name"
        full = api.post("/api/v1/vm", json={**SEED_SAMPLE, "Name": "api-err-3", "RAM": "65536"})
        assert full.status_code == 507 and "no node has room" in full.json()["error"]
        # the frontends: phone-home only inside, the VM API only outside
        outside = httpx.post(
            f"{url}/api/v1/phone-home/api-err-1?secret=x",
            verify=tls,
        )
        assert outside.status_code == 404
        internal = lab_api.internal_url()
        assert httpx.get(f"{internal}/api/v1/vm", headers=api.headers).status_code == 404
        wrong = httpx.post(f"{internal}/api/v1/phone-home/api-err-1?secret=wrong")
        assert wrong.status_code == 403  # also: the host is not in the VM's subnet
    finally:
        assert api.delete("/api/v1/vm/api-err-1").status_code == 204
    for name in ("api-err-2", "api-err-3"):
        assert api.get(f"/api/v1/vm/{name}").status_code == 404


def test_postgres_down_is_503_and_ready_again(api: httpx.Client) -> None:
    from labkit import services

    services.stop_postgres()
    try:
        down = api.get("/api/v1/vm")
        assert down.status_code == 503 and "PostgreSQL" in down.json()["error"]
    finally:
        services.ensure_postgres()
    deadline = time.monotonic() + 30
    while api.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert api.get("/api/v1/vm").status_code == 200


def test_a_killed_replica_fails_no_request_once_haproxy_marks_it_down(
    api: httpx.Client,
) -> None:
    from labkit import api as lab_api
    from labkit import cli

    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                status = api.get("/api/v1/vm").status_code
            except httpx.HTTPError:
                status = 0
            results.append((time.monotonic(), status))
            time.sleep(0.025)  # 4 clients: at most 160 requests/s, under the lab's rate limit

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    victim = lab_api.REPLICAS[0]
    try:
        time.sleep(2)
        pid = victim.pid()
        assert pid is not None
        ready_by = time.monotonic() + 15  # e.g. back from the PostgreSQL outage of a test before
        while lab_api.server_status("api1") != "UP":
            assert time.monotonic() < ready_by, lab_api.server_status("api1")
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        down_at = None
        deadline = time.monotonic() + 30
        while down_at is None and time.monotonic() < deadline:
            if lab_api.server_status("api1") == "DOWN":  # from HAProxy's admin socket
                down_at = time.monotonic()
            time.sleep(0.05)
        assert down_at is not None, "HAProxy never marked api1 down"
        time.sleep(5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        lab_api.start(cli.vmctl_settings())  # brings the replica back
    before = [s for at, s in results if killed_at <= at < down_at]
    after = [s for at, s in results if at >= down_at]
    assert len(after) > 20, "the stream was too thin to tell"
    failed_after = [s for s in after if s != 200]
    assert failed_after == [], f"{len(failed_after)} of {len(after)} failed after mark-down"
    failed_before = sum(s != 200 for s in before)
    print(f"\nbetween kill and mark-down: {len(before)} requests, {failed_before} failed")


def test_a_create_whose_client_goes_away_still_completes(
    lab: dict,
    vmctl_env: dict[str, str],
    api: httpx.Client,  # type: ignore[type-arg]
) -> None:
    body = {"Name": "api-gone-1", "RAM": "256", "CPU": "1", "Disk": "1"}
    with pytest.raises(httpx.TimeoutException):
        api.post("/api/v1/vm", json=body, timeout=0.3)  # a create takes seconds: gone before
    deadline = time.monotonic() + 120
    shown = api.get("/api/v1/vm/api-gone-1")
    while (shown.status_code != 200 or shown.json()["State"] != "running") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
        shown = api.get("/api/v1/vm/api-gone-1")
    try:
        assert shown.status_code == 200 and shown.json()["State"] == "running", shown.text
        assert any("api-gone-1" in d for d in _domains(lab)), "no domain on any node"
    finally:
        gone = api.delete("/api/v1/vm/api-gone-1")
    assert gone.status_code == 204, gone.text
    assert leftovers(lab, vmctl_env, ["api-gone-1"]) == {}


def _domains(lab: dict) -> list[str]:  # type: ignore[type-arg]
    import guests

    found = []
    for node in lab["nodes"]:
        hv = guests.hypervisor(node, lab)
        found += [f"{node['name']}:{d}" for d in hv.domains()]
        hv.runner.close()
    return found
