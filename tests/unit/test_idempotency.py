"""Idempotency keys: the header's rules, the fingerprint, the service's logic over the fake store
(one run per key, the kept answer for every retry, waiting for a run in progress, nothing kept
after a server error, expiry), and POST /api/v1/vm with the header over fakes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from tests.unit.fakes import FakeStore, World, world
from vmctl.core.errors import Busy, InvalidInput, StoreUnavailable
from vmctl.core.idempotency import Answer, KeyReused, fingerprint, parse_key
from vmctl.services.idempotency import IdempotencyService

UUID = "8e03978e-40d5-43e8-bc93-6894a57f9324"

# -- the header -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "key"),
    [(UUID, UUID), (f'"{UUID}"', UUID), (" abc-1 ", "abc-1"), ("x" * 255, "x" * 255)],
)
def test_a_key_is_visible_ascii_bare_or_quoted(sent: str, key: str) -> None:
    assert parse_key(sent) == key


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        ("", "is empty"),
        ('""', "is empty"),
        ("x" * 256, "is 256 characters long: at most 255"),
        ("two words", "visible ASCII"),
        ("clé", "visible ASCII"),
        ('a"b', "visible ASCII"),
        ("a\\b", "visible ASCII"),
    ],
)
def test_a_malformed_key_is_refused_naming_the_header(sent: str, says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_key(sent)
    assert refused.value.field == "Idempotency-Key"
    assert says in str(refused.value)


def test_the_fingerprint_is_of_method_path_and_body_whatever_the_key_order() -> None:
    one = fingerprint("POST", "/api/v1/vm", {"Name": "a", "RAM": "512"})
    assert one == fingerprint("post", "/api/v1/vm", {"RAM": "512", "Name": "a"})
    assert one != fingerprint("POST", "/api/v1/vm", {"Name": "a", "RAM": "1024"})
    assert one != fingerprint("POST", "/api/v1/ip/", {"Name": "a", "RAM": "512"})
    assert one != fingerprint("PUT", "/api/v1/vm", {"Name": "a", "RAM": "512"})


# -- the service ----------------------------------------------------------------------------------


class Work:
    """A request's work: counts its runs, answers ``answer`` (or raises ``error``)."""

    def __init__(self, answer: Answer | None = None, error: Exception | None = None) -> None:
        self.answer = answer or Answer(201, {"Name": "a"})
        self.error = error
        self.runs = 0

    def __call__(self) -> Answer:
        self.runs += 1
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def service(store: FakeStore) -> IdempotencyService:
    return IdempotencyService(store, wait_s=5)


def test_without_a_key_every_request_runs(service: IdempotencyService, store: FakeStore) -> None:
    work = Work()
    assert service.run("demo", None, "f1", work) == Answer(201, {"Name": "a"})
    assert service.run("demo", None, "f1", work) == Answer(201, {"Name": "a"})
    assert work.runs == 2 and store.kept == {}


def test_a_key_runs_once_and_retries_get_the_first_answer(service: IdempotencyService) -> None:
    work = Work()
    first = service.run("demo", UUID, "f1", work)
    again = service.run("demo", f'"{UUID}"', "f1", work)
    assert work.runs == 1
    assert first == Answer(201, {"Name": "a"}, replayed=False)
    assert again == Answer(201, {"Name": "a"}, replayed=True)


def test_a_refusal_is_kept_too(service: IdempotencyService) -> None:
    work = Work(Answer(409, {"error": "a VM named a exists already"}))
    service.run("demo", "k", "f1", work)
    assert service.run("demo", "k", "f1", work) == Answer(
        409, {"error": "a VM named a exists already"}, replayed=True
    )
    assert work.runs == 1


def test_bad_input_keeps_nothing_so_a_corrected_body_may_use_the_key(
    service: IdempotencyService, store: FakeStore
) -> None:
    bad = Work(Answer(400, {"error": "name: 'Not_A_Name' is not a valid name", "field": "name"}))
    assert service.run("demo", "k", "f1", bad).status == 400
    assert store.kept == {}
    assert service.run("demo", "k", "f2", Work()) == Answer(201, {"Name": "a"})


def test_the_key_with_another_request_is_refused(service: IdempotencyService) -> None:
    work = Work()
    service.run("demo", "k", "f1", work)
    with pytest.raises(KeyReused) as refused:
        service.run("demo", "k", "f2", work)
    assert refused.value.field == "Idempotency-Key"
    assert "'k' was used with another request" in str(refused.value)
    assert work.runs == 1


def test_keys_are_per_project(service: IdempotencyService) -> None:
    work = Work()
    service.run("demo", "k", "f1", work)
    assert service.run("other", "k", "f2", work).replayed is False
    assert work.runs == 2


def test_a_server_error_keeps_nothing_so_a_retry_runs_again(
    service: IdempotencyService, store: FakeStore
) -> None:
    failing = Work(error=StoreUnavailable("PostgreSQL at 127.0.0.1:15432: Connection refused"))
    with pytest.raises(StoreUnavailable):
        service.run("demo", "k", "f1", failing)
    answered_500 = Work(Answer(503, {"error": "node down"}))
    assert service.run("demo", "k", "f1", answered_500) == Answer(503, {"error": "node down"})
    assert store.kept == {} and store.held_keys == set()
    work = Work()
    assert service.run("demo", "k", "f1", work) == Answer(201, {"Name": "a"})
    assert work.runs == 1


