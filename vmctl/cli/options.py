"""What every command shares: the output options of read commands (written once), settings,
the services, and the columns of tables."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from vmctl.services.vms import VmService
    from vmctl.wiring.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

STATE: dict[str, Any] = {"debug": False, "flags": {}}


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def output_options(command: F) -> F:
    """Give a read command `-o/--output table|json|yaml` and `--json`; it receives the chosen
    format as its ``fmt`` parameter."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for name, p in signature.parameters.items() if name != "fmt"]
    params += [
        inspect.Parameter(
            "output",
            inspect.Parameter.KEYWORD_ONLY,
            default=Format.table,
            annotation=Annotated[
                Format, typer.Option("--output", "-o", help="table, json or yaml.")
            ],
        ),
        inspect.Parameter(
            "json_flag",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--json", help="Same as -o json.")],
        ),
    ]

    @functools.wraps(command)
    def wrapper(
        *args: Any, output: Format = Format.table, json_flag: bool = False, **kw: Any
    ) -> Any:
        return command(*args, fmt=Format.json if json_flag else output, **kw)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    from vmctl.wiring.settings import load

    return load(STATE["flags"])


def vm_service(quiet: bool = False, lock_timeout: float | None = None) -> VmService:
    from vmctl import wiring

    return wiring.vm_service(settings(), quiet=quiet, lock_timeout=lock_timeout)


LockTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--lock-timeout",
        help="Seconds to wait while another operation holds the VM (default 30) "
        "[VMCTL_LOCK_TIMEOUT]; then fail with exit 8.",
    ),
]


QueueOpt = Annotated[
    bool | None,
    typer.Option(
        "--queue/--no-queue",
        help="Queue a job for `vmctl worker` and wait for it, rather than doing the work here "
        "(default: no) [VMCTL_QUEUE].",
    ),
]


def queued(flag: bool | None) -> bool:
    return settings().queue if flag is None else flag


def progress(message: str) -> None:
    from vmctl import wiring

    wiring.progress(message)
