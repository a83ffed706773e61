"""How ready a new VM is: the steps `--wait-for` names, and what a Timeout says."""

from __future__ import annotations

from vmctl.core.errors import InvalidInput

STEPS = ("ip", "ssh", "cloud-init")  # --wait-for: each includes the ones before it


def check_step(step: str) -> str:
    if step not in STEPS:
        raise InvalidInput("wait-for", f"must be one of {', '.join(STEPS)}, not {step!r}")
    return step


def stuck(name: str, step: str, timeout: float, node: str, console_log: str, what: str) -> str:
    """The message of a Timeout: the step, what was missing, where to look."""
    return (
        f"{name}: stuck at step '{step}' after {timeout:.0f} s: {what}; "
        f"see the console log on node {node}: {console_log}"
    )
