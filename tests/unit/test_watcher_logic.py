"""vmctl watch-ip without a lab: where each VM is (``discover``), what goes out on Redis, and one
pass over every node (``Watcher.once``) with nodes, PostgreSQL and Redis faked."""

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.fakes import ChangesByComparison, UnusedHypervisor
from vmctl.core.addressing import SOURCES, Lease, Neighbor, Observation
from vmctl.core.errors import NodeUnreachable, NotFound, RemoteCommandFailed
from vmctl.core.inventory import AddressPool, Inventory, Node
from vmctl.core.records import IpChange, NewVm, NodeUsage, VmRecord, WatchChanges, WatchTarget
from vmctl.services.ports import Subscription
from vmctl.services.watcher import Found, Timing, Watcher, agent_address, change_message, discover
from vmctl.services.watcher.shared import Shared

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
MAC_A = "52:54:00:00:00:0a"
MAC_B = "52:54:00:00:00:0b"
MAC_C = "52:54:00:00:00:0c"
NOTHING = Observation()


def vm(
    name: str,
    mac: str,
    node: str = "kvm1",
    ip: str | None = None,
    ip_state: str | None = None,
    state: str = "running",
) -> VmRecord:
    return VmRecord(
        id=abs(hash(name)) % 10_000,
        name=name,
        node=node,
        state=state,
        ram_mb=512,
        cpu=1,
        disk_gb=1,
        root_gb=10,
        image="debian-12",
        mac=mac,
        host_key=None,
        ip=ip,
        ip_state=ip_state,
        group_name=None,
        project=None,
        created_at=T0,
        updated_at=T0,
    )


def lease(mac: str, ip: str) -> Lease:
    return Lease(mac, ip, "2026-11-25 15:00:00")


def arp(mac: str, ip: str, state: str = "REACHABLE") -> Neighbor:
    return Neighbor(mac, ip, state)


