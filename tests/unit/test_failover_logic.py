"""Multi-host PostgreSQL URLs in messages, and the failover window's decisions (pure logic)."""

from __future__ import annotations

import pytest

from vmctl.adapters import db
from vmctl.adapters.store import retry
from vmctl.core.errors import ConfigError
from vmctl.wiring.settings import load

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "described"),
    [
        (
            "postgresql://u:pw@h1:5432,h2:5433/vmctl?target_session_attrs=read-write",
            "h1:5432,h2:5433",
        ),
        ("host=a,b port=1,2 dbname=v user=u password=s target_session_attrs=read-write", "a:1,b:2"),
        ("host=a,b port=6000 dbname=v", "a:6000,b:6000"),
        ("postgresql://u:p@[::1]:5,h2/vmctl", "[::1]:5,h2:5432"),
        ("postgresql://u:p@db/vmctl", "db:5432"),
        ("postgresql:///vmctl", "localhost:5432"),
    ],
)
def test_describe_names_every_host_and_never_the_password(url: str, described: str) -> None:
    assert db.describe(url) == described
    assert "pw" not in db.describe(url)


def test_yoyo_uri_keeps_every_host_port_and_attribute() -> None:
    from yoyo.connections import parse_uri

    url = "postgresql://u:p%40x@h1:5432,h2:5433/vmctl?target_session_attrs=read-write"
    parsed = parse_uri(db._yoyo_uri(url))
    assert parsed.args["host"] == "h1,h2" and parsed.args["port"] == "5432,5433"
    assert parsed.args["target_session_attrs"] == "read-write"
    assert parsed.args["password"] == "p@x"


def test_the_default_window_is_for_multi_host_urls_only() -> None:
    assert retry.default_window("host=a,b dbname=v") == retry.FAILOVER_S
    assert retry.default_window("postgresql://u@a/v") == 0
    assert retry.default_window("not a conninfo") == 0  # the first call reports it


def _lost(**kw: bool) -> retry.Lost:
    return retry.Lost(OSError("gone"), kw.pop("committing", False), **kw)


def test_without_a_window_only_a_connection_lost_before_commit_is_tried_again_once() -> None:
    assert retry.Window(0).next_pause(_lost()) == 0
    w = retry.Window(0)
    assert w.next_pause(_lost()) == 0 and w.next_pause(_lost()) is None
    assert retry.Window(0).next_pause(_lost(committing=True)) is None
    assert retry.Window(0).next_pause(_lost(connected=False)) is None


def test_a_window_backs_off_doubling_to_two_seconds_until_it_closes() -> None:
    now = [100.0]
    w = retry.Window(10, clock=lambda: now[0], jitter=lambda _low, high: high)
    pauses = []
    while (pause := w.next_pause(_lost(connected=False))) is not None:
        pauses.append(pause)
        now[0] += pause
    assert pauses[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert 8 < sum(pauses) <= 10


def test_a_failure_waiting_cannot_cure_is_given_up_at_once() -> None:
    error = OSError('FATAL:  password authentication failed for user "vmctl"')
    assert retry.permanent(error) and not retry.permanent(OSError("Connection refused"))
    assert retry.Window(30).next_pause(_lost(permanent=True)) is None


def test_failover_timeout_setting() -> None:
    assert load(environ={"VMCTL_CONFIG": "/nonexistent"}).failover_timeout is None
    env = {"VMCTL_FAILOVER_TIMEOUT": "12.5", "VMCTL_CONFIG": "/nonexistent"}
    assert load(environ=env).failover_timeout == 12.5
    with pytest.raises(ConfigError, match="failover_timeout must be seconds"):
        load(environ={"VMCTL_FAILOVER_TIMEOUT": "soon", "VMCTL_CONFIG": "/nonexistent"})


def test_an_unreachable_multi_host_url_gives_each_hosts_reason_without_the_password() -> None:
    error = Exception(
        'connection failed: connection to server at "127.0.0.1", port 15442 failed: FATAL:  '
        'password authentication failed for user "vmctl"\n'
        "Multiple connection attempts failed. All failures were:\n"
        "- host: '127.0.0.1', port: '15441', hostaddr: '127.0.0.1': connection failed: "
        'connection to server at "127.0.0.1", port 15441 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
        "- host: '127.0.0.1', port: '15442', hostaddr: '127.0.0.1': connection failed: "
        'connection to server at "127.0.0.1", port 15442 failed: session is read-only s3cr3t'
    )
    url = "postgresql://vmctl:s3cr3t@127.0.0.1:15441,127.0.0.1:15442/vmctl"
    assert str(db.unreachable(url, error)) == (
        "PostgreSQL at 127.0.0.1:15441,127.0.0.1:15442 is unreachable: "
        "127.0.0.1:15441: Connection refused; 127.0.0.1:15442: session is read-only ***"
    )
