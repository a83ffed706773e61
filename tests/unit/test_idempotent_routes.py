"""Idempotency-Key on DELETE /api/v1/vm/{name} and the POSTs under it (start, stop, reboot,
resize, snapshots), and the async form (Prefer: respond-async) and the queue setting of the
delete and of start, stop and reboot: the app over fakes (vmctl.api.idempotent,
vmctl.api.routes.jobs)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from tests.unit.fakes import World, world
from tests.unit.test_jobs import FakeQueue
from tests.unit.test_snapshots import SnapHypervisor, SnapStore
from vmctl.core.requests import CreateRequest
from vmctl.services.jobs import JobService

pytestmark = pytest.mark.unit

ASYNC = {"Prefer": "respond-async"}


@dataclass
class App:
    client: TestClient
    made: World
    queue: FakeQueue
    other: dict[str, str]  # the headers of a token of project "other"
    hv: SnapHypervisor  # kvm1, where the VMs are

    def key(self, key: str, **more: str) -> dict[str, str]:
        return {"Idempotency-Key": key, **more}


def _app(with_queue: bool = True, use_queue: bool = False) -> Iterator[App]:
    from vmctl.api.app import create_app
    from vmctl.services import Services
    from vmctl.services.tokens import TokenService

    made = world()
    store, hv = SnapStore(), SnapHypervisor("kvm1")
    made.svc.store = made.store = store
    made.nodes["kvm1"] = hv
    for name in ("web-1", "web-2"):
        made.svc.create(CreateRequest(name, node="kvm1", project="demo"))
    made.svc.create(CreateRequest("theirs-1", node="kvm1", project="other"))
    queue = FakeQueue()
    jobs = JobService(queue=queue, vms=made.svc, poll=0.01) if with_queue else None
    tokens = TokenService(store)
    _, token = tokens.create("demo")
    _, other = tokens.create("other")
    app = create_app(
        lambda: Services(vms=made.svc, tokens=tokens, jobs=jobs, use_queue=use_queue),
        logging.getLogger("test"),
    )
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app, headers=headers, raise_server_exceptions=False) as client:
        yield App(client, made, queue, {"Authorization": f"Bearer {other}"}, hv)


@pytest.fixture
def api() -> Iterator[App]:
    yield from _app()


# -- Idempotency-Key ------------------------------------------------------------------------------


def test_a_delete_replayed_with_its_key_is_204_and_deletes_once(api: App) -> None:
    first = api.client.delete("/api/v1/vm/web-1", headers=api.key("del-1"))
    again = api.client.delete("/api/v1/vm/web-1", headers=api.key("del-1"))
    assert first.status_code == again.status_code == 204, (first.text, again.text)
    assert first.content == again.content == b""
    assert "idempotent-replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.hv.calls.count("delete") == 1
    assert "web-1" not in api.made.store.vms
    # without the key it is a new request: the VM is gone
    assert api.client.delete("/api/v1/vm/web-1").status_code == 404


def test_a_key_used_on_another_route_or_vm_is_422_and_does_nothing(api: App) -> None:
    assert api.client.post("/api/v1/vm/web-1/stop", headers=api.key("k1")).status_code == 200
    for method, path in [
        ("DELETE", "/api/v1/vm/web-1"),  # another method and path
        ("POST", "/api/v1/vm/web-1/start"),  # another path, the same (empty) body
        ("POST", "/api/v1/vm/web-2/stop"),  # the same route, another VM
    ]:
        reused = api.client.request(method, path, headers=api.key("k1"))
        assert reused.status_code == 422, (method, path, reused.text)
        assert reused.json()["field"] == "Idempotency-Key"
        assert "was used with another request (method, path or body)" in reused.json()["error"]
    assert sorted(api.made.store.vms) == ["theirs-1", "web-1", "web-2"]
    assert api.hv.states == {"web-1": "shut off"}  # web-2 still runs; web-1 not started
    assert api.hv.calls.count("start") == 0


def test_a_reboot_replayed_reboots_once(api: App) -> None:
    first = api.client.post("/api/v1/vm/web-1/reboot", headers=api.key("rb-1"))
    again = api.client.post("/api/v1/vm/web-1/reboot", json={}, headers=api.key("rb-1"))
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json() and first.json()["Name"] == "web-1"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.hv.calls.count("reboot") == 1
    # a forced reboot is another body: the key is refused
    forced = api.client.post(
        "/api/v1/vm/web-1/reboot", json={"force": True}, headers=api.key("rb-1")
    )
    assert forced.status_code == 422
    assert api.hv.calls.count("reset") == 0


def test_a_snapshot_taken_again_with_its_key_is_the_first_201_not_a_409(api: App) -> None:
    body = {"name": "before", "quiesce": False}
    first = api.client.post("/api/v1/vm/web-1/snapshots", json=body, headers=api.key("sn-1"))
    again = api.client.post("/api/v1/vm/web-1/snapshots", json=body, headers=api.key("sn-1"))
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert len([c for c in api.hv.calls if c.startswith("snapshot_create")]) == 1
    # without a key a second one is refused: the name is taken
    assert api.client.post("/api/v1/vm/web-1/snapshots", json=body).status_code == 409
    gone = [api.client.delete("/api/v1/vm/web-1/snapshots/before", headers=api.key("sn-2"))]
    gone.append(api.client.delete("/api/v1/vm/web-1/snapshots/before", headers=api.key("sn-2")))
    assert [g.status_code for g in gone] == [204, 204]
    assert gone[1].headers["Idempotent-Replayed"] == "true"
    assert api.hv.calls.count("snapshot_delete") == 1


def test_a_refusal_is_kept_for_the_key_bad_input_is_not(api: App) -> None:
    # a resize of a running VM: 409, kept; the key's retry gets it even after the VM stopped
    busy = api.client.post("/api/v1/vm/web-1/resize", json={"RAM": "768"}, headers=api.key("rs"))
    assert busy.status_code == 409, busy.text
    api.client.post("/api/v1/vm/web-1/stop")
    again = api.client.post("/api/v1/vm/web-1/resize", json={"RAM": "768"}, headers=api.key("rs"))
    assert again.status_code == 409 and again.headers["Idempotent-Replayed"] == "true"
    # 400 (a disk that would shrink) keeps nothing: the corrected body may use the key
    bad = api.client.post("/api/v1/vm/web-1/resize", json={"Disk": "1"}, headers=api.key("rs2"))
    assert bad.status_code == 400 and bad.json()["field"] == "disk"
    good = api.client.post("/api/v1/vm/web-1/resize", json={"CPU": "2"}, headers=api.key("rs2"))
    assert good.status_code == 200 and good.json()["CPU"] == "2"


def test_a_malformed_key_is_400_and_nothing_is_done(api: App) -> None:
    refused = api.client.delete("/api/v1/vm/web-1", headers=api.key("two words"))
    assert refused.status_code == 400 and refused.json()["field"] == "Idempotency-Key"
    assert "web-1" in api.made.store.vms and "delete" not in api.hv.calls


def test_a_retry_waits_for_the_first_delete_and_gets_its_204(
    api: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first delete is slow on its node; a retry with its key comes meanwhile, as HAProxy's
    does after `timeout server`: it waits for the first, one delete, both 204."""
    entered, release = threading.Event(), threading.Event()
    real = api.hv.delete

    def slow(name: str, *args: object, **kwargs: object) -> None:
        entered.set()
        assert release.wait(5)
        real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(api.hv, "delete", slow)
    answers: dict[str, int] = {}

    def send(who: str) -> threading.Thread:
        def run() -> None:
            answers[who] = api.client.delete(
                "/api/v1/vm/web-1", headers=api.key("slow")
            ).status_code

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    first = send("first")
    assert entered.wait(5)
    retry = send("retry")
    retry.join(0.3)
    assert answers == {}  # the retry waits for the first
    release.set()
    first.join(5)
    retry.join(5)
    assert answers == {"first": 204, "retry": 204}
    assert api.hv.calls.count("delete") == 1 and "web-1" not in api.made.store.vms