def test_an_answer_not_kept_for_an_outage_is_still_the_answer(
    service: IdempotencyService, store: FakeStore
) -> None:
    store.fail_at["keep_answer"] = StoreUnavailable("PostgreSQL: gone")
    assert service.run("demo", "k", "f1", Work()) == Answer(201, {"Name": "a"})
    assert store.held_keys == set()


def test_a_kept_answer_expires(service: IdempotencyService, store: FakeStore) -> None:
    work = Work()
    service.run("demo", "k", "f1", work)
    store.clock += service.ttl_s - 1
    # one second before expiry the key still holds: another request with it is refused
    with pytest.raises(KeyReused):
        service.run("demo", "k", "f3", work)
    store.clock += 1  # expired: the key is new again, for any request
    assert service.run("demo", "k", "f3", work) == Answer(201, {"Name": "a"})
    assert work.runs == 2


def test_a_retry_waits_for_the_first_request_and_gets_its_answer(
    service: IdempotencyService,
) -> None:
    started, release = threading.Event(), threading.Event()
    runs = []

    def slow() -> Answer:
        runs.append("slow")
        started.set()
        assert release.wait(5)
        return Answer(201, {"Name": "a", "Node": "kvm1"})

    answers: list[Answer] = []
    first = threading.Thread(target=lambda: answers.append(service.run("demo", "k", "f1", slow)))
    first.start()
    assert started.wait(5)
    retry: list[Answer] = []
    second = threading.Thread(
        target=lambda: retry.append(service.run("demo", "k", "f1", Work(Answer(409, {}))))
    )
    second.start()
    time.sleep(0.3)
    assert retry == []  # waiting for the first
    release.set()
    first.join(5)
    second.join(5)
    assert runs == ["slow"]
    assert answers == [Answer(201, {"Name": "a", "Node": "kvm1"})]
    assert retry == [Answer(201, {"Name": "a", "Node": "kvm1"}, replayed=True)]


def test_a_retry_gives_up_waiting_with_busy(store: FakeStore) -> None:
    service = IdempotencyService(store, wait_s=0.2)
    with store.idempotency_hold("demo", "k", 1):  # the first request, still running
        work = Work()
        with pytest.raises(Busy, match="still running"):
            service.run("demo", "k", "f1", work)
        assert work.runs == 0


# -- POST /api/v1/vm ------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[tuple[TestClient, World]]:
    from vmctl.api.app import create_app
    from vmctl.services import Services
    from vmctl.services.tokens import TokenService

    made = world()
    tokens = TokenService(made.store)
    _, token = tokens.create("demo")
    app = create_app(lambda: Services(vms=made.svc, tokens=tokens), logging.getLogger("test"))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, made


BODY = {"Name": "idem-1", "RAM": "512", "CPU": "1", "Disk": "2"}


def test_a_create_sent_twice_with_a_key_makes_one_vm(api: tuple[TestClient, World]) -> None:
    client, made = api
    first = client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": UUID})
    again = client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": UUID})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and first.json()["Name"] == "idem-1"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert made.store.calls.count("claim") == 1
    # without the key, the same body is a new create: the name is taken
    third = client.post("/api/v1/vm", json=BODY)
    assert third.status_code == 409
    assert "a VM named idem-1 exists already" in third.json()["error"]


def test_the_key_with_another_body_is_422_and_creates_nothing(
    api: tuple[TestClient, World],
) -> None:
    client, made = api
    assert client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": "k1"}).is_success
    other = client.post(
        "/api/v1/vm", json={**BODY, "Name": "idem-2"}, headers={"Idempotency-Key": "k1"}
    )
    assert other.status_code == 422
    assert other.json() == {
        "error": "Idempotency-Key: 'k1' was used with another request (method, path or body); "
        "use a new key for a new request",
        "field": "Idempotency-Key",
    }
    assert sorted(made.store.vms) == ["idem-1"]


def test_the_same_body_written_otherwise_is_the_same_request(
    api: tuple[TestClient, World],
) -> None:
    client, _made = api
    first = client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": "k2"})
    lower = {"name": "idem-1", "ram": "512", "cpu": "1", "disk": "2"}
    again = client.post("/api/v1/vm", json=lower, headers={"Idempotency-Key": "k2"})
    assert again.status_code == 201 and again.json() == first.json()


@pytest.mark.parametrize("key", ["", "two words", "x" * 256])
def test_a_malformed_key_is_400_and_creates_nothing(
    api: tuple[TestClient, World], key: str
) -> None:
    client, made = api
    refused = client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": key})
    assert refused.status_code == 400
    assert refused.json()["field"] == "Idempotency-Key"
    assert refused.json()["error"].startswith("Idempotency-Key: ")
    assert made.store.vms == {} and "claim" not in made.store.calls


def test_an_outage_keeps_nothing_and_the_retry_creates(api: tuple[TestClient, World]) -> None:
    client, made = api
    made.store.fail_at["claim"] = StoreUnavailable("PostgreSQL at 127.0.0.1:15432: gone")
    failed = client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": "k3"})
    assert failed.status_code == 503
    del made.store.fail_at["claim"]
    retried = client.post("/api/v1/vm", json=BODY, headers={"Idempotency-Key": "k3"})
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert sorted(made.store.vms) == ["idem-1"]


def test_the_openapi_document_declares_the_header(api: tuple[TestClient, World]) -> None:
    client, _made = api
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/vm"]["post"]
    header = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert set(header) == {"Idempotency-Key", "prefer"}  # prefer: the 202 form
    assert header["Idempotency-Key"]["required"] is False
    assert {"201", "202", "409", "422"} <= set(operation["responses"])
