"""vmctl watch-ip on the lab: the lab's own watcher (started by `lab/lab up`) records every new VM's
address with nobody waiting, and keeps going through a cut node link, a PostgreSQL restart and a
stopped Redis. `vmctl watch-ip --once` finds a VM whose DHCP client is stopped (ARP, agent)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import leftovers, run_vmctl

pytestmark = pytest.mark.e2e

SOURCES_SEEN = ("lease", "agent", "phone-home")


def _record(env: dict[str, str], name: str):  # type: ignore[no-untyped-def]
    from vmctl.adapters.store import PgStore

    with PgStore(env["VMCTL_DATABASE_URL"]) as store:
        return store.get(name)


def _wait_confirmed(env: dict[str, str], name: str, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vm = _record(env, name)
        if vm.ip_state == "confirmed":
            return vm
        time.sleep(0.5)
    raise AssertionError(f"{name}: no confirmed address after {timeout:.0f} s: {vm}")


def _ip_events(env: dict[str, str], name: str) -> list[dict]:  # type: ignore[type-arg]
    from vmctl.adapters.store import PgStore

    with PgStore(env["VMCTL_DATABASE_URL"]) as store:
        return [e for e in store.events(name) if e["action"] == "ip"]


def _watcher_log(lab: dict) -> str:  # type: ignore[type-arg]
    return Path(lab["watcher"]["log"]).read_text()


def _wait_for_log(lab: dict, start: int, text: str, timeout: float = 60) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while text not in _watcher_log(lab)[start:]:
        assert time.monotonic() < deadline, f"not in the log: {text}\n{_watcher_log(lab)[start:]}"
        time.sleep(1)


def _watcher_pid() -> int:
    import guests

    info = guests.status()["watcher"]
    assert info["up"], "the lab's watch-ip is not running"
    return int(info["pid"])


def _reservations(lab: dict, node_name: str) -> str:  # type: ignore[type-arg]
    import guests

    node = next(n for n in lab["nodes"] if n["name"] == node_name)
    hv = guests.hypervisor(node, lab)
    try:
        return hv.runner.run(["virsh", "-q", "net-dumpxml", node["guest_network"]]).stdout
    finally:
        hv.runner.close()


@pytest.fixture
def ip_messages(vmctl_env: dict[str, str]) -> Iterator[list[dict]]:  # type: ignore[type-arg]
    """What the watcher announces on Redis while the test runs."""
    import redis

    messages: list[dict] = []  # type: ignore[type-arg]
    client = redis.Redis.from_url(vmctl_env["VMCTL_REDIS_URL"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("vmctl:ip")
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                message = pubsub.get_message(timeout=0.5)
            except (redis.RedisError, OSError):
                return
            if message and message["type"] == "message":
                messages.append(json.loads(message["data"]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield messages
    stop.set()
    thread.join(timeout=5)
    pubsub.close()


def test_addresses_are_recorded_with_nobody_waiting_through_a_cut_node_and_a_postgres_restart(
    lab: dict,
    vmctl_env: dict[str, str],
    ip_messages: list[dict],  # type: ignore[type-arg]
) -> None:
    """Two VMs, one per node, created without --wait. Node1's link is cut while its VM boots;
    PostgreSQL is stopped while node2's VM gets its lease. Both addresses end up confirmed."""
    import guests
    from labkit import services
    from labkit.config import nodes as lab_nodes

    names = ["e2e-watch-1", "e2e-watch-2"]
    pid = _watcher_pid()
    log_start = len(_watcher_log(lab))
    veth1 = lab_nodes(len(lab["nodes"]))[0].veth
    made = []
    earlier = {name: len(_ip_events(vmctl_env, name)) for name in names}  # the log keeps old runs
    try:
        for name, node in zip(names, ["node1", "node2"], strict=True):
            proc = run_vmctl(vmctl_env, "create", name, "--node", node, "-o", "json")
            assert proc.returncode == 0, proc.stderr
            vm = json.loads(proc.stdout)
            made.append(vm)
            # The address is known before boot: reserved, recorded as expected.
            assert vm["ip_state"] == "expected"
            subnet = next(n["guest_subnet"] for n in lab["nodes"] if n["name"] == node)
            assert ipaddress.ip_address(vm["ip"]) in ipaddress.ip_network(subnet)
            assert 10 <= int(vm["ip"].rsplit(".", 1)[1]) <= 99  # the lab's reserved range
            xml = _reservations(lab, node)
            assert f"mac='{vm['mac']}'" in xml and f"ip='{vm['ip']}'" in xml
        time.sleep(2)  # the watcher has read both rows

        subprocess.run(["ip", "link", "set", veth1, "down"], check=True)
        services.stop_postgres()
        # node2's VM boots and gets its lease while PostgreSQL is down.
        node2 = next(n for n in lab["nodes"] if n["name"] == "node2")
        hv2 = guests.hypervisor(node2, lab)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            seen = hv2.observe(node2["guest_network"])
            if any(lease.mac == made[1]["mac"] for lease in seen.leases):
                break
            time.sleep(1)
        else:
            raise AssertionError("e2e-watch-2 got no DHCP lease")
        hv2.runner.close()
        time.sleep(3)  # the watcher learns it now and has to keep it
        services.ensure_postgres()
        subprocess.run(["ip", "link", "set", veth1, "up"], check=True)

        for vm in made:
            confirmed = _wait_confirmed(vmctl_env, vm["name"], 240)
            assert confirmed.ip == vm["ip"], "the DHCP gave the reserved address"
            events = _ip_events(vmctl_env, vm["name"])[earlier[vm["name"]] :]
            # One event. Once node1's link is back, whichever comes first records it: the
            # watcher's look (lease), its agent thread (the VM is past 30 s by then) or the
            # guest calling home.
            assert len(events) == 1 and events[0]["detail"]["source"] in SOURCES_SEEN
            assert events[0]["detail"]["previous_state"] == "expected"
        log = _watcher_log(lab)[log_start:]
        assert "node unreachable" in log and "node=node1" in log, log
        assert "PostgreSQL unavailable" in log and "PostgreSQL reachable again" in log, log
        # node1's lease follower lost its link too
        assert 'msg="not following leases' in log and "node=node1" in log, log
        # Both come back, each after its own backoff (up to 30 s): whichever is back first
        # may have recorded the address before the other has said so.
        _wait_for_log(lab, log_start, 'msg="node reachable again" node=node1')
        _wait_for_log(lab, log_start, 'msg="following leases again" node=node1')
        assert _watcher_pid() == pid, "the watcher did not survive"
        announced = {m["name"]: m["ip"] for m in ip_messages}
        assert announced == {vm["name"]: vm["ip"] for vm in made}
    finally:
        subprocess.run(["ip", "link", "set", veth1, "up"], check=False)
        services.ensure_postgres()
        if made:
            gone = run_vmctl(vmctl_env, "delete", "--yes", *[vm["name"] for vm in made])
            assert gone.returncode == 0, gone.stderr
    assert leftovers(lab, vmctl_env, names) == {}
    for vm in made:
        assert f"mac='{vm['mac']}'" not in _reservations(lab, vm["node"])


