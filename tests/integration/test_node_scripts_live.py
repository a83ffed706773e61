"""create-vm.sh and delete-vm.sh on a real node: safe to re-run (domains defined, not started)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_create_and_delete_are_idempotent(lab: dict) -> None:  # type: ignore[type-arg]
    import guests

    from vmctl.core import cloudinit, hostkeys
    from vmctl.core.domainxml import GuestSpec
    from vmctl.core.nodecmd import Disks

    node = lab["nodes"][0]
    hv = guests.hypervisor(node, lab)
    mac = hostkeys.new_mac()
    spec = GuestSpec(
        name="idem-1",
        ram_mb=256,
        cpu=1,
        storage_dir=guests.STORAGE,
        network=node["guest_network"],
        mac=mac,
        image="debian-12",
        virt_type="qemu",
    )
    seed = cloudinit.render(
        cloudinit.Seed(
            hostname="idem-1",
            instance_id="idem-1",
            user="debian",
            ssh_authorized_keys=["ssh-ed25519 A"],
            mac=mac,
        )
    )
    disks = Disks(guests.BASE_IMAGE, 4, 1)
    try:
        hv.create(spec, disks, seed, start=False)
        files = hv.runner.run(["ls", f"{guests.STORAGE}/idem-1"]).stdout.split()
        assert files == ["data.qcow2", "root.qcow2", "seed.iso"]
        hv.create(spec, disks, seed, start=False)  # again: succeeds, changes nothing
        assert hv.domains().count("idem-1") == 1
        state = hv.runner.run(["virsh", "-q", "domstate", "idem-1"]).stdout.strip()
        assert state == "shut off"
    finally:
        hv.delete("idem-1")
    hv.delete("idem-1")  # again: already gone is success
    assert "idem-1" not in hv.domains()
    listing = hv.runner.run(["ls", "-A", guests.STORAGE]).stdout.split()
    assert "idem-1" not in listing


def test_a_domain_not_made_by_vmctl_is_left_alone(lab: dict) -> None:  # type: ignore[type-arg]
    import guests

    from vmctl.core.errors import RemoteCommandFailed

    node = lab["nodes"][1]
    hv = guests.hypervisor(node, lab)
    xml = (
        "<domain type='qemu'><name>foreign-1</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    hv.runner.put(xml.encode(), "/tmp/foreign-1.xml")
    hv.runner.run(["virsh", "-q", "define", "/tmp/foreign-1.xml"])
    try:
        with pytest.raises(RemoteCommandFailed) as err:
            hv.delete("foreign-1")
        assert err.value.remote_exit_status == 4
        assert "not made by vmctl" in err.value.stderr
        assert "foreign-1" in hv.domains()
    finally:
        hv.runner.run(["virsh", "-q", "undefine", "foreign-1"])
        hv.runner.run(["rm", "-f", "/tmp/foreign-1.xml"])


# --- DHCP reservations (--network/--mac/--ip) ------------------------------------------------
# vmctl/hypervisor.py does not pass these options yet, so these tests stage the files the way
# Hypervisor.create does and call the scripts directly. Addresses are in .10-.99 of node1's guest
# subnet, outside the DHCP range (.100-.254) the lab's own guests use.


def _spec_and_seed(name: str, mac: str, network: str) -> tuple[object, dict[str, str]]:
    import guests

    from vmctl.core import cloudinit
    from vmctl.core.domainxml import GuestSpec

    spec = GuestSpec(
        name=name,
        ram_mb=256,
        cpu=1,
        storage_dir=guests.STORAGE,
        network=network,
        mac=mac,
        image="debian-12",
        virt_type="qemu",
    )
    seed = cloudinit.render(
        cloudinit.Seed(
            hostname=name,
            instance_id=name,
            user="debian",
            ssh_authorized_keys=["ssh-ed25519 A"],
            mac=mac,
        )
    )
    return spec, seed


def _create(
    hv,
    spec,
    seed: dict[str, str],
    extra: list[str],
    domain_xml: str | None = None,
    start: bool = False,
):  # type: ignore[no-untyped-def]
    """Hypervisor.create's staging, then create-vm.sh with extra arguments; returns its Result."""
    import secrets

    import guests

    from vmctl.core.domainxml import render
    from vmctl.core.nodecmd import Disks, create_args, script_command

    staging = f"{spec.storage_dir}/.staging/{spec.name}.{secrets.token_hex(4)}"
    hv.runner.run(["mkdir", "-p", "-m", "0700", staging])
    try:
        hv.runner.put((domain_xml or render(spec)).encode(), f"{staging}/domain.xml")
        for fname, text in seed.items():
            hv.runner.put(text.encode(), f"{staging}/{fname}")
        argv = create_args(spec, Disks(guests.BASE_IMAGE, 4, 1), staging, start=start)
        return hv.runner.run(script_command("create-vm.sh", [*argv, *extra]))
    finally:
        hv.runner.run(["rm", "-rf", "--", staging], check=False)


