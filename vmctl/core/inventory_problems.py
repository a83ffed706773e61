"""What is wrong with an inventory, said the way an operator reads it: the file, the node (or
image) and the key path of each problem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_core import ErrorDetails

if TYPE_CHECKING:
    import yaml

CUSTOM = "vmctl_inventory"  # the pydantic error type of the checks written in inventory.py


def yaml_problem(error: yaml.YAMLError) -> str:
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"YAML syntax error at {where}: {error.problem}"
    return f"YAML syntax error: {error}"


def describe(detail: ErrorDetails, data: dict[str, Any]) -> str:
    """One validation error as `node 'kvm1': capacity.cpu: <what is wrong> (got <value>)`."""
    loc = list(detail["loc"])
    parts = []
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        parts.append(_node_label(data, loc[1]))
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "images":
        parts.append(f"image {loc[1]!r}")
        loc = [part for part in loc[2:] if part != "[key]"]
    message = _message(detail, loc)  # takes the key off `loc` for unknown and missing keys
    if loc:
        parts.append("".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip("."))
    return ": ".join([*parts, message])


def _message(detail: ErrorDetails, loc: list[int | str]) -> str:
    kind, value = detail["type"], detail["input"]
    if kind in ("extra_forbidden", "missing"):
        what = "unknown" if kind == "extra_forbidden" else "missing"
        return f"{what} key {loc.pop()!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping (got {_short(value)})"
    if kind != CUSTOM and (value is None or isinstance(value, str | int | float)):
        return f"{detail['msg']} (got {_short(value)})"
    return detail["msg"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _node_label(data: dict[str, Any], index: int) -> str:
    nodes = data.get("nodes")
    node = nodes[index] if isinstance(nodes, list) and index < len(nodes) else None
    name = node.get("name") if isinstance(node, dict) else None
    return f"node {name!r}" if isinstance(name, str) else f"nodes[{index}]"