class FakeHypervisor(UnusedHypervisor):
    """One node: what it observes, what guest agents say, and what it was asked."""

    def __init__(
        self,
        seen: Observation = NOTHING,
        agent: dict[str, list[tuple[str, str]]] | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.seen = seen
        self.agent = agent or {}
        self.fail = fail
        self.observed: list[str] = []
        self.asked: list[str] = []
        self.closes = 0

    def observe(self, network: str, timeout: float = 15.0) -> Observation:
        self.observed.append(network)
        if self.fail is not None:
            raise self.fail
        return self.seen

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]:
        assert (source, timeout_s) == ("agent", 5)  # only the agent is asked per VM, bounded
        self.asked.append(name)
        return self.agent.get(name, [])

    def follow_leases(
        self, network: str, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> None:
        stop.wait()  # a lease file that never changes

    def close(self) -> None:
        self.closes += 1


def found(
    hv: FakeHypervisor, vms: Sequence[VmRecord], sources: Sequence[str], **kwargs: Any
) -> list[Found]:
    return discover(hv, "vmnet", vms, sources, **kwargs)


# agent_address


def test_agent_address_is_the_one_of_the_vms_mac() -> None:
    hv = FakeHypervisor(
        agent={"a": [(MAC_B, "10.20.1.9"), ("00:00:00:00:00:00", "127.0.0.1"), (MAC_A, "10.0.0.5")]}
    )
    assert agent_address(hv, vm("a", MAC_A)) == "10.0.0.5"
    assert hv.asked == ["a"]


def test_agent_address_macs_are_compared_without_case() -> None:
    hv = FakeHypervisor(agent={"a": [(MAC_A.upper(), "10.0.0.5")]})
    assert agent_address(hv, vm("a", MAC_A)) == "10.0.0.5"


@pytest.mark.parametrize("ip", ["169.254.10.20", "127.0.0.1", "127.1.2.3"])
def test_agent_link_local_and_loopback_addresses_are_ignored(ip: str) -> None:
    hv = FakeHypervisor(agent={"a": [(MAC_A, ip)]})
    assert agent_address(hv, vm("a", MAC_A)) is None
    hv = FakeHypervisor(agent={"a": [(MAC_A, ip), (MAC_A, "10.0.0.5")]})
    assert agent_address(hv, vm("a", MAC_A)) == "10.0.0.5"


def test_no_agent_answer_gives_none() -> None:
    assert agent_address(FakeHypervisor(), vm("a", MAC_A)) is None


# discover


def test_the_first_source_that_knows_wins() -> None:
    hv = FakeHypervisor(
        Observation(leases=(lease(MAC_A, "10.0.0.5"),), neighbors=(arp(MAC_A, "10.0.0.6"),))
    )
    a = vm("a", MAC_A)
    assert found(hv, [a], ("lease", "arp")) == [Found("a", "kvm1", MAC_A, "10.0.0.5", "lease")]
    assert found(hv, [a], ("arp", "lease")) == [Found("a", "kvm1", MAC_A, "10.0.0.6", "arp")]


def test_a_later_source_is_used_when_the_earlier_ones_know_nothing() -> None:
    hv = FakeHypervisor(
        Observation(leases=(lease(MAC_A, "10.0.0.5"),), neighbors=(arp(MAC_B, "10.0.0.6"),)),
        agent={"c": [(MAC_C, "10.0.0.7")]},
    )
    vms = [vm("a", MAC_A), vm("b", MAC_B), vm("c", MAC_C)]
    assert found(hv, vms, ("lease", "arp", "agent")) == [
        Found("a", "kvm1", MAC_A, "10.0.0.5", "lease"),
        Found("b", "kvm1", MAC_B, "10.0.0.6", "arp"),
        Found("c", "kvm1", MAC_C, "10.0.0.7", "agent"),
    ]
    assert hv.observed == ["vmnet"]  # one look for every VM of the node
    assert hv.asked == ["c"]  # the agent only for the VM nobody else knew


def test_a_source_not_configured_is_not_used() -> None:
    hv = FakeHypervisor(Observation(leases=(lease(MAC_A, "10.0.0.5"),)))
    assert found(hv, [vm("a", MAC_A)], ("arp",)) == []


def test_the_agent_is_asked_only_when_use_agent_says_so() -> None:
    hv = FakeHypervisor(agent={"a": [(MAC_A, "10.0.0.5")], "b": [(MAC_B, "10.0.0.6")]})
    vms = [vm("a", MAC_A), vm("b", MAC_B)]
    result = found(hv, vms, ("lease", "agent"), use_agent=lambda v: v.name == "b")
    assert result == [Found("b", "kvm1", MAC_B, "10.0.0.6", "agent")]
    assert hv.asked == ["b"]


def test_the_agent_is_not_asked_when_a_batch_source_knows() -> None:
    hv = FakeHypervisor(
        Observation(leases=(lease(MAC_A, "10.0.0.5"),)), agent={"a": [(MAC_A, "10.0.0.99")]}
    )
    assert found(hv, [vm("a", MAC_A)], ("lease", "agent"))[0].source == "lease"
    assert hv.asked == []


def test_the_agent_first_when_configured_so() -> None:
    hv = FakeHypervisor(
        Observation(leases=(lease(MAC_A, "10.0.0.5"),)), agent={"a": [(MAC_A, "10.0.0.99")]}
    )
    assert found(hv, [vm("a", MAC_A)], ("agent", "lease")) == [
        Found("a", "kvm1", MAC_A, "10.0.0.99", "agent")
    ]


def test_agent_link_local_addresses_fall_through_to_the_next_source() -> None:
    hv = FakeHypervisor(
        Observation(neighbors=(arp(MAC_A, "10.0.0.5", "STALE"),)),
        agent={"a": [(MAC_A, "169.254.3.4"), (MAC_A, "127.0.0.1")]},
    )
    assert found(hv, [vm("a", MAC_A)], ("agent", "arp")) == [
        Found("a", "kvm1", MAC_A, "10.0.0.5", "arp")
    ]


def test_vms_found_nowhere_give_nothing() -> None:
    hv = FakeHypervisor(
        Observation(
            leases=(lease(MAC_B, "10.0.0.6"),), neighbors=(arp(MAC_A, "10.0.0.5", "FAILED"),)
        )
    )
    assert found(hv, [vm("a", MAC_A), vm("c", MAC_C)], ("lease", "arp", "agent")) == []
    assert hv.asked == ["a", "c"]


def test_the_node_is_not_observed_when_only_the_agent_is_asked() -> None:
    hv = FakeHypervisor(agent={"a": [(MAC_A, "10.0.0.5")]})
    assert found(hv, [vm("a", MAC_A)], ("agent",)) == [
        Found("a", "kvm1", MAC_A, "10.0.0.5", "agent")
    ]
    assert hv.observed == []


def test_the_node_is_not_observed_without_vms() -> None:
    hv = FakeHypervisor()
    assert found(hv, [], ("lease", "arp", "agent")) == []
    assert hv.observed == [] and hv.asked == []


def test_an_unreachable_node_raises() -> None:
    hv = FakeHypervisor(fail=NodeUnreachable("node kvm1: connection lost"))
    with pytest.raises(NodeUnreachable):
        found(hv, [vm("a", MAC_A)], ("lease",))


# change_message


def test_change_message() -> None:
    change = IpChange(
        name="a",
        node="kvm1",
        ip="10.0.0.5",
        previous="10.0.0.4",
        previous_state="expected",
        source="lease",
        at=datetime(2026, 11, 25, 14, 3, 22, 500000, tzinfo=UTC),
    )
    assert change_message(change) == {
        "name": "a",
        "node": "kvm1",
        "ip": "10.0.0.5",
        "previous": "10.0.0.4",
        "source": "lease",
        "at": "2026-11-25T14:03:22.500000+00:00",
    }
    assert change_message(replace(change, previous=None))["previous"] is None


# Watcher.once

INVENTORY = Inventory.model_validate(
    {
        "defaults": {"image": "debian-12", "ram_mb": 512, "cpu": 1, "disk_gb": 1},
        "images": {"debian-12": {"path": "/img/debian.qcow2", "default_user": "debian"}},
        "nodes": [
            {
                "name": f"kvm{i}",
                "ssh": {"host": f"10.0.0.{i}"},
                "capacity": {"cpu": 4, "ram_mb": 8192, "disk_gb": 100},
                "storage": {"path": "/var/lib/vmctl"},
                "network": {
                    "name": f"vmnet{i}",
                    "subnet": f"10.20.{i}.0/24",
                    "gateway": f"10.20.{i}.1",
                },
            }
            for i in (1, 2)
        ],
    }
)


class FakeStore(ChangesByComparison):
    """The VMs table in memory; ``record_ip`` does what PostgreSQL's does."""

    def __init__(self, vms: Sequence[VmRecord]) -> None:
        self.vms = {v.name: v for v in vms}
        self.recorded: list[tuple[str, str, str, str]] = []

    def get(self, name: str) -> VmRecord:
        if name not in self.vms:
            raise NotFound(f"no VM named {name}")
        return self.vms[name]

    def record_ip(self, name: str, mac: str, ip: str, source: str) -> IpChange | None:
        self.recorded.append((name, mac, ip, source))
        row = self.vms.get(name)
        if row is None or row.mac != mac or (row.ip == ip and row.ip_state == "confirmed"):
            return None
        self.vms[name] = replace(row, ip=ip, ip_state="confirmed")
        return IpChange(name, row.node, ip, row.ip, row.ip_state, source, datetime.now(UTC))

    def heartbeat(self, process: str, kind: str, detail: dict[str, Any]) -> None:
        pass

    def forget_heartbeat(self, process: str) -> None:
        pass

    # the rest of the Store port: not used by the watcher

    def claim(
        self,
        vm: NewVm,
        choose: Callable[[list[NodeUsage]], str],
        host_key: str | None = None,
        pool_of: Callable[[str], AddressPool | None] = lambda _pool: None,
    ) -> VmRecord:
        raise NotImplementedError

    def set_state(self, name: str, state: str) -> VmRecord:
        raise NotImplementedError

    def delete(self, name: str) -> bool:
        raise NotImplementedError

    def usage(self) -> list[NodeUsage]:
        raise NotImplementedError

    def record_phone_home(self, name: str, secret_hash: str, ip: str) -> IpChange | None:
        raise NotImplementedError

    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int:
        raise NotImplementedError

    def events(self, vm: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def create_token(self, project: str, token_hash: str, name: str = "") -> int:
        raise NotImplementedError

    def token_project(self, token_hash: str) -> str | None:
        raise NotImplementedError

    def tokens(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def revoke_token(self, token_id: int) -> None:
        raise NotImplementedError

    def alive(self, kind: str, within_s: float) -> list[str]:
        raise NotImplementedError

    def ping(self) -> None:
        pass

    # last: in the class body, ``list`` is this method from here on
    def list(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> list[VmRecord]:
        return sorted(self.vms.values(), key=lambda v: v.name)


class FakeCache:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish_ip(self, message: dict[str, Any]) -> None:
        self.published.append(message)

    # the rest of the Cache port: not used by the watcher

    def get_node(self, name: str) -> str | None:
        return None

    def set_node(self, name: str, node: str) -> None:
        pass

    def forget(self, name: str) -> None:
        pass

    def keys(self) -> list[str]:
        return []

    def subscribe_ip(self) -> Subscription | None:
        return None


def watcher(
    store: FakeStore, nodes: dict[str, FakeHypervisor], sources: Sequence[str] = ("lease", "arp")
) -> tuple[Watcher, FakeCache]:
    cache = FakeCache()

    def connect(node: Node) -> FakeHypervisor:
        return nodes[node.name]

    w = Watcher(
        INVENTORY,
        store,
        cache,
        connect,
        logging.getLogger("test-watch-ip"),
        sources=sources,
    )
    return w, cache


def lab() -> tuple[FakeStore, dict[str, FakeHypervisor]]:
    """kvm1: a (new), b (confirmed, unchanged), d (stopped); kvm2: c (expected .20, leased .20)."""
    store = FakeStore(
        [
            vm("a", MAC_A, state="creating"),
            vm("b", MAC_B, ip="10.20.1.11", ip_state="confirmed"),
            vm("c", MAC_C, node="kvm2", ip="10.20.2.20", ip_state="expected"),
            vm("d", "52:54:00:00:00:0d", state="stopped"),
        ]
    )
    nodes = {
        "kvm1": FakeHypervisor(
            Observation(
                leases=(lease(MAC_B, "10.20.1.11"), lease("52:54:00:00:00:0d", "10.20.1.13")),
                neighbors=(arp(MAC_A, "10.20.1.10"),),
            )
        ),
        "kvm2": FakeHypervisor(Observation(leases=(lease(MAC_C, "10.20.2.20"),))),
    }
    return store, nodes


def test_once_gives_rows_for_changed_addresses_only() -> None:
    store, nodes = lab()
    w, _ = watcher(store, nodes)
    rows, problems = w.once()
    assert problems == []
    assert sorted(rows, key=lambda r: r["name"]) == [
        {
            "name": "a",
            "node": "kvm1",
            "ip": "10.20.1.10",
            "previous": None,
            "source": "arp",
            "changed": True,
        },
        {
            "name": "c",
            "node": "kvm2",
            "ip": "10.20.2.20",
            "previous": "10.20.2.20",
            "source": "lease",
            "changed": True,
        },
    ]
    assert nodes["kvm1"].observed == ["vmnet1"] and nodes["kvm2"].observed == ["vmnet2"]
    assert ("d", "52:54:00:00:00:0d", "10.20.1.13", "lease") not in store.recorded  # stopped
    assert store.get("a").ip_state == "confirmed" and store.get("a").ip == "10.20.1.10"


def test_once_publishes_each_change() -> None:
    store, nodes = lab()
    w, cache = watcher(store, nodes)
    rows, _ = w.once()
    assert len(cache.published) == len(rows) == 2
    for row in rows:
        [message] = [m for m in cache.published if m["name"] == row["name"]]
        assert {k: message[k] for k in ("node", "ip", "previous", "source")} == {
            k: row[k] for k in ("node", "ip", "previous", "source")
        }
    assert sorted((m["name"], m["ip"], m["previous"], m["source"]) for m in cache.published) == [
        ("a", "10.20.1.10", None, "arp"),
        ("c", "10.20.2.20", "10.20.2.20", "lease"),
    ]
    for message in cache.published:
        assert set(message) == {"name", "node", "ip", "previous", "source", "at"}
        datetime.fromisoformat(message["at"])


def test_a_second_pass_finds_nothing_new() -> None:
    store, nodes = lab()
    w, cache = watcher(store, nodes)
    w.once()
    assert w.once() == ([], [])
    assert len(cache.published) == 2


def test_once_with_names_gives_a_row_for_every_address_found() -> None:
    store, nodes = lab()
    w, cache = watcher(store, nodes)
    rows, problems = w.once(["b", "a", "d"])
    assert problems == []
    by_name = {r["name"]: r for r in rows}
    assert by_name["b"] == {
        "name": "b",
        "node": "kvm1",
        "ip": "10.20.1.11",
        "previous": "10.20.1.11",
        "source": "lease",
        "changed": False,
    }
    assert by_name["a"]["changed"] is True and by_name["a"]["ip"] == "10.20.1.10"
    assert by_name["d"]["changed"] is True  # asked for by name: looked at whatever its state
    assert set(by_name) == {"a", "b", "d"}
    assert nodes["kvm2"].observed == []  # no VM asked for there
    assert sorted(m["name"] for m in cache.published) == ["a", "d"]


def test_once_with_an_unknown_name_is_not_found() -> None:
    store, nodes = lab()
    w, _ = watcher(store, nodes)
    with pytest.raises(NotFound):
        w.once(["nope"])


def test_an_unreachable_node_is_a_problem_and_the_others_still_report() -> None:
    store, nodes = lab()
    nodes["kvm1"].fail = NodeUnreachable("node kvm1 (10.0.0.1:22): timed out")
    w, cache = watcher(store, nodes)
    rows, problems = w.once()
    assert problems == ["node kvm1: node kvm1 (10.0.0.1:22): timed out"]
    assert [r["name"] for r in rows] == ["c"]
    assert [m["name"] for m in cache.published] == ["c"]
    assert store.get("a").ip_state is None  # nothing recorded for the unreachable node


def test_a_node_that_cannot_be_connected_is_a_problem() -> None:
    store, nodes = lab()
    w, _ = watcher(store, nodes)

    def connect(node: Node) -> FakeHypervisor:
        if node.name == "kvm2":
            raise NodeUnreachable("node kvm2: host key does not match")
        return nodes[node.name]

    w.connect = connect
    rows, problems = w.once()
    assert problems == ["node kvm2: node kvm2: host key does not match"]
    assert [r["name"] for r in rows] == ["a"]


def test_once_asks_the_agent_only_for_unconfirmed_vms_unless_named() -> None:
    store = FakeStore(
        [
            vm("a", MAC_A, state="creating"),
            vm("b", MAC_B, ip="10.20.1.11", ip_state="confirmed"),
        ]
    )
    hv = FakeHypervisor(agent={"a": [(MAC_A, "10.20.1.10")], "b": [(MAC_B, "10.20.1.12")]})
    w, _ = watcher(store, {"kvm1": hv, "kvm2": FakeHypervisor()}, ("lease", "agent"))
    rows, _ = w.once()
    assert hv.asked == ["a"]
    assert [(r["name"], r["source"]) for r in rows] == [("a", "agent")]

    hv.asked.clear()
    rows, _ = w.once(["a", "b"])
    assert sorted(hv.asked) == ["a", "b"]  # by name: the agent is asked at once
    assert {r["name"]: r["changed"] for r in rows} == {"a": False, "b": True}
    assert store.get("b").ip == "10.20.1.12"


def test_a_vm_deleted_meanwhile_gives_no_row() -> None:
    store, nodes = lab()
    w, cache = watcher(store, nodes)
    real = store.record_ip

    def gone_c(name: str, mac: str, ip: str, source: str) -> IpChange | None:
        return None if name == "c" else real(name, mac, ip, source)

    store.record_ip = gone_c  # type: ignore[method-assign]
    rows, problems = w.once()
    assert [r["name"] for r in rows] == ["a"] and problems == []
    assert [m["name"] for m in cache.published] == ["a"]


def test_a_reserved_address_that_dhcp_did_not_give_is_logged_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore([vm("c", MAC_C, node="kvm2", ip="10.20.2.20", ip_state="expected")])
    nodes = {
        "kvm1": FakeHypervisor(),
        "kvm2": FakeHypervisor(Observation(leases=(lease(MAC_C, "10.20.2.99"),))),
    }
    w, _ = watcher(store, nodes)
    with caplog.at_level(logging.INFO, logger="test-watch-ip"):
        rows, _ = w.once()
    assert rows[0]["previous"] == "10.20.2.20" and rows[0]["ip"] == "10.20.2.99"
    [record] = [r for r in caplog.records if r.getMessage() == "ip recorded"]
    assert record.levelno == logging.WARNING
    assert record.fields["vm"] == "c" and record.fields["previous_state"] == "expected"  # type: ignore[attr-defined]


def test_a_confirmed_reserved_address_is_logged_as_info(caplog: pytest.LogCaptureFixture) -> None:
    store, nodes = lab()
    w, _ = watcher(store, nodes)
    with caplog.at_level(logging.INFO, logger="test-watch-ip"):
        w.once()
    levels = {r.fields["vm"]: r.levelno for r in caplog.records if r.getMessage() == "ip recorded"}  # type: ignore[attr-defined]
    assert levels == {"a": logging.INFO, "c": logging.INFO}


# The service loop with a lease follower (Watcher.run), nodes and PostgreSQL faked


class FollowingHypervisor(FakeHypervisor):
    """A node whose lease follower hands over ``streams`` one after the other: each a list of
    lease lists (what the file held each time it changed) or an exception the stream ends with."""

    def __init__(self, streams: list[list[list[Lease]] | Exception], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.streams = streams
        self.followed: list[str] = []

    def follow_leases(
        self, network: str, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> None:
        self.followed.append(network)
        stream = self.streams.pop(0) if self.streams else []
        if isinstance(stream, Exception):
            raise stream
        for leases in stream:
            on_leases(leases)
        stop.wait()


FAST = Timing(fast_s=0.02, following_s=0.02, idle_s=0.02, refresh_s=0.02, heartbeat_s=60)


def run_until(w: Watcher, done: Any, seconds: float = 10) -> None:
    """Run the watcher until ``done()`` holds (a failure if it does not within ``seconds``)."""
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    try:
        while not done():
            assert time.monotonic() < deadline, "the watcher did not get there"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def service_watcher(
    store: FakeStore,
    nodes: dict[str, FakeHypervisor],
    sources: Sequence[str] = ("lease", "arp"),
    **options: Any,
) -> Watcher:
    return Watcher(
        INVENTORY,
        store,
        FakeCache(),
        lambda node: nodes[node.name],
        logging.getLogger("test-watch-ip"),
        sources=sources,
        timing=FAST,
        **options,
    )


def test_a_followed_lease_is_recorded_without_any_look_finding_it() -> None:
    store = FakeStore([vm("a", MAC_A, state="creating")])
    nodes: dict[str, FakeHypervisor] = {
        "kvm1": FollowingHypervisor([[[], [lease(MAC_A, "10.20.1.10")]]]),  # looks see nothing
        "kvm2": FollowingHypervisor([]),
    }
    w = service_watcher(store, nodes)
    run_until(w, lambda: store.vms["a"].ip_state == "confirmed")
    assert store.recorded == [("a", MAC_A, "10.20.1.10", "lease")]
    assert nodes["kvm1"].followed == ["vmnet1"]  # type: ignore[attr-defined]


def test_no_libvirt_network_to_follow_leaves_the_looks_to_find_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore([vm("a", MAC_A, state="creating")])
    missing = RemoteCommandFailed("kvm1", "watch-leases.sh vmnet", 3, "watch-leases: not found\n")
    nodes: dict[str, FakeHypervisor] = {
        "kvm1": FollowingHypervisor(
            [missing], seen=Observation(neighbors=(arp(MAC_A, "10.0.0.7"),))
        ),
        "kvm2": FollowingHypervisor([]),
    }
    w = service_watcher(store, nodes)
    with caplog.at_level(logging.INFO, logger="test-watch-ip"):
        run_until(w, lambda: store.vms["a"].ip_state == "confirmed")
    assert store.recorded == [("a", MAC_A, "10.0.0.7", "arp")]
    messages = [r.getMessage() for r in caplog.records]
    assert "no lease file to follow; looking at the node instead" in messages
    assert nodes["kvm1"].followed == ["vmnet1"]  # type: ignore[attr-defined]  # not tried again


def test_a_follower_that_fails_is_started_again_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore([vm("a", MAC_A, state="creating")])
    nodes: dict[str, FakeHypervisor] = {
        "kvm1": FollowingHypervisor(
            [NodeUnreachable("node kvm1: connection lost"), [[lease(MAC_A, "10.20.1.10")]]]
        ),
        "kvm2": FollowingHypervisor([]),
    }
    w = service_watcher(store, nodes)
    with caplog.at_level(logging.INFO, logger="test-watch-ip"):
        run_until(w, lambda: store.vms["a"].ip_state == "confirmed")  # after 1 s of backoff
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("not following leases") for m in messages), messages
    assert "following leases again" in messages
    assert store.recorded == [("a", MAC_A, "10.20.1.10", "lease")]


def plain_watcher(**kwargs: Any) -> Watcher:
    return Watcher(
        INVENTORY,
        FakeStore([]),
        FakeCache(),
        lambda node: FakeHypervisor(),
        logging.getLogger("test-watch-ip"),
        **kwargs,
    )


def test_the_lease_file_is_followed_by_default() -> None:
    assert plain_watcher().follow is True


@pytest.mark.parametrize(
    ("sources", "follow"), [(("arp", "lease"), True), (("agent",), True), (SOURCES, False)]
)
def test_no_follower_unless_a_lease_is_what_wins_first(
    sources: Sequence[str], follow: bool
) -> None:
    assert plain_watcher(sources=sources, follow=follow).follow is False


def test_the_vms_are_read_again_only_when_a_row_changed() -> None:
    """With nothing changing, a pass asks only for the table's version (at 100,000 VMs, reading
    them all every second took most of a core); a VM added meanwhile is read, then watched."""
    store = FakeStore([vm("a", MAC_A, ip="10.20.1.10", ip_state="confirmed")])
    nodes: dict[str, FakeHypervisor] = {
        "kvm1": FollowingHypervisor([[[lease(MAC_A, "10.20.1.10")]]]),
        "kvm2": FollowingHypervisor([[[lease(MAC_C, "10.20.2.20")]]]),
    }
    w = service_watcher(store, nodes)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # ~25 passes of FAST's refresh_s
        assert store.watch_reads == ["whole"]
        store.vms["c"] = vm("c", MAC_C, node="kvm2", state="creating")
        deadline = time.monotonic() + 10
        while store.vms["c"].ip_state != "confirmed":
            assert time.monotonic() < deadline, "c was not watched"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
    # c added; c's address recorded: only what changed was read
    assert store.watch_reads[0] == "whole"
    assert store.watch_reads[1:] in (["changes"], ["changes", "changes"])
    assert ("c", MAC_C, "10.20.2.20", "lease") in store.recorded


# -- what the node threads share: changes applied, looks matched by MAC --------------------------


def target(name: str, mac: str, node: str = "kvm1", **kw: Any) -> WatchTarget:
    return WatchTarget.of(vm(name, mac, node, **kw))


def test_shared_follows_changes_new_moved_confirmed_and_gone_vms() -> None:
    shared = Shared(["kvm1", "kvm2"])
    confirmed = {"ip": "10.20.2.20", "ip_state": "confirmed"}
    shared.apply(
        WatchChanges(1, True, [target("a", MAC_A), target("c", MAC_C, "kvm2", **confirmed)], [])
    )
    assert shared.wake["kvm1"].is_set() and not shared.wake["kvm2"].is_set()  # a waits
    assert [t.name for t in shared.waiting("kvm1")] == ["a"] and shared.waiting("kvm2") == []
    shared.wake["kvm1"].clear()

    # a moves to kvm2 (still waiting), c is deleted, b appears with an address already confirmed
    b = target("b", MAC_B, **{"ip": "10.20.1.11", "ip_state": "confirmed"})
    shared.apply(WatchChanges(2, False, [target("a", MAC_A, "kvm2"), b], ["c"]))
    assert (shared.watched("kvm1"), shared.watched("kvm2")) == (1, 1)
    assert [t.name for t in shared.waiting("kvm2")] == ["a"] and shared.waiting("kvm1") == []
    assert shared.wake["kvm2"].is_set() and not shared.wake["kvm1"].is_set()

    # what a node shows is matched by MAC, against that node's VMs only
    seen = Observation(leases=(lease(MAC_A.upper(), "10.20.2.30"), lease(MAC_B, "10.20.1.11")))
    assert [(f.name, f.ip) for f in shared.match("kvm2", seen, ("lease",))] == [("a", "10.20.2.30")]
    found = shared.match("kvm1", seen, ("lease",))
    assert [(f.name, f.ip) for f in found] == [("b", "10.20.1.11")]
    shared.report(found)  # b's address is the one confirmed: nothing new
    assert shared.results.empty()
    moved = Found("b", "kvm1", MAC_B, "10.20.1.99", "lease")
    shared.report([moved, Found("c", "kvm2", MAC_C, "10.20.2.20", "lease")])  # c is gone
    assert shared.results.get_nowait() == moved and shared.results.empty()

    # a's address recorded: no longer waiting; then a is stopped (gone from the watch)
    shared.confirm(Found("a", "kvm2", MAC_A, "10.20.2.30", "lease"))
    assert shared.waiting("kvm2") == [] and shared.summary()["pending"] == 0
    shared.apply(WatchChanges(3, False, [], ["a"]))
    assert shared.summary()["watched"] == 1
    # read whole again: whatever is not in it is forgotten
    shared.apply(WatchChanges(4, True, [target("d", MAC_C, "kvm2")], []))
    assert (shared.watched("kvm1"), shared.watched("kvm2")) == (0, 1)


def test_a_vm_the_follower_already_saw_is_reported_when_it_becomes_known() -> None:
    shared = Shared(["kvm1"])
    assert shared.follow("kvm1", [lease(MAC_A, "10.20.1.10")]) == []  # not known yet
    shared.apply(WatchChanges(1, False, [target("a", MAC_A)], []))
    got = shared.results.get_nowait()
    assert (got.name, got.ip, got.source) == ("a", "10.20.1.10", "lease")


class Shares:
    """The division as a test sets it: the nodes this watcher holds, from one round on."""

    def __init__(self, held: set[str]) -> None:
        self.held = frozenset(held)
        self.rounds = 0
        self.closed = False

    def balance(self, nodes: Sequence[str]) -> frozenset[str]:
        self.rounds += 1
        return self.held

    def close(self) -> None:
        self.closed = True


def test_a_sharing_watcher_watches_only_its_nodes_and_lets_go_of_one_given_back() -> None:
    store = FakeStore([vm("a", MAC_A, state="creating"), vm("c", MAC_C, node="kvm2")])
    nodes = {"kvm1": FakeHypervisor(), "kvm2": FakeHypervisor()}
    shares = Shares({"kvm2"})
    w = service_watcher(store, nodes, follow=False, shares=shares)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(nodes["kvm2"].observed) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert nodes["kvm1"].observed == []  # another watcher's node: never looked at
        shares.held = frozenset({"kvm1"})  # kvm2 given back, kvm1 taken
        while not nodes["kvm1"].observed or nodes["kvm2"].closes == 0:
            assert time.monotonic() < deadline, "kvm2 not let go of, or kvm1 not taken"
            time.sleep(0.01)
        looked = len(nodes["kvm2"].observed)
        time.sleep(0.3)  # several of FAST's passes
        assert len(nodes["kvm2"].observed) == looked  # no look at a node given back
    finally:
        stop.set()
        thread.join(timeout=10)
    assert shares.closed and not thread.is_alive()
