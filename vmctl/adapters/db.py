"""PostgreSQL connections and versioned schema migrations.

Migrations are the numbered ``.sql`` files in ``vmctl/adapters/migrations/``, applied by
yoyo-migrations (each in its own transaction, recorded in yoyo's ``_yoyo_migration`` table).
``upgrade`` holds a PostgreSQL advisory lock while it works, so any number of processes may run it
at once: the first applies what is pending, the others wait and then find nothing to do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from vmctl.core.errors import ConfigError, StoreUnavailable, Timeout

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Advisory lock keys (database-wide): "vmctl" in ASCII, then a small number per purpose.
MIGRATION_LOCK_KEY = 0x766D63746C0001
CLAIM_LOCK_KEY = 0x766D63746C0002

CONNECT_TIMEOUT_S = 5


def _params(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        # The message of libpq's parser may quote the URL, password included: leave it out.
        raise ConfigError("the PostgreSQL URL is not valid") from e


def describe(url: str) -> str:
    """``HOST:PORT`` of a PostgreSQL URL or conninfo string, for messages (never the password);
    every host of a multi-host one (``host=a,b port=5432,5433``), comma-separated, as libpq
    pairs them: one port for all hosts, or one port each."""
    params = _params(url)
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) != len(hosts):
        ports = [ports[0]] * len(hosts)
    return ",".join(
        f"{_bracketed(host or 'localhost')}:{port or 5432}"
        for host, port in zip(hosts, ports, strict=True)
    )


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address


def hosts(url: str) -> int:
    """How many hosts the URL names (libpq tries them in order)."""
    params = _params(url)
    return len(str(params.get("host") or params.get("hostaddr") or "localhost").split(","))


def unreachable(url: str, error: Exception) -> StoreUnavailable:
    """StoreUnavailable for ``error``: libpq's first line, less the "connection to server at
    ... failed:" that repeats the address, and never the password. With several hosts, each
    host's reason ("127.0.0.1:5432: Connection refused; 127.0.0.1:5433: session is read-only")."""
    password = _params(url).get("password")
    text = str(error)
    attempts = _ATTEMPT.findall(text) if "Multiple connection attempts failed" in text else []
    if attempts:
        detail = "; ".join(f"{_bracketed(h)}:{p}: {_reason(reason)}" for h, p, reason in attempts)
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = _reason(lines[0]) if lines else ""
    detail = detail or type(error).__name__
    if password:
        detail = detail.replace(str(password), "***")
    return StoreUnavailable(f"PostgreSQL at {describe(url)} is unreachable: {detail}")


# psycopg's account of each host it tried: "- host: 'H', port: 'P', hostaddr: ...: REASON"
_ATTEMPT = re.compile(r"^- host: '([^']*)', port: '([^']*)'[^:]*(?:: '[^']*')?: (.*)$", re.M)


def _reason(line: str) -> str:
    line = re.sub(r"^connection failed: ", "", line.strip())
    line = re.sub(r"^connection to server (at|on) .*?, port \d+ failed: ", "", line)
    line = re.sub(r"^FATAL:\s+", "", line)
    return " ".join(line.split())


def check_url(url: str) -> None:
    """ConfigError if ``url`` is not a PostgreSQL URL or conninfo string (never quoting it)."""
    _params(url)


def connection_kwargs() -> dict[str, Any]:
    """How vmctl's connections are made: autocommit, rows as dicts, a bounded wait to connect."""
    return {"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_S}


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    """An autocommit connection returning rows as dicts; StoreUnavailable if it cannot be had."""
    check_url(url)  # a malformed URL is a ConfigError, not an unreachable server
    try:
        return psycopg.connect(url, **connection_kwargs())
    except psycopg.OperationalError as e:
        raise unreachable(url, e) from e


def _yoyo_uri(url: str) -> str:
    # Every connection parameter goes in the query string, which yoyo hands to psycopg.connect
    # unchanged: this keeps URLs, key=value strings, socket directories and odd passwords intact.
    params = {k: str(v) for k, v in _params(url).items()}
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    return "postgresql+psycopg://?" + urlencode(params)


def upgrade(url: str, lock_timeout_s: float = 120.0) -> list[str]:
    """Apply every pending migration, in order; return the ids applied (empty if none was).

    Idempotent, and safe to run from several processes at once (see the module's doc).
    Raises StoreUnavailable if PostgreSQL cannot be reached, Timeout if another process held
    the migration lock for longer than ``lock_timeout_s``.
    """
    from yoyo import read_migrations  # only `vmctl db upgrade` needs yoyo

    migrations = read_migrations(str(MIGRATIONS_DIR))
    try:
        with _yoyo_backend(url) as backend:
            conn = backend.connection
            _advisory_lock(conn, url, lock_timeout_s)
            try:
                # Whoever takes yoyo's row lock holds the advisory lock first, so a row left in
                # yoyo_lock now is stale (its process died): clear it rather than wait on it.
                backend.break_lock()
                with backend.lock():
                    todo = backend.to_apply(migrations)
                    backend.apply_migrations(todo)
                return [m.id for m in todo]
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.OperationalError as e:
        raise unreachable(url, e) from e


def _advisory_lock(conn: Any, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()
        if row[0]:
            return
        if time.monotonic() > deadline:
            raise Timeout(
                f"waited {timeout_s:g} s for another process to finish migrating "
                f"PostgreSQL at {describe(url)}"
            )
        time.sleep(0.1)


@contextmanager
def _yoyo_backend(url: str) -> Iterator[Any]:
    """yoyo's backend for ``url``; its connection is closed on leaving."""
    from yoyo import get_backend

    backend = get_backend(_yoyo_uri(url))
    try:
        yield backend
    finally:
        backend.connection.close()
