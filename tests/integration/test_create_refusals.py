"""Bad input to `vmctl create` is refused before anything is touched (exit 2, field named)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import leftovers, run_vmctl

pytestmark = pytest.mark.integration

CASES = [
    (["a;reboot"], "name"),
    (["$(id)"], "name"),
    (["../x"], "name"),
    (["--", "-rf"], "name"),
    ([""], "name"),
    (["x" * 64], "name"),
    (["wéb"], "name"),
    (["Web"], "name"),
    (["bad-1", "--ram", "0"], "ram"),
    (["bad-1", "--ram=-1"], "ram"),
    (["bad-1", "--ram", "abc"], "ram"),
    (["bad-1", "--ram", str(10**9)], "ram"),
    (["bad-1", "--cpu", "0"], "cpu"),
    (["bad-1", "--cpu", "1000"], "cpu"),
    (["bad-1", "--disk", "0"], "disk"),
    (["bad-1", "--disk=-5"], "disk"),
    (["bad-1", "--disk", "abc"], "disk"),
    (["bad-1", "--disk", str(10**6)], "disk"),
    (["bad-1", "--image", "nope"], "image"),
    (["bad-1", "--node", "nope"], "node"),
    (["bad-1", "--count", "0"], "count"),
    (["bad-1", "--group", "A;B"], "group"),
    # every option is checked before anything is touched (a VM was made, then "stuck after -5 s")
    (["bad-1", "--wait", "--timeout", "-5"], "timeout"),
    (["bad-1", "--wait-for", "ip", "--timeout=0"], "timeout"),
    (["bad-1", "--wait-for", "dhcp"], "wait-for"),
    (["bad-1", "--user-data", "/nonexistent/user-data"], "user-data"),
    (["bad-1", "--ssh-key", "/nonexistent/key.pub"], "ssh-key"),
    (["bad-1", "--ssh-key", "/etc/hostname"], "ssh-key"),
]
NAMES = ["a;reboot", "$(id)", "../x", "-rf", "x" * 64, "wéb", "Web", "bad-1"]


@pytest.mark.parametrize(("args", "field"), CASES, ids=[f"{f}={a[-1]}"[:40] for a, f in CASES])
def test_bad_input_is_refused_and_leaves_nothing(
    lab: dict,
    vmctl_env: dict[str, str],
    args: list[str],
    field: str,  # type: ignore[type-arg]
) -> None:
    proc = run_vmctl(vmctl_env, "create", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"vmctl: error: {field}: "), proc.stderr
    assert proc.stdout == ""
    assert leftovers(lab, vmctl_env, NAMES) == {}


def test_a_name_that_exists_is_refused(lab: dict, vmctl_env: dict[str, str]) -> None:  # type: ignore[type-arg]
    from vmctl.adapters.store import PgStore
    from vmctl.core.records import NewVm

    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        store.claim(
            NewVm(
                name="taken-1",
                ram_mb=256,
                cpu=1,
                disk_gb=1,
                root_gb=4,
                image="debian-12",
                mac="52:54:00:00:00:99",
                group_name=None,
                project=None,
            ),
            lambda usages: "node2",
        )
        try:
            proc = run_vmctl(vmctl_env, "create", "taken-1")
            assert proc.returncode == 2, proc.stderr
            assert "name: a VM named taken-1 exists already (on node node2)" in proc.stderr
            assert [vm.node for vm in store.list() if vm.name == "taken-1"] == ["node2"]
            assert leftovers(lab, vmctl_env, ["taken-1"]) == {"rows": ["taken-1"]}
        finally:
            store.delete("taken-1")


def test_show_of_a_missing_vm_is_not_found(vmctl_env: dict[str, str]) -> None:
    proc = run_vmctl(vmctl_env, "show", "no-such-vm", "-o", "json")
    assert proc.returncode == 3
    assert proc.stderr == "vmctl: error: no VM named no-such-vm\n"


def test_list_json_is_an_array(vmctl_env: dict[str, str]) -> None:
    proc = run_vmctl(vmctl_env, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)
