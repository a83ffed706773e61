"""Shell completion of VM and node names (`vmctl --install-completion`), through the VM service:
whatever it answers, nothing when it cannot (a completion never prints an error)."""

from __future__ import annotations

from vmctl.cli.options import vm_service


def vm_names(incomplete: str) -> list[str]:
    try:
        return [
            vm.name for vm in vm_service(quiet=True).list_vms() if vm.name.startswith(incomplete)
        ]
    except Exception:
        return []


def node_names(incomplete: str) -> list[str]:
    try:
        nodes = vm_service(quiet=True).inventory.nodes
        return [node.name for node in nodes if node.name.startswith(incomplete)]
    except Exception:
        return []
