"""What the monitoring configuration asks of Prometheus, read without a Prometheus: the queries of
the Grafana dashboard, the expressions of the rule files, and the vector selectors in a PromQL
expression (docs/monitoring.md). Tests and docs scripts use it to send each query, or each
selector of an alert, to the lab's Prometheus, and the lab to shorten the alerts' `for:`.

Standard library and PyYAML only; the PromQL reading is a small lexer, enough for the selectors
(it does not check the syntax: promtool does that)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass(frozen=True)
class Panel:
    """A dashboard panel that queries Prometheus (rows are not panels here)."""

    id: int
    title: str
    description: str
    exprs: list[str]
    unit: str | None = None


@dataclass(frozen=True)
class Rule:
    """A recording or alerting rule; ``for_`` is its `for:` ('' when none)."""

    kind: Literal["alert", "record"]
    name: str
    expr: str
    for_: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    group: str = ""


def dashboard_panels(path: str | Path) -> list[Panel]:
    """Every panel of a Grafana dashboard JSON with its queries, those inside rows too."""
    dashboard = json.loads(Path(path).read_text())
    panels: list[Panel] = []

    def walk(items: Iterable[dict[str, Any]]) -> None:
        for item in items:
            if item.get("type") == "row":
                walk(item.get("panels", []))  # a collapsed row keeps its panels inside
                continue
            panels.append(
                Panel(
                    id=int(item.get("id", 0)),
                    title=str(item.get("title", "")),
                    description=str(item.get("description", "")),
                    exprs=[str(t["expr"]) for t in item.get("targets", []) if t.get("expr")],
                    unit=item.get("fieldConfig", {}).get("defaults", {}).get("unit"),
                )
            )

    walk(dashboard.get("panels", []))
    return panels


def rule_expressions(paths: Iterable[str | Path]) -> list[Rule]:
    """Every rule of the given Prometheus rule files, in file order."""
    rules: list[Rule] = []
    for path in paths:
        document = yaml.safe_load(Path(path).read_text()) or {}
        for group in document.get("groups", []):
            for rule in group.get("rules", []):
                kind: Literal["alert", "record"] = "alert" if "alert" in rule else "record"
                rules.append(
                    Rule(
                        kind=kind,
                        name=str(rule[kind]),
                        expr=str(rule["expr"]),
                        for_=str(rule.get("for", "")),
                        labels={str(k): str(v) for k, v in (rule.get("labels") or {}).items()},
                        annotations={
                            str(k): str(v) for k, v in (rule.get("annotations") or {}).items()
                        },
                        group=str(group.get("name", "")),
                    )
                )
    return rules


# -- Grafana variables ----------------------------------------------------------------------

# What Grafana puts in place of its built-in interval variables, near enough for a query.
_GRAFANA_DURATIONS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus can take it: interval variables become durations
    (`$__rate_interval`: 1m), every other variable (`$node`, all values) the regex `.*`."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return _GRAFANA_DURATIONS.get(name, ".*")

    return _GRAFANA_VARIABLE.sub(value, expr)


# -- PromQL selectors -----------------------------------------------------------------------

# Words that are never a metric name when they stand alone in an expression.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
# Aggregations may put their `by (...)`/`without (...)` before the parenthesis.
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
# Followed by a list of label names in parentheses, which are not selectors either.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9][0-9a-zA-Z_.]*(?:[eE][+-]?[0-9]+)?")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")


def _skip_string(text: str, i: int) -> int:
    """The index after the string literal that starts at ``text[i]``."""
    quote = text[i]
    i += 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" and quote != "`" else 1
    return i + 1


def _close(text: str, i: int, opening: str, closing: str) -> int:
    """The index after the bracket that closes the one at ``text[i]`` (strings skipped)."""
    depth = 0
    while i < len(text):
        char = text[i]
        if char in "\"'`":
            i = _skip_string(text, i)
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {opening!r} in {text!r}")


def _next_char(text: str, i: int) -> tuple[str, int]:
    """The first character at or after ``i`` that is not blank, and its index ('' at the end)."""
    while i < len(text) and text[i].isspace():
        i += 1
    return (text[i], i) if i < len(text) else ("", i)


def _next_word(text: str, i: int) -> str:
    """The identifier at ``text[i]``, lowercased ('' when there is none)."""
    match = _IDENT.match(text, i)
    return match.group().lower() if match else ""


def selectors(expr: str) -> list[str]:
    """Every vector selector of a PromQL expression, `name{matchers}` as written (a range
    selector without its range), in order. Function and aggregation names, label lists
    (`by (...)`, `on (...)`, ...), strings, durations, numbers, keywords and Grafana variables
    are not selectors. Recording rule names (`level:metric:ops`) are."""
    found: list[str] = []
    i = 0
    while i < len(expr):
        char = expr[i]
        if char.isspace():
            i += 1
        elif char == "#":  # a comment, to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif char in "\"'`":
            i = _skip_string(expr, i)
        elif char == "[":  # a range, a subquery's range and step, or [[grafana_var]]
            i = _close(expr, i, "[", "]")
        elif char == "$":
            match = _VARIABLE.match(expr, i)
            i = match.end() if match else i + 1
        elif char == "{":  # a selector without a metric name
            end = _close(expr, i, "{", "}")
            found.append(expr[i:end])
            i = end
        elif char.isdigit() or (char == "." and expr[i + 1 : i + 2].isdigit()):
            match = _NUMBER.match(expr, i)
            i = match.end() if match else i + 1
        elif match := _IDENT.match(expr, i):
            word, i = match.group(), match.end()
            following, j = _next_char(expr, i)
            keyword = word.lower()  # PromQL's keywords and aggregations ignore case
            if keyword in _LABEL_LISTS:
                if following == "(":
                    i = _close(expr, j, "(", ")")
            elif keyword in _KEYWORDS:
                pass
            elif keyword in _AGGREGATIONS and _next_word(expr, j) in ("by", "without"):
                pass  # `sum by (node) (...)`: the label list is read next
            elif following == "(":
                pass  # a function call: its arguments are read next
            elif following == "{":
                end = _close(expr, j, "{", "}")
                found.append(word + expr[j:end])
                i = end
            else:
                found.append(word)
        else:
            i += 1
    return found


# -- The lab's copy of the rules ------------------------------------------------------------

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_FOR_LINE = re.compile(r"^(?P<head>\s*(?:-\s+)?for:\s*)(?P<value>[\"']?[0-9a-z]+[\"']?)", re.M)


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration (`1h30m`, `90s`, `500ms`); ValueError otherwise."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + unit for n, unit in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in parts)


def lab_rules(text: str, cap: str = "5s") -> str:
    """A rule file's text with every `for:` at most ``cap``, for the lab, whose alerts must fire
    within a test; everything else, comments included, stays as it is."""
    limit = duration_seconds(cap)

    def capped(match: re.Match[str]) -> str:
        value = match.group("value").strip("\"'")
        if duration_seconds(value) <= limit:
            return match.group(0)
        return match.group("head") + cap

    return _FOR_LINE.sub(capped, text)
