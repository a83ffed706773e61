"""`vmctl ansible-inventory`: Ansible's dynamic inventory from inventory.yaml (its nodes and its
`managers:`; docs/inventory.md). `deploy/ansible/inventory/vmctl.sh` runs it for Ansible."""

from __future__ import annotations

from typing import Annotated

import typer

from vmctl.cli.options import settings
from vmctl.core.errors import ConfigError

app = typer.Typer()


@app.command("ansible-inventory")
def ansible_inventory(
    list_: Annotated[
        bool, typer.Option("--list", help="Print every group and host with its variables.")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option("--host", metavar="NAME", help="Print one host's variables ({} if unknown)."),
    ] = None,
) -> None:
    """Print Ansible's dynamic inventory (JSON) from the inventory: groups vmctl_nodes,
    vmctl_dir_nodes, vmctl_rbd_nodes and vmctl_managers, and each host's ansible_host,
    ansible_port, ansible_user with vmctl_node or vmctl_manager. Without an option: --list.
    Use it as `ansible-playbook -i deploy/ansible/inventory/vmctl.sh`."""
    import json

    from vmctl import wiring
    from vmctl.core import ansible

    if list_ and host is not None:
        raise ConfigError("give --list or --host NAME, not both")
    current = settings()
    inventory = wiring.load_inventory(current)
    if host is not None:
        data = ansible.host(inventory, host)
    else:
        data = ansible.dynamic_inventory(inventory, source=str(current.inventory.absolute()))
    typer.echo(json.dumps(data, indent=2))
