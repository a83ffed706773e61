"""Fields for structured log lines: what a log call puts in ``extra=`` so the formatter of
``vmctl.wiring.logs`` writes them as ``key=value`` (logfmt) or JSON members."""

from __future__ import annotations

FIELDS = "fields"  # logger.info("...", extra={"fields": {...}})


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``extra=`` for a log call: ``log.info("ip recorded", extra=fields(vm=name, ip=ip))``."""
    return {FIELDS: values}
