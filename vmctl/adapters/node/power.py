"""Power and size of a node's domains: state, start, shutdown, destroy, reboot, resize."""

from __future__ import annotations

from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.nodecmd import VIRSH, set_resources_command
from vmctl.services.ports import Runner
from vmctl.services.ports.storage import Storage

_NO_DOMAIN = ("failed to get domain", "Domain not found")


class PowerMixin:
    runner: Runner
    storage: Storage

    def state(self, name: str) -> str | None:
        result = self.runner.run([*VIRSH, "domstate", name], check=False)
        if result.exit_status == 0:
            return result.stdout.strip()
        if any(text in result.stderr for text in _NO_DOMAIN):
            return None
        raise RemoteCommandFailed(
            self.runner.node, f"virsh domstate {name}", result.exit_status, result.stderr
        )

    def start(self, name: str) -> None:
        self.runner.run([*VIRSH, "start", name])

    def shutdown(self, name: str) -> None:
        self.runner.run([*VIRSH, "shutdown", name, "--mode", "acpi,agent"])

    def destroy(self, name: str) -> None:
        self.runner.run([*VIRSH, "destroy", name])

    def reboot(self, name: str, force: bool = False) -> None:
        if force:
            self.runner.run([*VIRSH, "reset", name])
        else:
            self.runner.run([*VIRSH, "reboot", name, "--mode", "acpi,agent"])

    def set_resources(self, name: str, cpu: int, ram_mb: int) -> None:
        self.runner.run(set_resources_command(name, cpu, ram_mb))

    def grow_disk(self, name: str, data_gb: int) -> None:
        self.storage.grow(self.runner, name, data_gb)