def _delete(hv, name: str, extra: list[str]):  # type: ignore[no-untyped-def]
    import guests

    from vmctl.core.nodecmd import delete_args, script_command

    return hv.runner.run(
        script_command("delete-vm.sh", [*delete_args(name, guests.STORAGE), *extra])
    )


def _hosts(hv, network: str = "vmnet") -> dict[str, list[tuple[str, str, str]]]:  # type: ignore[no-untyped-def]
    """(mac, name, ip) of every DHCP <host> of the network, running state and persistent config."""
    import xml.etree.ElementTree as ET

    found = {}
    for scope, opts in (("live", []), ("config", ["--inactive"])):
        xml = hv.runner.run(["virsh", "-q", "net-dumpxml", network, *opts]).stdout
        found[scope] = [
            (h.get("mac", ""), h.get("name", ""), h.get("ip", ""))
            for h in ET.fromstring(xml).iter("host")
        ]
    return found


def _unreserve(hv, ip: str, network: str = "vmnet") -> None:  # type: ignore[no-untyped-def]
    """Remove what an earlier, interrupted run of these tests may have left for this address."""
    for scope, entries in _hosts(hv, network).items():
        for mac, _, addr in entries:
            if addr == ip:
                xml = f"<host mac='{mac}' ip='{addr}'/>"
                hv.runner.run(
                    [
                        "virsh",
                        "-q",
                        "net-update",
                        network,
                        "delete",
                        "ip-dhcp-host",
                        xml,
                        f"--{scope}",
                    ]
                )