# -- the async form and the queue -----------------------------------------------------------------


def test_an_async_delete_is_202_with_its_job_and_deletes_nothing_yet(api: App) -> None:
    queued = api.client.delete("/api/v1/vm/web-1", headers=api.key("ad-1", **ASYNC))
    assert queued.status_code == 202, queued.text
    job = queued.json()
    assert (job["kind"], job["vm"], job["state"]) == ("delete", "web-1", "queued")
    assert queued.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert queued.headers["Preference-Applied"] == "respond-async"
    assert api.queue.queued == [(job["id"], "delete", {"name": "web-1"})]
    assert api.queue.jobs[job["id"]].project == "demo"
    assert "web-1" in api.made.store.vms and "delete" not in api.hv.calls
    # its key's retry gets the same job, queued once
    again = api.client.delete("/api/v1/vm/web-1", headers=api.key("ad-1", **ASYNC))
    assert again.status_code == 202 and again.json() == job
    assert again.headers["Location"] == queued.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(api.queue.queued) == 1
    # the job is the project's to look at
    assert api.client.get(queued.headers["Location"]).json()["kind"] == "delete"
    assert api.client.get(queued.headers["Location"], headers=api.other).status_code == 404
    # the same key waiting for the delete is another request
    assert api.client.delete("/api/v1/vm/web-1", headers=api.key("ad-1")).status_code == 422