def test_wait_with_redis_stopped_then_a_stopped_dhcp_client_is_found_by_agent_and_arp(
    lab: dict,
    vmctl_env: dict[str, str],
) -> None:
    import guests
    from labkit import services

    name = "e2e-watch-3"
    key = vmctl_env["LAB_SSH_KEY"]
    log_start = len(_watcher_log(lab))
    services.stop_redis()
    try:
        # --wait (cloud-init by default) works from PostgreSQL alone.
        proc = run_vmctl(
            vmctl_env, "create", name, "--node", "node2", "--ssh-key", f"{key}.pub",
            "--wait", "--timeout", "300", "-o", "json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        vm = json.loads(proc.stdout)
        assert vm["ip_state"] == "confirmed"
        assert "waiting for cloud-init" in proc.stderr and "cloud-init finished" in proc.stderr
        assert "warning: Redis at 127.0.0.1" in proc.stderr
        services.ensure_redis()
        assert "Redis at 127.0.0.1" in _watcher_log(lab)[log_start:]

        # Inside: stop the DHCP client and move to a static address below the reserved range;
        # on the node, end the lease as its expiry would. Only ARP and the agent can tell now.
        node = next(n for n in lab["nodes"] if n["name"] == "node2")
        gateway = node["guest_gateway"]
        new_ip = gateway.rsplit(".", 1)[0] + ".9"
        change = (
            "sleep 1; systemctl stop systemd-networkd.socket systemd-networkd; "
            f"ip -4 addr flush dev eth0; ip addr add {new_ip}/24 dev eth0; "
            f"ip route replace default via {gateway}; "
            # some traffic from the new address (the image has no ping): the node learns it
            "for i in $(seq 120); do "
            f'timeout 1 bash -c "echo >/dev/tcp/{gateway}/9"; sleep 0.5; done'
        )
        moved = run_vmctl(
            vmctl_env, "ssh", name, "--",
            f"sudo nohup bash -c '{change}' >/dev/null 2>&1 &",
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        hv = guests.hypervisor(node, lab)
        hv.runner.run(["dhcp_release", "vmbr0", vm["ip"], vm["mac"]])
        deadline = time.monotonic() + 30
        while any(lease.mac == vm["mac"] for lease in hv.observe("vmnet").leases):
            assert time.monotonic() < deadline, "the lease was not released"
            time.sleep(1)
        hv.runner.close()

        def once(source: str) -> dict:  # type: ignore[type-arg]
            proc = run_vmctl(vmctl_env, "watch-ip", "--once", "--sources", source, name, "--json")
            assert proc.returncode == 0, proc.stderr
            rows = json.loads(proc.stdout)
            return rows[0] if rows else {}

        for source in ("agent", "arp"):
            deadline = time.monotonic() + 60
            row = once(source)
            while row.get("ip") != new_ip and time.monotonic() < deadline:
                time.sleep(2)
                row = once(source)
            assert (row.get("ip"), row.get("source")) == (new_ip, source), row
        recorded = _record(vmctl_env, name)
        assert (recorded.ip, recorded.ip_state) == (new_ip, "confirmed")
        changes = [e["detail"] for e in _ip_events(vmctl_env, name)]
        assert any(d["ip"] == new_ip and d["previous"] == vm["ip"] for d in changes), changes
    finally:
        services.ensure_redis()
        gone = run_vmctl(vmctl_env, "delete", "--yes", name)
    assert gone.returncode in (0, 3), gone.stderr  # 3: the create itself failed
    assert leftovers(lab, vmctl_env, [name]) == {}
