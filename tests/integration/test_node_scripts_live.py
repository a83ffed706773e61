"""create-vm.sh and delete-vm.sh on a real node: safe to re-run (domains defined, not started)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_create_and_delete_are_idempotent(lab: dict) -> None:  # type: ignore[type-arg]
    import guests

    from vmctl import cloudinit, hostkeys
    from vmctl.domainxml import GuestSpec
    from vmctl.hypervisor import Disks

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
        hv.delete("idem-1", guests.STORAGE)
    hv.delete("idem-1", guests.STORAGE)  # again: already gone is success
    assert "idem-1" not in hv.domains()
    listing = hv.runner.run(["ls", "-A", guests.STORAGE]).stdout.split()
    assert "idem-1" not in listing


def test_a_domain_not_made_by_vmctl_is_left_alone(lab: dict) -> None:  # type: ignore[type-arg]
    import guests

    from vmctl.errors import RemoteCommandFailed

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
            hv.delete("foreign-1", guests.STORAGE)
        assert err.value.remote_exit_status == 4
        assert "not made by vmctl" in err.value.stderr
        assert "foreign-1" in hv.domains()
    finally:
        hv.runner.run(["virsh", "-q", "undefine", "foreign-1"])
        hv.runner.run(["rm", "-f", "/tmp/foreign-1.xml"])
