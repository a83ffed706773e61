"""Writing results: a table for people, JSON or YAML for scripts. Written once for every command.

A command hands over records (dicts with stable keys) and the columns a table shows; lists are
always arrays in JSON/YAML, times ISO-8601 UTC. Only data goes to stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import IO, Any

import yaml
from rich.console import Console
from rich.table import Table


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


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
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt is Format.yaml:
        out.write(yaml.safe_dump(data, sort_keys=False))
    elif isinstance(records, dict):
        width = max(len(h) for _, h in columns)
        for key, heading in columns:
            out.write(f"{heading:<{width}}  {_cell(records.get(key))}\n")
    else:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for _, heading in columns:
            table.add_column(heading)
        for record in records:
            table.add_row(*(_cell(record.get(key)) for key, _ in columns))
        Console(file=out, soft_wrap=True, width=200 if not out.isatty() else None).print(table)
