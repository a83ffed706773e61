"""Writing results: a table for people, JSON or YAML for scripts. Written once for every command.

A command hands over records (dicts with stable keys) and the columns a table shows; lists are
always arrays in JSON/YAML, times ISO-8601 UTC. Only data goes to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from vmctl.cli.options import Format

if TYPE_CHECKING:
    from vmctl.core.records import VmRecord

VM_COLUMNS = [
    ("name", "NAME"),
    ("node", "NODE"),
    ("state", "STATE"),
    ("ram_mb", "RAM(MiB)"),
    ("cpu", "CPU"),
    ("disk_gb", "DISK(GiB)"),
    ("ip", "IP"),
    ("image", "IMAGE"),
    ("created_at", "CREATED (UTC)"),
]
SHOW_COLUMNS = [
    *VM_COLUMNS,
    ("root_gb", "ROOT(GiB)"),
    ("mac", "MAC"),
    ("ip_state", "IP STATE"),
    ("group", "GROUP"),
    ("updated_at", "UPDATED (UTC)"),
]
NODE_COLUMNS = [
    ("name", "NODE"),
    ("vms", "VMS"),
    ("storage", "STORAGE"),
    ("cpu_used", "CPU USED"),
    ("cpu_free", "CPU FREE"),
    ("ram_mb_used", "RAM USED"),
    ("ram_mb_free", "RAM FREE"),
    ("disk_gb_used", "DISK USED"),
    ("disk_gb_free", "DISK FREE"),
]
WATCH_COLUMNS = [
    ("name", "NAME"),
    ("node", "NODE"),
    ("ip", "IP"),
    ("previous", "PREVIOUS"),
    ("source", "SOURCE"),
    ("changed", "CHANGED"),
]
EVENT_COLUMNS = [
    ("at", "AT (UTC)"),
    ("vm", "VM"),
    ("node", "NODE"),
    ("actor", "ACTOR"),
    ("action", "ACTION"),
    ("result", "RESULT"),
    ("cause", "CAUSE"),
]
TOKEN_COLUMNS = [
    ("id", "ID"),
    ("project", "PROJECT"),
    ("name", "NAME"),
    ("created_at", "CREATED (UTC)"),
    ("revoked_at", "REVOKED (UTC)"),
]


def event_row(event: dict[str, Any]) -> dict[str, Any]:
    """An event of the audit log: its cause (when it failed) lifted out of its detail."""
    detail = dict(event.get("detail") or {})
    return {
        "id": event["id"],
        "at": event["at"],
        "vm": event["vm"],
        "node": event["node"],
        "actor": event["actor"],
        "action": event["action"],
        "result": event["result"],
        "cause": detail.get("cause"),
        "detail": detail,
    }


def record(vm: VmRecord) -> dict[str, Any]:
    """A VM as scripts see it: stable keys, ISO-8601 UTC times."""
    return {
        "name": vm.name,
        "node": vm.node,
        "state": vm.state,
        "ram_mb": vm.ram_mb,
        "cpu": vm.cpu,
        "disk_gb": vm.disk_gb,
        "root_gb": vm.root_gb,
        "image": vm.image,
        "mac": vm.mac,
        "ip": vm.ip,
        "ip_state": vm.ip_state,
        "group": vm.group_name,
        "project": vm.project,
        "created_at": vm.created_at,
        "updated_at": vm.updated_at,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def emit(
    records: Sequence[dict[str, Any]] | dict[str, Any],
    columns: Sequence[tuple[str, str]],
    fmt: Format = Format.table,
    stream: IO[str] | None = None,
) -> None:
    """Write one record (a dict) or a list of them; columns are (key, heading) for tables."""
    out = stream or sys.stdout
    data = _plain(records)
    if fmt is Format.json:
        import json

        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt is Format.yaml:
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False))
    elif isinstance(records, dict):
        width = max(len(h) for _, h in columns)
        for key, heading in columns:
            out.write(f"{heading:<{width}}  {_cell(records.get(key))}\n")
    elif out.isatty():
        _rich_table(records, columns, out)
    else:
        out.write(plain_table(records, columns) or _rich_table(records, columns, out))


def stream_json(elements: Iterable[str], stream: IO[str] | None = None) -> None:
    """A JSON list written as its elements come (each one's text as `emit` would indent it):
    what `emit(..., Format.json)` writes for the same records, in constant memory."""
    out = stream or sys.stdout
    first = True
    for text in elements:
        out.write("[\n" if first else ",\n")
        out.write(text)
        first = False
    out.write("[]\n" if first else "\n]\n")


PIPE_WIDTH = 200  # the width of a table written to a pipe or a file


def plain_table(records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """The table rich writes to a pipe (no box, columns two spaces apart, cells padded), made
    without importing rich: scripts that read `vmctl list` pay nothing for it. Empty when the
    table needs rich (cells that are not plain ASCII, or wider than PIPE_WIDTH)."""
    rows = [[heading for _, heading in columns]]
    rows += [[_cell(record.get(key)) for key, _ in columns] for record in records]
    if not all(cell.isascii() and cell.isprintable() for row in rows for cell in row):
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    if sum(widths) + 2 * (len(widths) - 1) > PIPE_WIDTH:
        return ""
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + "\n" for row in rows
    )


def _rich_table(
    records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out: IO[str]
) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for _, heading in columns:
        table.add_column(heading)
    for record in records:  # cells as Text: "[Errno 111]" in a cause is not rich markup
        table.add_row(*(Text(_cell(record.get(key))) for key, _ in columns))
    Console(file=out, soft_wrap=True, width=None if out.isatty() else PIPE_WIDTH).print(table)
    return ""