@pytest.mark.parametrize("verb", ["start", "stop", "reboot"])
def test_an_async_lifecycle_verb_is_202_with_its_job(api: App, verb: str) -> None:
    body = {"timeout": 5, "force": True} if verb == "stop" else None
    queued = api.client.post(f"/api/v1/vm/web-1/{verb}", json=body, headers=ASYNC)
    assert queued.status_code == 202, queued.text
    assert (queued.json()["kind"], queued.json()["vm"]) == (verb, "web-1")
    assert queued.headers["Location"] == f"/api/v1/jobs/{queued.json()['id']}"
    want = {"name": "web-1", "timeout": 5.0 if verb == "stop" else 60.0, "force": verb == "stop"}
    assert api.queue.queued == [(queued.json()["id"], verb, want)]
    assert not {"start", "shutdown", "destroy", "reboot"} & set(api.hv.calls)


def test_another_projects_vm_is_404_and_nothing_is_queued(api: App) -> None:
    for method, path in [
        ("DELETE", "/api/v1/vm/web-1"),
        ("POST", "/api/v1/vm/web-1/start"),
        ("POST", "/api/v1/vm/web-1/stop"),
        ("POST", "/api/v1/vm/web-1/reboot"),
    ]:
        for headers in ({**api.other, **ASYNC}, api.other):
            refused = api.client.request(method, path, headers=headers)
            assert refused.status_code == 404, (method, path, headers, refused.text)
            assert refused.json() == {"error": "no VM named web-1"}
    assert api.queue.queued == []
    assert "web-1" in api.made.store.vms
    assert not {"delete", "start", "shutdown", "reboot"} & set(api.hv.calls)
    # and theirs is theirs: demo's token cannot queue its delete either
    assert api.client.delete("/api/v1/vm/theirs-1", headers=ASYNC).status_code == 404
    assert api.queue.queued == []


def test_without_a_job_queue_an_async_request_is_503_and_does_nothing() -> None:
    for app in _app(with_queue=False):
        for method, path in [("DELETE", "/api/v1/vm/web-1"), ("POST", "/api/v1/vm/web-1/reboot")]:
            refused = app.client.request(method, path, headers=app.key("nq", **ASYNC))
            assert refused.status_code == 503, refused.text
            assert refused.json() == {"error": "this server has no job queue"}
        assert "web-1" in app.made.store.vms
        assert not {"delete", "reboot"} & set(app.hv.calls)
        # a 503 keeps nothing: the key is free again (here for the waiting form)
        assert app.client.delete("/api/v1/vm/web-1", headers=app.key("nq")).status_code == 204


