"""--wait: the steps, the message of a step that got stuck, and waiting for the address that
`vmctl watch-ip` records (PostgreSQL and Redis faked)."""

import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from vmctl import readiness
from vmctl.cache import NullCache, SubscriptionLost
from vmctl.errors import InvalidInput, NotFound, StoreUnavailable
from vmctl.store import VmRecord

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
WAITING = VmRecord(
    id=1,
    name="web-1",
    node="node7",
    state="running",
    ram_mb=512,
    cpu=1,
    disk_gb=1,
    root_gb=10,
    image="debian-12",
    mac="52:54:00:00:00:01",
    host_key=None,
    ip="10.20.1.7",
    ip_state="expected",
    group_name=None,
    project=None,
    created_at=T0,
    updated_at=T0,
    ip_pool="10.20.1.0/24",
    reserved_ip="10.20.1.7",
)
CONFIRMED = replace(WAITING, ip_state="confirmed")
DOWN = StoreUnavailable("PostgreSQL at db:5432 is unavailable")


class FakeStore:
    """``get`` answers from a script: a VmRecord or an exception per call; the last repeats."""

    def __init__(self, answers: Iterable[VmRecord | Exception]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def get(self, name: str) -> VmRecord:
        assert name == "web-1"
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeSubscription:
    def __init__(self, lost: bool = False) -> None:
        self.lost = lost
        self.gets = 0
        self.closed = 0

    def get(self, timeout: float) -> dict[str, Any] | None:
        assert 0 < timeout <= 1.0
        self.gets += 1
        if self.lost:
            raise SubscriptionLost("Connection closed by server.")
        return {"name": "other", "ip": "10.20.1.9"}  # someone else's address

    def close(self) -> None:
        self.closed += 1


class FakeCache(NullCache):
    def __init__(self, subscription: FakeSubscription) -> None:
        self.subscription = subscription

    def subscribe_ip(self) -> FakeSubscription:
        return self.subscription


def wait(
    store: FakeStore,
    cache: Any = None,
    within: float = 0.5,
    poll_s: float = 0.01,
    **kwargs: Any,
) -> VmRecord | None:
    return readiness.wait_for_address(
        store,  # type: ignore[arg-type]
        cache or NullCache(),
        "web-1",
        time.monotonic() + within,
        poll_s=poll_s,
        **kwargs,
    )


# --wait-for and the message of a Timeout


@pytest.mark.parametrize("step", readiness.STEPS)
def test_every_step_is_accepted(step: str) -> None:
    assert readiness.check_step(step) == step


@pytest.mark.parametrize("step", ["", "IP", "dhcp", "cloudinit"])
def test_an_unknown_step_names_wait_for(step: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        readiness.check_step(step)
    assert caught.value.field == "wait-for"
    assert str(caught.value) == f"wait-for: must be one of ip, ssh, cloud-init, not {step!r}"


def test_stuck_names_the_step_the_time_the_node_and_the_console_log() -> None:
    message = readiness.stuck(
        "web-1", "ip", 120.4, "node7", "/srv/vms/web-1/console.log", "no DHCP lease"
    )
    assert message == (
        "web-1: stuck at step 'ip' after 120 s: no DHCP lease; "
        "see the console log on node node7: /srv/vms/web-1/console.log"
    )


def test_ssh_host_key_of_a_closed_port_is_none() -> None:
    assert readiness.ssh_host_key("127.0.0.1", port=1, timeout=0.5) is None


# wait_for_address


def test_a_confirmed_address_is_returned_at_once() -> None:
    store = FakeStore([CONFIRMED])
    started = time.monotonic()
    assert wait(store, within=5.0) == CONFIRMED
    assert store.calls == 1
    assert time.monotonic() - started < 0.5


def test_the_record_is_returned_once_its_address_is_confirmed() -> None:
    store = FakeStore([WAITING, WAITING, WAITING, CONFIRMED])
    assert wait(store) == CONFIRMED
    assert store.calls == 4


def test_none_at_the_deadline() -> None:
    store = FakeStore([WAITING])
    started = time.monotonic()
    assert wait(store, within=0.2, poll_s=0.05) is None
    waited = time.monotonic() - started
    assert 0.2 <= waited < 0.6
    assert store.calls >= 2  # read again and again meanwhile


def test_a_deadline_already_past_still_reads_once() -> None:
    assert wait(FakeStore([CONFIRMED]), within=-1.0) == CONFIRMED
    assert wait(FakeStore([WAITING]), within=-1.0) is None


def test_a_store_outage_is_waited_out_and_told_once() -> None:
    told: list[str] = []
    store = FakeStore([DOWN, DOWN, DOWN, WAITING, CONFIRMED])
    assert wait(store, progress=told.append) == CONFIRMED
    assert told == ["web-1: PostgreSQL at db:5432 is unavailable; waiting for it"]


def test_a_second_outage_is_told_again() -> None:
    told: list[str] = []
    store = FakeStore([DOWN, DOWN, WAITING, DOWN, CONFIRMED])
    assert wait(store, progress=told.append) == CONFIRMED
    assert len(told) == 2


def test_an_outage_until_the_deadline_gives_none() -> None:
    told: list[str] = []
    assert wait(FakeStore([DOWN]), within=0.1, progress=told.append) is None
    assert len(told) == 1


def test_a_vm_deleted_meanwhile_is_not_found() -> None:
    with pytest.raises(NotFound):
        wait(FakeStore([WAITING, NotFound("no VM named web-1")]))


def test_look_is_called_while_waiting_but_not_while_the_store_is_down() -> None:
    looks: list[int] = []
    store = FakeStore([DOWN, WAITING, WAITING, CONFIRMED])
    assert wait(store, look=lambda: looks.append(store.calls)) == CONFIRMED
    assert looks == [2, 3]  # after each read that found the VM still waiting


def test_look_that_records_the_address_ends_the_wait() -> None:
    store = FakeStore([WAITING])

    def look() -> None:
        store.answers = [CONFIRMED]  # as `Store.record_ip` would

    assert wait(store, look=look) == CONFIRMED
    assert store.calls == 2


def test_announcements_wake_the_wait_and_the_subscription_is_closed() -> None:
    subscription = FakeSubscription()
    store = FakeStore([WAITING, WAITING, CONFIRMED])
    assert wait(store, FakeCache(subscription), poll_s=10.0) == CONFIRMED  # never polls
    assert subscription.gets == 2
    assert subscription.closed == 1


def test_the_subscription_is_closed_at_the_deadline_too() -> None:
    subscription = FakeSubscription()
    assert wait(FakeStore([WAITING]), FakeCache(subscription), within=0.05) is None
    assert subscription.closed == 1


def test_a_lost_subscription_falls_back_to_polling() -> None:
    subscription = FakeSubscription(lost=True)
    store = FakeStore([WAITING, WAITING, WAITING, CONFIRMED])
    assert wait(store, FakeCache(subscription), poll_s=0.01) == CONFIRMED
    assert subscription.gets == 1  # not asked again once lost
    assert subscription.closed == 1  # closed once, not again at the end
    assert store.calls == 4
