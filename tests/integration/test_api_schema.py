"""The HTTP API keeps its contract: property-based (Schemathesis) over every operation of the
served OpenAPI document, plus the prototype's examples and the edge cases one by one.

The app is the real one (`vmctl.api.create_app`) over a real `VmService`, a real `PgStore` on a
fresh PostgreSQL schema of the lab's database (as in test_store.py), a `NullCache` and an
inventory written here. Only the nodes are fakes: `connect` hands out a `FakeHypervisor` that
records what it is asked and touches nothing (this file checks the HTTP contract; the e2e tests
boot real guests).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import psycopg
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

import vmctl.adapters.store
import vmctl.api.models
from tests.conftest import fresh_schema
from vmctl.adapters import db
from vmctl.adapters.cache import NullCache
from vmctl.adapters.guest import SshGuestProbe
from vmctl.adapters.jobs import PgJobQueue
from vmctl.adapters.storage import LocalStorage
from vmctl.adapters.store import PgStore
from vmctl.api import create_app
from vmctl.core import tokens
from vmctl.core.addressing import Observation
from vmctl.core.errors import StoreUnavailable
from vmctl.core.inventory import Node, load_inventory
from vmctl.services import Services
from vmctl.services.jobs import JobService
from vmctl.services.tokens import TokenService
from vmctl.services.vms import VmService

pytestmark = pytest.mark.integration

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1lMgjO1GQ0e7oE5hSVbQK4R3V0iZyv9u3Ds1m8dXj test"
PROJECT = "demo"
SEED = 20210629  # Schemathesis/Hypothesis seed: the same cases on every run
MAX_EXAMPLES = 40  # per operation, fuzzing phase (the examples and coverage phases add theirs)
CREATED_AT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # 2021-06-29T19:33:30.839Z
VM_KEYS = {"Name", "RAM", "CPU", "Disk", "IP", "CreatedAt"}
# The bearer token of project demo, registered in each test's schema. It is made at import
# because the Schemathesis configuration (read when the module is collected) sends it.
TOKEN = tokens.new_secret(tokens.TOKEN_PREFIX)[0]

INVENTORY = """\
defaults: {image: debian-12, ram_mb: 512, cpu: 1, disk_gb: 2, root_gb: 4}
images:
  debian-12:
    path: /var/lib/libvirt/images/base/debian-12-genericcloud-amd64.qcow2
    default_user: debian
nodes:
  - name: kvm1
    ssh: {host: 127.0.0.1, port: 1, user: nobody}
    capacity: {cpu: 16, ram_mb: 16384, disk_gb: 500}
    overcommit: {cpu: 4.0}
    storage: {type: dir, path: /var/lib/libvirt/images/vmctl}
    network:
      name: vmnet
      subnet: 10.9.1.0/24
      gateway: 10.9.1.1
      managed: true
      addresses: {first: 10.9.1.10, last: 10.9.1.200}
  - name: kvm2
    ssh: {host: 127.0.0.1, port: 1, user: nobody}
    capacity: {cpu: 16, ram_mb: 16384, disk_gb: 500}
    overcommit: {cpu: 4.0}
    storage: {type: dir, path: /var/lib/libvirt/images/vmctl}
    network:
      name: vmnet
      subnet: 10.9.2.0/24
      gateway: 10.9.2.1
      managed: true
      addresses: {first: 10.9.2.10, last: 10.9.2.200}
