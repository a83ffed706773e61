"""--wait: the steps, the message of a step that got stuck, and waiting for the address that
`vmctl watch-ip` records (PostgreSQL and Redis faked)."""

import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vmctl.adapters.cache import NullCache, SubscriptionLost
from vmctl.adapters.guest import SshGuestProbe, status_of
from vmctl.core import readiness as steps
from vmctl.core.errors import InvalidInput, NotFound, StoreUnavailable
from vmctl.core.records import VmRecord
from vmctl.services import readiness
from vmctl.services.ports import CloudInit

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
        store,
        cache or NullCache(),
        "web-1",
        time.monotonic() + within,
        poll_s=poll_s,
        **kwargs,
    )


# --wait-for and the message of a Timeout


@pytest.mark.parametrize("step", steps.STEPS)
def test_every_step_is_accepted(step: str) -> None:
    assert steps.check_step(step) == step


@pytest.mark.parametrize("step", ["", "IP", "dhcp", "cloudinit"])
def test_an_unknown_step_names_wait_for(step: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        steps.check_step(step)
    assert caught.value.field == "wait-for"
    assert str(caught.value) == f"wait-for: must be one of ip, ssh, cloud-init, not {step!r}"


def test_stuck_names_the_step_the_time_the_node_and_the_console_log() -> None:
    message = steps.stuck(
        "web-1", "ip", 120.4, "node7", "/srv/vms/web-1/console.log", "no DHCP lease"
    )
    assert message == (
        "web-1: stuck at step 'ip' after 120 s: no DHCP lease; "
        "see the console log on node node7: /srv/vms/web-1/console.log"
    )


def test_ssh_host_key_of_a_closed_port_is_none() -> None:
    assert SshGuestProbe().host_key("127.0.0.1", port=1, timeout=0.5) is None


@pytest.mark.parametrize(
    ("code", "out", "status"),
    [
        (0, "status: done", "done"),
        (2, "status: done\nrecoverable", "degraded"),
        (1, "status: error\nboom", "error"),
        (1, "killed", None),
        (255, "", None),
    ],
)
def test_cloud_init_status_by_exit_code(code: int, out: str, status: str | None) -> None:
    result = status_of(code, out)
    assert (result.status if result else None) == status


class FakeProbe:
    """Answers host_key and cloud_init from scripts (the last answer repeats)."""

    def __init__(
        self, keys: list[str | None] | None = None, inits: list[CloudInit | None] | None = None
    ) -> None:
        self.keys = keys or [None]
        self.inits = inits or [None]
        self.key_calls = 0
        self.init_calls = 0

    def host_key(self, ip: str, port: int = 22, timeout: float = 5.0) -> str | None:
        self.key_calls += 1
        return self.keys[min(self.key_calls, len(self.keys)) - 1]

    def cloud_init(
        self, ip: str, user: str, key_file: Any, host_key: str, timeout: float
    ) -> CloudInit | None:
        assert timeout > 0
        self.init_calls += 1
        return self.inits[min(self.init_calls, len(self.inits)) - 1]


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1 web-1"


def test_ssh_waits_for_exactly_the_vms_host_key() -> None:
    probe = FakeProbe(keys=[None, "ssh-ed25519 OTHER", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1"])
    deadline = time.monotonic() + 5
    assert readiness.wait_for_ssh(probe, "10.0.0.5", KEY, deadline, pause_s=0.01)
    assert probe.key_calls == 3


def test_ssh_with_a_wrong_key_until_the_deadline_is_false() -> None:
    probe = FakeProbe(keys=["ssh-ed25519 OTHER"])
    deadline = time.monotonic() + 0.1
    assert not readiness.wait_for_ssh(probe, "10.0.0.5", KEY, deadline, pause_s=0.01)


def test_cloud_init_is_asked_again_until_it_says() -> None:
    done = CloudInit("done", "status: done")
    probe = FakeProbe(inits=[None, None, done])
    deadline = time.monotonic() + 5
    got = readiness.wait_for_cloud_init(probe, "ip", "u", Path("/k"), KEY, deadline, pause_s=0.01)
    assert got == done and probe.init_calls == 3


def test_cloud_init_silent_until_the_deadline_is_none() -> None:
    probe = FakeProbe()
    deadline = time.monotonic() + 0.1
    assert readiness.wait_for_cloud_init(probe, "ip", "u", Path("/k"), KEY, deadline, 0.01) is None


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
