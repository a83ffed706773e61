"""Structured logs for long-running vmctl processes (watch-ip, serve): one line per event on
stderr, as logfmt (``ts=... level=info msg="ip recorded" vm=web-1 ...``) or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from vmctl.core.errors import InvalidInput
from vmctl.core.logfields import FIELDS as FIELDS
from vmctl.core.logfields import fields as fields


def _quote(value: object) -> str:
    text = "" if value is None else str(value)
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    return json.dumps(text)


def _parts(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "msg": record.getMessage(),
        **getattr(record, FIELDS, {}),
    }
    if record.exc_info:
        parts["error"] = formatter.formatException(record.exc_info).splitlines()[-1]
    return parts


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_quote(value)}" for key, value in _parts(record, self).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_parts(record, self), default=str)


FORMATS = ("logfmt", "json")


# Libraries whose warnings repeat what vmctl says itself (psycopg_pool: each failed reconnect while
# PostgreSQL is down, which every request then reports as StoreUnavailable).
QUIET_LIBRARIES = ("psycopg.pool",)


def setup(name: str, fmt: str = "logfmt", level: int = logging.INFO) -> logging.Logger:
    """The logger of a long-running command, writing to stderr in ``fmt`` (logfmt or json);
    InvalidInput (--log-format) for another format."""
    if fmt not in FORMATS:
        raise InvalidInput("log-format", f"must be logfmt or json, not {fmt!r}")
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    for library in QUIET_LIBRARIES:  # their errors in our format; each outage is ours to tell
        quiet = logging.getLogger(library)
        quiet.handlers[:] = [handler]
        quiet.setLevel(logging.ERROR)
        quiet.propagate = False
    threading.excepthook = lambda args: _thread_died(logger, args)
    return logger


def _thread_died(logger: logging.Logger, args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread vmctl did not start itself (e.g. a library's timer),
    as one log line instead of a bare traceback on stderr."""
    if args.exc_type is SystemExit:
        return
    logger.error(
        "a background thread ended with an error",
        extra=fields(thread=args.thread.name if args.thread else None),
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
