"""Shell completion (`vmctl --install-completion`): VM names come from PostgreSQL, node names from
the inventory, through the VM service; nothing (and no error) when they cannot be had."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def complete(env: dict[str, str], words: str) -> list[str]:
    """What bash completion offers for the last word of ``words`` (typer's protocol)."""
    parts = words.split(" ")
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "vmctl")],
        env={
            **env,
            "_VMCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.split()


def test_vm_names_complete_from_the_store(lab: dict, vmctl_env: dict[str, str]) -> None:  # type: ignore[type-arg]
    from vmctl.adapters.store import PgStore
    from vmctl.core.records import NewVm

    names = ["compl-a-1", "compl-a-2", "compl-b-1"]
    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        for i, name in enumerate(names):
            vm = NewVm(name, 256, 1, 1, 4, "debian-12", f"52:54:00:cc:00:0{i}")
            store.claim(vm, lambda _usage: lab["nodes"][0]["name"])
        try:
            assert complete(vmctl_env, "vmctl show compl-a") == ["compl-a-1", "compl-a-2"]
            assert complete(vmctl_env, "vmctl delete compl-a-1 compl-b") == ["compl-b-1"]
        finally:
            for name in names:
                store.delete(name)


def test_node_names_complete_from_the_inventory(lab: dict, vmctl_env: dict[str, str]) -> None:  # type: ignore[type-arg]
    nodes = sorted(node["name"] for node in lab["nodes"])
    assert complete(vmctl_env, "vmctl list --node ") == nodes


def test_nothing_is_offered_when_postgres_cannot_be_reached(vmctl_env: dict[str, str]) -> None:
    env = {**vmctl_env, "VMCTL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    assert complete(env, "vmctl show compl") == []
