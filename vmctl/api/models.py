"""The prototype's JSON shapes, and how a VM record looks in them."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt

from vmctl.core.records import VmRecord

UNASSIGNED = "unassigned"


class VmIn(BaseModel):
    """The prototype's create body: its sample verbatim, or its lowercase keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    Name: str = Field(validation_alias=AliasChoices("Name", "name"), examples=["test-1"])
    RAM: str | StrictInt | None = Field(
        None, validation_alias=AliasChoices("RAM", "ram"), description="MiB", examples=["1024"]
    )
    CPU: str | StrictInt | None = Field(
        None, validation_alias=AliasChoices("CPU", "cpu"), examples=["2"]
    )
    Disk: str | StrictInt | None = Field(
        None, validation_alias=AliasChoices("Disk", "disk"), description="GiB", examples=["10"]
    )
    Image: str | None = Field(None, validation_alias=AliasChoices("Image", "image"))
    SSHKeys: list[str] | None = Field(
        None,
        validation_alias=AliasChoices("SSHKeys", "ssh_keys"),
        description="OpenSSH public keys for the guest (default: the server's)",
    )


class VmOut(BaseModel):
    """A VM as the prototype listed it: every value a string."""

    Name: str
    RAM: str = Field(description="MiB")
    CPU: str
    Disk: str = Field(description="GiB")
    IP: str = Field(description='the address, or "unassigned" until it is known')
    CreatedAt: str = Field(
        description="ISO-8601 UTC with milliseconds", examples=["2021-06-29T19:33:30.839Z"]
    )


class VmDetail(VmOut):
    Node: str
    State: str
    IPState: str | None = Field(description="expected (reserved, not yet seen) or confirmed")


class IpIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(validation_alias=AliasChoices("name", "Name"), examples=["test-1"])


class Error(BaseModel):
    error: str
    field: str | None = None


def created_at(vm: VmRecord) -> str:
    at = vm.created_at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def vm_out(vm: VmRecord) -> dict[str, str]:
    return {
        "Name": vm.name,
        "RAM": str(vm.ram_mb),
        "CPU": str(vm.cpu),
        "Disk": str(vm.disk_gb),
        "IP": vm.ip if vm.ip and vm.ip_state == "confirmed" else UNASSIGNED,
        "CreatedAt": created_at(vm),
    }


def vm_detail(vm: VmRecord) -> dict[str, Any]:
    return {**vm_out(vm), "Node": vm.node, "State": vm.state, "IPState": vm.ip_state}