"""

# "No server errors" (507 is the documented capacity refusal: no node has room, no address is
# left), the response's status code and content type documented, its body valid by the schema.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
NOT_SERVER_ERRORS = ["2xx", "3xx", "4xx", "507"]


# -- fakes for the nodes --------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, node: str) -> None:
        self.node = node
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeHypervisor:
    """Stands in for vmctl.adapters.hypervisor.Hypervisor: records calls, boots nothing."""

    def __init__(self, node: str) -> None:
        self.runner = FakeRunner(node)
        self.storage = LocalStorage("/var/lib/libvirt/images/vmctl")
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.states: dict[str, str] = {}

    def create(
        self,
        spec: Any,
        disks: Any,
        files: dict[str, str],
        start: bool = True,
        reservation: Any = None,
    ) -> None:
        assert set(files) >= {"meta-data", "user-data", "network-config"}
        self.created.append(spec.name)

    def delete(
        self,
        name: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
        keep_disks: bool = False,
    ) -> None:
        self.deleted.append(name)

    def space(self) -> None:
        return None

    def state(self, name: str) -> str | None:
        if name not in self.created or name in self.deleted:
            return None
        return self.states.get(name, "running")

    def start(self, name: str) -> None:
        self.states[name] = "running"

    def shutdown(self, name: str) -> None:
        self.states[name] = "shut off"

    def destroy(self, name: str) -> None:
        self.states[name] = "shut off"

    def reboot(self, name: str, force: bool = False) -> None:
        pass

    def set_resources(self, name: str, cpu: int, ram_mb: int) -> None:
        pass

    def grow_disk(self, name: str, data_gb: int) -> None:
        pass

    def console_log(self, name: str, max_bytes: int = 1 << 20) -> str:
        return f"{name} login: "

    def observe(self, network: str, timeout: float = 15.0) -> Observation:
        return Observation()

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]:
        return []


# -- the app --------------------------------------------------------------------------------------


@dataclass
class Api:
    app: Any
    url: str  # PostgreSQL conninfo of the test's schema
    store: PgStore  # the test's own connection to the same schema
    token: str  # a bearer token of project "demo"
    hypervisors: dict[str, FakeHypervisor]
    services: list[VmService] = field(default_factory=list)

    def new_token(self, project: str) -> str:
        token, digest = tokens.new_secret(tokens.TOKEN_PREFIX)
        self.store.create_token(project, digest, "test")
        return token


@contextmanager
def _serve(pg_url: str, directory: Path) -> Iterator[Api]:
    """The real app over the schema at ``pg_url`` (upgraded here) and fake nodes."""
    db.upgrade(pg_url)
    path = directory / "inventory.yaml"
    path.write_text(INVENTORY)
    inventory = load_inventory(path)
    lock = threading.Lock()
    hypervisors: dict[str, FakeHypervisor] = {}
    services: list[VmService] = []

    def connect(node: Node) -> Any:
        with lock:
            return hypervisors.setdefault(node.name, FakeHypervisor(node.name))

    def make_service() -> Services:
        svc = VmService(
            inventory=inventory,
            store=PgStore(pg_url, actor="api-test@test"),
            cache=NullCache(),
            connect=connect,
            probe=SshGuestProbe(),
            actor="api-test@test",
            default_keys=[KEY],
        )
        with lock:
            services.append(svc)
        return Services(vms=svc, tokens=TokenService(svc.store), jobs=JobService(queue, svc))

    queue = PgJobQueue(pg_url)  # no worker: what the async form queues stays queued
    app = create_app(make_service, logging.getLogger("test"))
    with PgStore(pg_url, actor="api-test@test") as store:
        store.create_token(PROJECT, tokens.digest(TOKEN), "api test")
        try:
            yield Api(app, pg_url, store, TOKEN, hypervisors, services)
        finally:
            for svc in services:  # one per worker thread, each with its own connection
                svc.store.close()
            queue.close()


@pytest.fixture
def api(lab: dict, tmp_path: Path) -> Iterator[Api]:  # type: ignore[type-arg]
    """The app on a schema of its own, for one test."""
    with fresh_schema(lab["postgres"]["url"]) as pg_url, _serve(pg_url, tmp_path) as served:
        yield served


@pytest.fixture(scope="module")
def shared_api(lab: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:  # type: ignore[type-arg]
    """The app the Schemathesis tests share (one per operation; Hypothesis wants no
    function-scoped fixture): what one operation's cases made, the next ones find."""
    with (
        fresh_schema(lab["postgres"]["url"]) as pg_url,
        _serve(pg_url, tmp_path_factory.mktemp("api")) as served,
    ):
        yield served


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(api: Api) -> Iterator[TestClient]:
    """A client of project demo; server errors come back as 500 responses, not exceptions."""
    with TestClient(api.app, raise_server_exceptions=False, headers=bearer(api.token)) as c:
        yield c


# -- Schemathesis over every operation ------------------------------------------------------------


def _config(max_examples: int = MAX_EXAMPLES) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # The header parameter FastAPI documents is overridden, else nearly every case would
            # stop at 401 (test_no_token_or_a_wrong_one_is_401 covers that).
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "generation": {
                "mode": "all",  # valid and invalid data
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True, "expected-statuses": NOT_SERVER_ERRORS},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
            "suppress-health-check": ["too_slow", "filter_too_much"],
        }
    )


def _unused_service() -> Services:
    raise AssertionError("the app that serves the OpenAPI document at collection gets no calls")


# Loaded at collection (Schemathesis makes one test per operation from it; its lazy loader,
# `schemathesis.pytest.from_fixture`, fails on pytest 9: `Function` has no `_nodeid` any more).
# The document does not depend on the service; every case is sent to the fixture's app.
DOCUMENT_APP = create_app(_unused_service, logging.getLogger("test"))
schema = schemathesis.openapi.from_asgi("/openapi.json", DOCUMENT_APP, config=_config())