def _leftovers(hv, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    import guests

    found = [f"domain {name}" for d in hv.domains() if d == name]
    listing = hv.runner.run(["ls", "-A", guests.STORAGE]).stdout.split()
    found += [f"dir {name}" for d in listing if d == name]
    staging = hv.runner.run(["ls", "-A", f"{guests.STORAGE}/.staging"], check=False).stdout
    found += [f"staging {s}" for s in staging.split() if s.startswith(f"{name}.")]
    return found


def test_reservation_is_made_once_replaces_stale_ones_and_goes_with_the_vm(lab: dict) -> None:  # type: ignore[type-arg]
    import guests

    from vmctl.core import hostkeys

    hv = guests.hypervisor(lab["nodes"][0], lab)
    name, ip, mac = "resv-1", "10.213.11.77", hostkeys.new_mac()
    net = ["--network", "vmnet", "--mac", mac, "--ip", ip]
    mine = (mac, name, ip)
    spec, seed = _spec_and_seed(name, mac, "vmnet")
    _delete(hv, name, [])
    _unreserve(hv, ip)
    # A stale reservation of the same address for another MAC (a VM deleted without its entry).
    stale_mac = hostkeys.new_mac()
    stale = f"<host mac='{stale_mac}' name='resv-gone' ip='{ip}'/>"
    hv.runner.run(
        [
            "virsh",
            "-q",
            "net-update",
            "vmnet",
            "add-last",
            "ip-dhcp-host",
            stale,
            "--live",
            "--config",
        ]
    )
    try:
        res = _create(hv, spec, seed, net)
        assert f"deleting stale DHCP reservation <host mac='{stale_mac}'" in res.stderr
        hosts = _hosts(hv)
        for scope in ("live", "config"):
            assert [h for h in hosts[scope] if ip in h or mac in h] == [mine], scope
            assert not [h for h in hosts[scope] if stale_mac in h], scope

        res = _create(hv, spec, seed, net)  # again: changes nothing
        assert "exists already" in res.stderr
        assert "reserved" not in res.stderr
        hosts = _hosts(hv)
        assert [h for h in hosts["live"] if ip in h or mac in h] == [mine]
        assert [h for h in hosts["config"] if ip in h or mac in h] == [mine]

        # Lost from the running network only (e.g. a partial update): a re-run repairs it there.
        xml = f"<host mac='{mac}' ip='{ip}'/>"
        hv.runner.run(
            ["virsh", "-q", "net-update", "vmnet", "delete", "ip-dhcp-host", xml, "--live"]
        )
        res = _create(hv, spec, seed, net)
        assert f"reserved {ip} for {mac} in vmnet (live)" in res.stderr
        hosts = _hosts(hv)
        assert [h for h in hosts["live"] if ip in h or mac in h] == [mine]
        assert [h for h in hosts["config"] if ip in h or mac in h] == [mine]
        assert hv.runner.run(["virsh", "-q", "domstate", name]).stdout.strip() == "shut off"
    finally:
        res = _delete(hv, name, ["--network", "vmnet", "--mac", mac])
    assert "deleted DHCP reservation" in res.stderr
    hosts = _hosts(hv)
    assert not [h for h in hosts["live"] + hosts["config"] if ip in h or mac in h]
    assert _leftovers(hv, name) == []
    res = _delete(hv, name, ["--network", "vmnet", "--mac", mac])  # again: nothing left is fine
    assert f"no DHCP reservation for {mac} in vmnet" in res.stderr
    res = _delete(hv, name, ["--network", "no-such-net", "--mac", mac])
    assert "no network no-such-net" in res.stderr


def test_a_failed_create_leaves_no_reservation_it_made(lab: dict) -> None:  # type: ignore[type-arg]
    import guests

    from vmctl.core import hostkeys
    from vmctl.core.errors import RemoteCommandFailed

    hv = guests.hypervisor(lab["nodes"][0], lab)
    name, ip, mac = "resv-2", "10.213.11.78", hostkeys.new_mac()
    spec, seed = _spec_and_seed(name, mac, "vmnet")
    _delete(hv, name, [])
    _unreserve(hv, ip)

    # No such network: refused before anything is made.
    with pytest.raises(RemoteCommandFailed) as err:
        _create(hv, spec, seed, ["--network", "no-such-net", "--mac", mac, "--ip", ip])
    assert err.value.remote_exit_status == 1
    assert "no network with matching name 'no-such-net'" in err.value.stderr
    assert _leftovers(hv, name) == []

    # A network that is defined but not running (never started: no bridge, no dnsmasq).
    off = "resv-off"
    if off not in hv.runner.run(["virsh", "-q", "net-list", "--all", "--name"]).stdout.split():
        xml = f"<network><name>{off}</name><bridge name='resvoff0'/></network>"
        hv.runner.put(xml.encode(), f"/tmp/{off}.xml")
        hv.runner.run(["virsh", "-q", "net-define", f"/tmp/{off}.xml"])
        hv.runner.run(["rm", "-f", f"/tmp/{off}.xml"])
    try:
        with pytest.raises(RemoteCommandFailed) as err:
            _create(hv, spec, seed, ["--network", off, "--mac", mac, "--ip", ip])
        assert err.value.remote_exit_status == 1
        assert f"network {off} on node1 is not active" in err.value.stderr
        assert _leftovers(hv, name) == []
    finally:
        hv.runner.run(["virsh", "-q", "net-undefine", off])

    # Failing after the reservation was made (libvirt refuses the domain XML): cleanup removes
    # the reservation this run added...
    net = ["--network", "vmnet", "--mac", mac, "--ip", ip]
    with pytest.raises(RemoteCommandFailed) as err:
        _create(hv, spec, seed, net, domain_xml="<domain>not a domain</domain>")
    assert err.value.remote_exit_status == 1
    assert "removing what this run made" in err.value.stderr
    assert _leftovers(hv, name) == []
    hosts = _hosts(hv)
    assert not [h for h in hosts["live"] + hosts["config"] if ip in h or mac in h]

    # ...but not one that was there before.
    mine = f"<host mac='{mac}' name='{name}' ip='{ip}'/>"
    hv.runner.run(
        [
            "virsh",
            "-q",
            "net-update",
            "vmnet",
            "add-last",
            "ip-dhcp-host",
            mine,
            "--live",
            "--config",
        ]
    )
    try:
        with pytest.raises(RemoteCommandFailed):
            _create(hv, spec, seed, net, domain_xml="<domain>not a domain</domain>")
        assert _leftovers(hv, name) == []
        hosts = _hosts(hv)
        assert [h for h in hosts["live"] if ip in h] == [(mac, name, ip)]
        assert [h for h in hosts["config"] if ip in h] == [(mac, name, ip)]
    finally:
        _unreserve(hv, ip)


def test_a_stale_lease_of_the_address_is_released(lab: dict) -> None:  # type: ignore[type-arg]
    """dnsmasq refuses a reserved address leased to another MAC; the scripts release such leases.
    The guests' side of DHCP is played by a real DHCP client on the node's guest bridge (each
    exchange ~0.1 s, where a boot to the lease takes 20-60 s here)."""
    import guests

    from vmctl.core import hostkeys

    node = lab["nodes"][0]
    hv = guests.hypervisor(node, lab)
    ip = "10.213.11.79"

    def leases() -> list[tuple[str, str]]:
        out = hv.runner.run(["virsh", "-q", "net-dhcp-leases", "vmnet"]).stdout
        return [(f[2], f[4].split("/")[0]) for f in map(str.split, out.splitlines()) if len(f) > 4]

    old_mac, new_mac = hostkeys.new_mac(), hostkeys.new_mac()
    for name in ("resv-l1", "resv-l2"):
        _delete(hv, name, [])
    _unreserve(hv, ip)
    try:
        # A VM holds a lease of the address, then goes away without its reservation or lease.
        spec, seed = _spec_and_seed("resv-l1", old_mac, "vmnet")
        _create(hv, spec, seed, ["--network", "vmnet", "--mac", old_mac, "--ip", ip])
        assert guests.dhcp_exchange(hv, node, old_mac) == ip
        _delete(hv, "resv-l1", [])
        assert (old_mac, ip) in leases()

        # The address is given to a new VM: the stale lease is released, and the VM gets it.
        spec, seed = _spec_and_seed("resv-l2", new_mac, "vmnet")
        res = _create(hv, spec, seed, ["--network", "vmnet", "--mac", new_mac, "--ip", ip])
        assert f"released the stale lease of {ip} to {old_mac} in vmnet" in res.stderr
        assert not [lease for lease in leases() if lease[1] == ip]
        assert guests.dhcp_exchange(hv, node, new_mac) == ip
        assert (new_mac, ip) in leases()

        res = _delete(hv, "resv-l2", ["--network", "vmnet", "--mac", new_mac])
        assert f"released the lease of {ip} to {new_mac} in vmnet" in res.stderr
        assert not [lease for lease in leases() if lease[1] == ip]
    finally:
        _delete(hv, "resv-l1", ["--network", "vmnet", "--mac", old_mac])
        _delete(hv, "resv-l2", ["--network", "vmnet", "--mac", new_mac])
    hosts = _hosts(hv)
    assert not [h for h in hosts["live"] + hosts["config"] if ip in h]


# --- the lease follower (watch-leases.sh) ----------------------------------------------------


def _followers(hv) -> int:  # type: ignore[no-untyped-def]
    """watch-leases.sh processes on the machine (the lab's nodes share its process table)."""
    out = hv.runner.run(["pgrep", "-c", "-f", "[w]atch-leases.sh"], check=False).stdout
    return int(out.strip() or 0)


def _rewrite(path, text: str) -> None:  # type: ignore[no-untyped-def]
    """Replace a lease status file the way libvirt's leaseshelper does (a new file renamed in)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.rename(path)


def test_the_lease_follower_shows_each_change_and_leaves_nothing_behind(lab: dict) -> None:  # type: ignore[type-arg]
    import json
    import threading
    import time

    import guests
    from labkit import config

    node = lab["nodes"][0]
    hv = guests.hypervisor(node, lab)
    status = config.nodes(len(lab["nodes"]))[0].dir / "lib" / "dnsmasq" / "vmbr0.status"
    existed = status.exists()  # libvirt writes it at the first lease
    original = status.read_text() if existed else "[]"
    fake = {"ip-address": "10.213.11.250", "mac-address": "52:54:00:fe:fe:fe", "expiry-time": 1}
    seen: list[list] = []  # type: ignore[type-arg]
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            hv.follow_leases(node["guest_network"], seen.append, stop)
        except BaseException as exc:
            errors.append(exc)

    def until(what, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not what():
            assert not errors, errors
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)

    before = _followers(hv)
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        until(lambda: len(seen) == 1)  # what the file holds at start
        assert {lease.mac for lease in seen[0]} == {
            e["mac-address"] for e in json.loads(original or "[]")
        }
        assert _followers(hv) == before + 1
        _rewrite(status, json.dumps([*json.loads(original or "[]"), fake], indent=2))
        until(lambda: any(lease.mac == fake["mac-address"] for lease in seen[-1]))
        assert [lease.ip for lease in seen[-1] if lease.mac == fake["mac-address"]] == [
            "10.213.11.250"
        ]
        _rewrite(status, original)  # (or "[]" where there was no file)
        until(lambda: all(lease.mac != fake["mac-address"] for lease in seen[-1]))
    finally:
        if not existed:
            status.unlink(missing_ok=True)
        elif status.read_text() != original:
            _rewrite(status, original)
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and not errors
    until(lambda: _followers(hv) == before, timeout=10)  # its input closed: it ended
    hv.runner.close()


def test_no_network_to_follow_is_exit_3(lab: dict) -> None:  # type: ignore[type-arg]
    import threading

    import guests

    from vmctl.core.errors import RemoteCommandFailed

    hv = guests.hypervisor(lab["nodes"][0], lab)
    with pytest.raises(RemoteCommandFailed) as err:
        hv.follow_leases("no-such-net", lambda leases: None, threading.Event())
    assert err.value.remote_exit_status == 3
    assert "libvirt network no-such-net not found" in err.value.stderr
    assert str(err.value).startswith("on node node1: `watch-leases.sh no-such-net` exited 3")
    hv.runner.close()