def _worker(app: App, jobs: int) -> threading.Thread:
    """A worker that runs the next ``jobs`` jobs queued (as `vmctl worker` would)."""
    service = JobService(queue=app.queue, vms=app.made.svc)

    def work() -> None:
        for done in range(jobs):
            while len(app.queue.queued) <= done:
                threading.Event().wait(0.01)
            job_id, kind, args = app.queue.queued[done]
            service.run(job_id, kind, args, "w1")

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_with_the_queue_setting_delete_and_reboot_go_through_jobs_and_wait() -> None:
    for app in _app(use_queue=True):
        worker = _worker(app, 2)
        rebooted = app.client.post("/api/v1/vm/web-1/reboot", json={"force": True})
        assert rebooted.status_code == 200 and rebooted.json()["Name"] == "web-1"
        deleted = app.client.delete("/api/v1/vm/web-2", headers=app.key("q-del"))
        assert deleted.status_code == 204, deleted.text
        worker.join(5)
        assert [(kind, args["name"]) for _id, kind, args in app.queue.queued] == [
            ("reboot", "web-1"),
            ("delete", "web-2"),
        ]
        assert all(job.state == "succeeded" for job in app.queue.jobs.values())
        assert app.hv.calls.count("reset") == 1
        assert "web-2" not in app.made.store.vms
        replayed = app.client.delete("/api/v1/vm/web-2", headers=app.key("q-del"))
        assert replayed.status_code == 204 and replayed.headers["Idempotent-Replayed"] == "true"
        assert len(app.queue.queued) == 2


# -- the OpenAPI document -------------------------------------------------------------------------


QUEUED = {
    ("delete", "/api/v1/vm/{name}"),
    ("post", "/api/v1/vm"),
    ("post", "/api/v1/vm/{name}/start"),
    ("post", "/api/v1/vm/{name}/stop"),
    ("post", "/api/v1/vm/{name}/reboot"),
}
IDEMPOTENT = QUEUED | {
    ("post", "/api/v1/vm/{name}/resize"),
    ("post", "/api/v1/vm/{name}/snapshots"),
    ("post", "/api/v1/vm/{name}/snapshots/{snapshot}/revert"),
    ("delete", "/api/v1/vm/{name}/snapshots/{snapshot}"),
}


def test_the_document_declares_the_key_and_the_202s(api: App) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    keyed, async_ = set(), set()
    for path, operations in paths.items():
        for method, operation in operations.items():
            headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            if "Idempotency-Key" in headers:
                keyed.add((method, path))
                success = next(s for s in operation["responses"] if s.startswith("2"))
                assert "Idempotent-Replayed" in operation["responses"][success]["headers"]
            if "202" in operation["responses"]:
                async_.add((method, path))
                assert "prefer" in headers, (method, path)
                assert set(operation["responses"]["202"]["headers"]) == {
                    "Location",
                    "Preference-Applied",
                }
    assert keyed == IDEMPOTENT
    assert async_ == QUEUED


def test_a_busy_vm_is_409_not_kept_and_the_retry_with_the_key_runs(api: App) -> None:
    api.made.store.held["web-1"] = "stop"  # another operation holds web-1
    busy = api.client.post("/api/v1/vm/web-1/reboot", headers=api.key("boot-busy"))
    assert busy.status_code == 409 and "busy" in busy.json()["error"], busy.text
    del api.made.store.held["web-1"]
    again = api.client.post("/api/v1/vm/web-1/reboot", headers=api.key("boot-busy"))
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers, again.text
    assert api.hv.calls.count("reboot") == 1