def _call_and_check(case: schemathesis.Case, app: Any) -> schemathesis.Response:
    """Send ``case`` to ``app`` and run CHECKS on the answer. An exception
    the app does not handle comes out of here as it is (after its 500 response)."""
    response = case.call(app=app)
    case.validate_response(response, checks=CHECKS)
    return response


@schema.parametrize()
def test_every_operation_keeps_its_contract(case: schemathesis.Case, shared_api: Api) -> None:
    _call_and_check(case, shared_api.app)


def test_the_document_is_the_one_served(shared_api: Api) -> None:
    with TestClient(shared_api.app) as client:
        assert client.get("/openapi.json").json() == schema.raw_schema


def test_the_schema_covers_every_route() -> None:
    operations = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert operations == {
        ("POST", "/api/v1/vm"),
        ("GET", "/api/v1/vm"),
        ("GET", "/api/v1/vm/{name}"),
        ("DELETE", "/api/v1/vm/{name}"),
        ("POST", "/api/v1/ip/"),
        ("POST", "/api/v1/vm/{name}/start"),
        ("POST", "/api/v1/vm/{name}/stop"),
        ("POST", "/api/v1/vm/{name}/reboot"),
        ("POST", "/api/v1/vm/{name}/resize"),
        ("GET", "/api/v1/vm/{name}/events"),
        ("GET", "/api/v1/vm/{name}/console"),
        ("GET", "/api/v1/vm/{name}/snapshots"),
        ("POST", "/api/v1/vm/{name}/snapshots"),
        ("POST", "/api/v1/vm/{name}/snapshots/{snapshot}/revert"),
        ("DELETE", "/api/v1/vm/{name}/snapshots/{snapshot}"),
        ("POST", "/api/v1/phone-home/{name}"),
        ("GET", "/api/v1/jobs/{job_id}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    }


def _fuzz(api: Api, method: str, path: str, examples: int = 10) -> None:
    """What test_every_operation_keeps_its_contract does, on one operation of ``api``'s app."""

    @hypothesis.given(case=schema[path][method].as_strategy())
    @hypothesis.settings(max_examples=examples, derandomize=True, database=None, deadline=None)
    def run(case: schemathesis.Case) -> None:
        _call_and_check(case, api.app)

    run()


def test_the_contract_test_can_fail(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above do fail on a 5xx, an unhandled exception and a body that breaks the
    response schema (else test_every_operation_keeps_its_contract could pass checking nothing)."""
    _fuzz(api, "GET", "/readyz")

    def down(_store: PgStore) -> None:
        raise StoreUnavailable("PostgreSQL at nowhere is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(PgStore, "ping", down)  # a 503, answered in the contract's shape
        with pytest.raises(BaseException, match="Server error") as caught:
            _fuzz(api, "GET", "/readyz")
        assert "503" in str(caught.value)

    def boom(_store: PgStore) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(PgStore, "ping", boom)  # a 500 from an exception the app does not handle
        with pytest.raises(RuntimeError, match="boom"):
            _fuzz(api, "GET", "/readyz")

    with TestClient(api.app, headers=bearer(api.token)) as client:
        _create(client, "shape-1")
    _fuzz(api, "GET", "/api/v1/vm")
    with monkeypatch.context() as patch:
        patch.setattr(
            vmctl.adapters.store.PgStore,
            "list_contract_page",
            lambda *_a, **_k: ('[{"Name": "shape-1", "RAM": 512}]', 1, "shape-1"),
        )
        with pytest.raises(BaseException, match="Response violates schema"):
            _fuzz(api, "GET", "/api/v1/vm")


NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
AMOUNTS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-10, max_value=300_000),
    st.from_regex(r"\s{0,2}[+-]?[0-9]{1,7}\s{0,2}", fullmatch=True),
    st.text(max_size=8),
    st.none(),
)


def test_creates_with_valid_names_keep_the_contract(api: Api, client: TestClient) -> None:
    """Generated bodies get little past the name check (the document has no pattern for Name):
    here every name is valid and the amounts are near and beyond the limits. Each answer keeps
    the contract, a created VM reads back as sent and is deleted again."""
    operation = schema["/api/v1/vm"]["POST"]
    other_project = bearer(api.new_token("other"))

    @hypothesis.given(
        name=NAMES,
        amounts=st.fixed_dictionaries({}, optional=dict.fromkeys(("RAM", "CPU", "Disk"), AMOUNTS)),
        image=st.sampled_from([None, "debian-12", "nope"]),
        lowercase=st.booleans(),
    )
    @hypothesis.settings(max_examples=100, derandomize=True, database=None, deadline=None)
    def run(name: str, amounts: dict[str, Any], image: str | None, lowercase: bool) -> None:
        body = (
            {"Name": name, **amounts}
            if image is None
            else {"Name": name, **amounts, "Image": image}
        )
        if lowercase:
            body = {key.lower(): value for key, value in body.items()}
        case = operation.Case(body=body, headers=bearer(api.token))
        response = _call_and_check(case, api.app)
        assert response.status_code in (201, 400, 409, 422, 507), response.content
        if response.status_code != 201:
            assert response.json()["error"]
            return
        made = response.json()
        got = client.get(f"/api/v1/vm/{name}")
        assert got.status_code == 200, got.text
        assert got.json() == made
        for key in ("RAM", "CPU", "Disk"):
            sent = body.get(key, body.get(key.lower()))
            if sent is not None:
                assert made[key] == str(int(str(sent).strip())), (key, sent, made)
        assert client.get(f"/api/v1/vm/{name}", headers=other_project).status_code == 404
        assert client.delete(f"/api/v1/vm/{name}").status_code == 204
        assert client.get(f"/api/v1/vm/{name}").status_code == 404

    run()
    assert api.store.list() == []


# -- the prototype's contract, case by case -------------------------------------------------------


def _create(client: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/api/v1/vm", json={"Name": name, "RAM": "512", **extra})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_the_sample_request_verbatim(client: TestClient, api: Api) -> None:
    response = client.post(
        "/api/v1/vm", json={"Name": "test-1", "RAM": "1024", "CPU": "2", "Disk": "10"}
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert {k: body[k] for k in ("Name", "RAM", "CPU", "Disk", "IP")} == {
        "Name": "test-1",
        "RAM": "1024",
        "CPU": "2",
        "Disk": "10",
        "IP": "unassigned",
    }
    assert pytest.approx(time.time(), abs=60) == _epoch(body["CreatedAt"])
    assert body["Node"] in ("kvm1", "kvm2")
    assert body["IPState"] == "expected"
    assert api.hypervisors[body["Node"]].created == ["test-1"]
    vm = api.store.get("test-1")
    assert (vm.project, vm.ram_mb, vm.cpu, vm.disk_gb, vm.state) == (
        PROJECT,
        1024,
        2,
        10,
        "running",
    )


def _epoch(created_at: str) -> float:
    assert re.fullmatch(CREATED_AT, created_at), created_at
    return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()


def test_lowercase_keys_and_the_list(client: TestClient) -> None:
    response = client.post("/api/v1/vm", json={"name": "low-1", "ram": "768", "cpu": 1, "disk": 3})
    assert response.status_code == 201, response.text
    _create(client, "low-2")

    response = client.get("/api/v1/vm")
    assert response.status_code == 200, response.text
    vms = response.json()
    assert [vm["Name"] for vm in vms] == ["low-1", "low-2"]
    for vm in vms:
        assert set(vm) == VM_KEYS
        assert all(isinstance(value, str) for value in vm.values()), vm
        _epoch(vm["CreatedAt"])
    assert {k: vms[0][k] for k in ("RAM", "CPU", "Disk", "IP")} == {
        "RAM": "768",
        "CPU": "1",
        "Disk": "3",
        "IP": "unassigned",
    }


def test_a_name_taken_is_409(client: TestClient) -> None:
    _create(client, "dup-1")
    response = client.post("/api/v1/vm", json={"Name": "dup-1", "RAM": "512"})
    assert response.status_code == 409, response.text
    assert "dup-1" in response.json()["error"]


def test_ram_not_a_number_is_400_naming_ram(client: TestClient, api: Api) -> None:
    response = client.post("/api/v1/vm", json={"Name": "bad-1", "RAM": "abc"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == "ram"
    assert "abc" in body["error"]
    assert api.store.list() == []


def test_a_missing_name_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/api/v1/vm", json={"RAM": "1024"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "Name"
    assert "Name" in body["error"]


def test_no_token_or_a_wrong_one_is_401(api: Api) -> None:
    with TestClient(api.app, raise_server_exceptions=False) as anonymous:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
            for method, path in (("GET", "/api/v1/vm"), ("GET", "/api/v1/vm/a")):
                response = anonymous.request(method, path, headers=headers)
                assert response.status_code == 401, (headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]
            response = anonymous.post("/api/v1/vm", json={"Name": "x-1"}, headers=headers)
            assert response.status_code == 401, response.text
    assert api.store.list() == []


def test_another_project_sees_nothing_of_demo(client: TestClient, api: Api) -> None:
    _create(client, "mine-1")
    other = bearer(api.new_token("other"))
    assert client.get("/api/v1/vm/mine-1", headers=other).status_code == 404
    assert client.get("/api/v1/vm", headers=other).json() == []
    assert client.delete("/api/v1/vm/mine-1", headers=other).status_code == 404
    assert client.post("/api/v1/ip/", json={"name": "mine-1"}, headers=other).status_code == 404
    assert client.get("/api/v1/vm/mine-1").status_code == 200


def test_the_async_create_is_202_with_its_job_in_the_document(shared_api: Api) -> None:
    """`Prefer: respond-async` answers 202 with the job and its Location, in the shape the
    document gives (checked as the fuzzer checks), and the job is there to be asked for."""
    case = schema["/api/v1/vm"]["POST"].Case(
        body={"Name": "jobs-async-1", "RAM": "256"},
        headers={"Prefer": "respond-async", **bearer(TOKEN)},
    )
    response = _call_and_check(case, shared_api.app)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == [f"/api/v1/jobs/{job['id']}"]
    assert (job["kind"], job["vm"], job["state"], job["attempts"]) == (
        "create",
        "jobs-async-1",
        "queued",
        0,
    )
    got = schema["/api/v1/jobs/{job_id}"]["GET"].Case(
        path_parameters={"job_id": job["id"]}, headers=bearer(TOKEN)
    )
    again = _call_and_check(got, shared_api.app)
    assert again.status_code == 200 and again.json() == job


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("DELETE", "/api/v1/vm/{name}", "delete"),
        ("POST", "/api/v1/vm/{name}/start", "start"),
        ("POST", "/api/v1/vm/{name}/stop", "stop"),
        ("POST", "/api/v1/vm/{name}/reboot", "reboot"),
    ],
)
def test_an_async_delete_or_lifecycle_verb_is_202_with_its_job_in_the_document(
    shared_api: Api, method: str, path: str, kind: str
) -> None:
    """The delete and start/stop/reboot answer 202 with their job, in the document's shape, and
    a retry with the key gets the same job (Idempotent-Replayed), queued once."""
    name = f"jobs-{kind}-async"
    with TestClient(shared_api.app, headers=bearer(TOKEN)) as client:
        _create(client, name)
    headers = {"Prefer": "respond-async", "Idempotency-Key": f"jobs-{kind}-key", **bearer(TOKEN)}
    case = schema[path][method].Case(path_parameters={"name": name}, headers=headers)
    response = _call_and_check(case, shared_api.app)
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["vm"], job["state"]) == (kind, name, "queued")
    assert response.headers["location"] == [f"/api/v1/jobs/{job['id']}"]
    again = _call_and_check(case, shared_api.app)
    assert again.status_code == 202 and again.json() == job
    assert again.headers["idempotent-replayed"] == ["true"]
    with psycopg.connect(shared_api.url) as conn:
        queued = conn.execute("SELECT kind FROM vmctl_jobs WHERE vm = %s", (name,)).fetchall()
    assert queued == [(kind,)]


def test_a_delete_replayed_with_its_key_is_204_in_the_document(shared_api: Api) -> None:
    with TestClient(shared_api.app, headers=bearer(TOKEN)) as client:
        _create(client, "idem-delete-1")
    case = schema["/api/v1/vm/{name}"]["DELETE"].Case(
        path_parameters={"name": "idem-delete-1"},
        headers={"Idempotency-Key": "idem-delete-key", **bearer(TOKEN)},
    )
    first = _call_and_check(case, shared_api.app)
    again = _call_and_check(case, shared_api.app)
    assert first.status_code == again.status_code == 204
    assert again.headers["idempotent-replayed"] == ["true"]
    deleted = [hv.deleted.count("idem-delete-1") for hv in shared_api.hypervisors.values()]
    assert sum(deleted) == 1


def test_another_projects_vm_queues_nothing(client: TestClient, api: Api) -> None:
    _create(client, "jobs-theirs")
    other = {**bearer(api.new_token("other")), "Prefer": "respond-async"}
    assert client.delete("/api/v1/vm/jobs-theirs", headers=other).status_code == 404
    assert client.post("/api/v1/vm/jobs-theirs/reboot", headers=other).status_code == 404
    with psycopg.connect(api.url) as conn:
        assert conn.execute("SELECT count(*) FROM vmctl_jobs").fetchone() == (0,)
    assert client.get("/api/v1/vm/jobs-theirs").status_code == 200


def test_async_creates_check_the_request_before_queueing(client: TestClient) -> None:
    async_ = {"Prefer": "respond-async"}
    bad = client.post("/api/v1/vm", json={"Name": "jobs-bad", "RAM": "lots"}, headers=async_)
    assert bad.status_code == 400 and bad.json()["field"] == "ram"
    _create(client, "jobs-taken")
    taken = client.post("/api/v1/vm", json={"Name": "jobs-taken"}, headers=async_)
    assert taken.status_code == 409


def test_a_job_of_another_project_or_none_is_404(client: TestClient, api: Api) -> None:
    made = client.post(
        "/api/v1/vm", json={"Name": "jobs-mine"}, headers={"Prefer": "wait=5, respond-async"}
    )
    assert made.status_code == 202, made.text
    other = bearer(api.new_token("other"))
    assert client.get(made.headers["Location"], headers=other).status_code == 404
    assert client.get(made.headers["Location"]).status_code == 200
    assert client.get("/api/v1/jobs/999999999").status_code == 404
    assert client.get("/api/v1/jobs/0").status_code == 422


def test_an_async_create_retried_with_its_key_gets_the_same_job(client: TestClient) -> None:
    headers = {"Prefer": "respond-async", "Idempotency-Key": "jobs-key-1"}
    first = client.post("/api/v1/vm", json={"Name": "jobs-keyed"}, headers=headers)
    again = client.post("/api/v1/vm", json={"Name": "jobs-keyed"}, headers=headers)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    # the same key waiting for the VM instead is another request
    waiting = client.post(
        "/api/v1/vm", json={"Name": "jobs-keyed"}, headers={"Idempotency-Key": "jobs-key-1"}
    )
    assert waiting.status_code == 422, waiting.text


def test_without_prefer_the_create_is_201_as_before(client: TestClient) -> None:
    made = client.post("/api/v1/vm", json={"Name": "jobs-sync"}, headers={"Prefer": "return=x"})
    assert made.status_code == 201 and made.json()["Name"] == "jobs-sync"


def test_ram_more_than_any_node_has_is_507(client: TestClient, api: Api) -> None:
    response = client.post("/api/v1/vm", json={"Name": "huge-1", "RAM": str(1024 * 1024)})
    assert response.status_code == 507, response.text
    assert response.json()["error"]
    assert api.store.list() == []


def test_delete_then_it_is_gone(client: TestClient, api: Api) -> None:
    node = _create(client, "gone-1")["Node"]
    response = client.delete("/api/v1/vm/gone-1")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert api.hypervisors[node].deleted == ["gone-1"]
    response = client.get("/api/v1/vm/gone-1")
    assert response.status_code == 404, response.text
    assert response.json()["error"]
    assert client.delete("/api/v1/vm/gone-1").status_code == 404


def test_look_for_the_address_now(client: TestClient) -> None:
    _create(client, "look-1")
    response = client.post("/api/v1/ip/", json={"name": "look-1"})
    assert response.status_code == 200, response.text
    assert response.json()["IP"] == "unassigned"
    assert client.post("/api/v1/ip/", json={"name": "nope-1"}).status_code == 404


def test_health_and_readiness(api: Api) -> None:
    with TestClient(api.app, raise_server_exceptions=False) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/readyz").json() == {"status": "ready"}


# -- phone-home -----------------------------------------------------------------------------------


def _with_secret(api: Api, name: str) -> str:
    secret, digest = tokens.new_secret()
    with psycopg.connect(api.url, autocommit=True) as conn:
        conn.execute("UPDATE vms SET phone_home_hash = %s WHERE name = %s", (digest, name))
    return secret


def _from(api: Api, address: str) -> Callable[..., Any]:
    """A POST from ``address`` (the request's source, as a real server would see it)."""

    def post(path: str) -> Any:
        with TestClient(api.app, raise_server_exceptions=False, client=(address, 1234)) as c:
            return c.post(path)

    return post


def test_phone_home(client: TestClient, api: Api) -> None:
    node = _create(client, "home-1")["Node"]
    inside = "10.9.1.50" if node == "kvm1" else "10.9.2.50"
    outside = "10.9.2.50" if node == "kvm1" else "10.9.1.50"
    secret = _with_secret(api, "home-1")

    assert _from(api, inside)("/api/v1/phone-home/home-1?secret=wrong").status_code == 403
    assert _from(api, inside)(f"/api/v1/phone-home/nope-1?secret={secret}").status_code == 404
    assert _from(api, outside)(f"/api/v1/phone-home/home-1?secret={secret}").status_code == 403
    # TestClient's own source is "testclient", not an address: refused, not a 500.
    response = client.post(f"/api/v1/phone-home/home-1?secret={secret}")
    assert response.status_code == 403, response.text
    assert client.get("/api/v1/vm/home-1").json()["IP"] == "unassigned"

    response = _from(api, inside)(f"/api/v1/phone-home/home-1?secret={secret}")
    assert response.status_code == 204, response.text
    vm = client.get("/api/v1/vm/home-1").json()
    assert (vm["IP"], vm["IPState"]) == (inside, "confirmed")
    assert [vm["IP"] for vm in client.get("/api/v1/vm").json()] == [inside]

    response = _from(api, inside)(f"/api/v1/phone-home/home-1?secret={secret}")
    assert response.status_code == 403, response.text  # the secret works once
    events = [e for e in api.store.events("home-1") if e["action"] == "ip"]
    assert [e["detail"]["source"] for e in events] == ["phone-home"]


# -- bugs found by the tests above, fixed: they stay fixed -----------------------------------


def test_a_body_that_is_not_json_text_is_an_error_in_the_contract_shape(client: TestClient) -> None:
    for path in ("/api/v1/vm", "/api/v1/ip/"):
        for body in (b"\xff", b'{"Name": "x-1", "RAM": ' + b"1" * 5000 + b"}"):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code in (400, 422), (path, body[:20], response.text)
            assert set(response.json()) <= {"error", "field"}, (path, body[:20], response.text)
            assert response.json()["error"]


def test_unknown_paths_and_methods_answer_in_the_error_shape(client: TestClient) -> None:
    for response in (client.get("/api/v1/nope"), client.put("/api/v1/vm"), client.post("/healthz")):
        assert response.status_code in (404, 405), response.text
        assert set(response.json()) <= {"error", "field"}, response.text


def test_a_huge_digit_string_is_400_not_500(client: TestClient, api: Api) -> None:
    response = client.post("/api/v1/vm", json={"Name": "big-1", "RAM": "1" * 5000})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "ram"
    assert api.store.list() == []


def test_a_boolean_amount_is_refused(client: TestClient, api: Api) -> None:
    response = client.post("/api/v1/vm", json={"Name": "bool-1", "CPU": True})
    assert response.status_code in (400, 422), response.text
    assert api.store.list() == []


def test_a_json_syntax_error_names_no_field(client: TestClient) -> None:
    response = client.post("/api/v1/vm", content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json().get("field") is None, response.text


def test_ssh_keys_must_be_openssh_public_keys(client: TestClient, api: Api) -> None:
    for keys in (["not a key"], [""], []):
        response = client.post("/api/v1/vm", json={"Name": "keys-1", "SSHKeys": keys})
        if keys == []:  # an empty list means the server's default keys
            assert response.status_code == 201, response.text
            client.delete("/api/v1/vm/keys-1")
            continue
        assert response.status_code == 400 and response.json()["field"] == "ssh-key", response.text
    assert api.store.list() == []


def test_the_list_built_by_postgresql_is_what_vm_out_makes(client: TestClient, api: Api) -> None:
    """GET /api/v1/vm's body comes from SQL (fast), single VMs from vm_out (Python): the same."""
    for name in ("same-2", "same-1", "same-3"):
        assert client.post("/api/v1/vm", json={"Name": name}).status_code == 201
    vm = api.store.get("same-2")
    api.store.record_ip("same-2", vm.mac, "10.9.1.77", "lease")  # one with an address
    api.store.set_ip("same-3", "10.9.1.78", "expected")  # one only expected: "unassigned"
    try:
        from_sql = json.loads(api.store.list_contract_page("demo")[0])
        from_python = [vmctl.api.models.vm_out(vm) for vm in api.store.list(project="demo")]
        assert from_sql == from_python
        assert [v["IP"] for v in from_sql] == ["unassigned", "10.9.1.77", "unassigned"]
        assert api.store.list_contract_page("nobody") == ("[]", 0, None)
    finally:
        for name in ("same-1", "same-2", "same-3"):
            client.delete(f"/api/v1/vm/{name}")


def test_the_document_declares_bearer_auth_on_the_vm_routes() -> None:
    document = schema.raw_schema
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token of `vmctl token create --project P`.",
        }
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            needs_token = path.startswith(("/api/v1/vm", "/api/v1/ip", "/api/v1/jobs"))
            declared = operation.get("security") == [{"HTTPBearer": []}]
            assert declared == needs_token, (method, path)


# -- day 2 ----------------------------------------------------------------------------------------


def test_stop_resize_start_and_the_events(client: TestClient, api: Api) -> None:
    _create(client, "day2-1")
    response = client.post("/api/v1/vm/day2-1/resize", json={"RAM": "768"})
    assert response.status_code == 409 and "stop it first" in response.json()["error"]
    stopped = client.post("/api/v1/vm/day2-1/stop", json={"timeout": 5})
    assert stopped.status_code == 200 and stopped.json()["State"] == "stopped"
    resized = client.post("/api/v1/vm/day2-1/resize", json={"RAM": 768, "CPU": "2"})
    assert resized.status_code == 200, resized.text
    assert (resized.json()["RAM"], resized.json()["CPU"]) == ("768", "2")
    shrink = client.post("/api/v1/vm/day2-1/resize", json={"Disk": "1"})
    assert shrink.status_code == 400 and shrink.json()["field"] == "disk"
    assert client.post("/api/v1/vm/day2-1/start").json()["State"] == "running"
    events = client.get("/api/v1/vm/day2-1/events").json()
    assert [e["action"] for e in events] == ["create", "create", "stop", "resize", "start"]
    assert all(e["actor"] == "api-test@test" for e in events)
    assert client.get("/api/v1/vm/day2-1/console").text == "day2-1 login: "
    assert api.store.get("day2-1").state == "running"


def test_an_operation_on_a_busy_vm_is_409_naming_the_holder(client: TestClient, api: Api) -> None:
    _create(client, "day2-2")
    for svc in api.services:
        svc.lock_timeout = 0.2
    with api.store.vm_lock("day2-2", "resize", 0):
        response = client.post("/api/v1/vm/day2-2/stop", json={"timeout": 5})
    assert response.status_code == 409, response.text
    assert "busy" in response.json()["error"] and "resize day2-2" in response.json()["error"]
    assert api.store.get("day2-2").state == "running"


def test_another_projects_vm_has_no_day2_verbs(client: TestClient, api: Api) -> None:
    _create(client, "day2-3")
    other = bearer(api.new_token("other"))
    for path in ("stop", "start", "reboot"):
        assert client.post(f"/api/v1/vm/day2-3/{path}", headers=other).status_code == 404
    assert client.get("/api/v1/vm/day2-3/events", headers=other).status_code == 404


def test_the_list_pages_with_limit_and_after_and_links_the_next_page(
    client: TestClient, api: Api
) -> None:
    """Without `limit` the seed's whole array; with it, pages by name and a Link to the next."""
    import psycopg

    with psycopg.connect(api.url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac,
                                project)
               SELECT 'page-' || lpad(i::text, 2, '0'), 'kvm1', 'running', 512, 1, 2, 4,
                      'debian-12', '52:54:00:00:10:' || lpad(i::text, 2, '0'), 'demo'
               FROM generate_series(1, 25) AS i"""
        )
    whole = client.get("/api/v1/vm")
    assert whole.status_code == 200 and "link" not in whole.headers
    names = [vm["Name"] for vm in whole.json()]
    assert names == [f"page-{i:02d}" for i in range(1, 26)]
    seen, url, pages = [], "/api/v1/vm?limit=10", 0
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        seen += [vm["Name"] for vm in page.json()]
        pages += 1
        link = page.headers.get("link")
        url = link.split(">")[0].lstrip("<") if link else ""
        assert link is None or link.endswith('; rel="next"')
    assert (seen, pages) == (names, 3)  # 10 + 10 + 5: the last page is short, no Link
    assert client.get("/api/v1/vm?limit=10&after=page-20").json()[0]["Name"] == "page-21"
    for bad in ("limit=0", "limit=10001", "limit=ten"):
        assert client.get(f"/api/v1/vm?{bad}").status_code == 422, bad
    assert client.get("/api/v1/vm?after=Not_A_Name").status_code == 400


def test_a_kept_list_is_given_until_the_vms_table_changes(client: TestClient, api: Api) -> None:
    """GET /api/v1/vm's JSON is kept with the vms table's version (schema 0007): given again
    while nothing changed, built again after any insert, update or delete."""
    import psycopg

    store = api.store
    first = store.list_contract_page("demo")
    key = ("demo", None, None, None, None)
    version, _ = store._lists[key]
    store._lists[key] = (version, ("kept", 0, None))  # what a second call gives if it is kept
    assert store.list_contract_page("demo") == ("kept", 0, None)
    changes = [
        """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac, project)
           VALUES ('kept-1', 'kvm1', 'running', 512, 1, 2, 4, 'debian-12', 'm1', 'demo')""",
        "UPDATE vms SET state = 'stopped' WHERE name = 'kept-1'",
        "DELETE FROM vms WHERE name = 'kept-1'",
    ]
    states = []
    for change in changes:
        with psycopg.connect(api.url, autocommit=True) as conn:
            conn.execute(change)
        body = store.list_contract_page("demo")[0]
        states.append([vm["Name"] for vm in json.loads(body)])
        assert body != "kept"
        store._lists[key] = (store._lists[key][0], ("kept", 0, None))
    assert states == [["kept-1"], ["kept-1"], []]
    assert first[0] == "[]"
