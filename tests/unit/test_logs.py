"""The structured logs of long-running vmctl processes: logfmt and JSON lines."""

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vmctl.wiring import logs

pytestmark = pytest.mark.unit

CREATED = datetime(2026, 11, 25, 14, 3, 22, 123456, tzinfo=UTC)


def record(
    msg: str = "ip recorded",
    level: int = logging.INFO,
    exc_info: Any = None,
    **values: object,
) -> logging.LogRecord:
    made = logging.getLogger("test-logs").makeRecord(
        "test-logs", level, __file__, 1, msg, (), exc_info, extra=logs.fields(**values)
    )
    made.created = CREATED.timestamp()
    return made


def logfmt(**values: object) -> str:
    return logs.LogfmtFormatter().format(record(**values))  # type: ignore[arg-type]


def test_fields_go_under_one_key() -> None:
    assert logs.fields(vm="web-1", ip=None) == {"fields": {"vm": "web-1", "ip": None}}
    assert logs.fields() == {"fields": {}}


def test_a_logfmt_line() -> None:
    line = logfmt(vm="web-1", ip="10.20.1.7", late_s="0.250")
    assert line == (
        'ts=2026-11-25T14:03:22.123+00:00 level=info msg="ip recorded" '
        "vm=web-1 ip=10.20.1.7 late_s=0.250"
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("web-1", "web-1"),
        ("10.20.1.7", "10.20.1.7"),
        ("node1,node2", "node1,node2"),
        ("café", "café"),
        (3, "3"),
        (0.5, "0.5"),
        (True, "True"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("tab\there", '"tab\\there"'),
        ("", '""'),
        (None, '""'),
    ],
)
def test_logfmt_quotes_what_would_be_ambiguous(value: object, written: str) -> None:
    line = logfmt(key=value)
    assert line.endswith(f" key={written}")
    assert "\n" not in line  # one event, one line


def test_quoted_values_read_back_as_json() -> None:
    for value in ("two words", 'say "hi"', "a=b", "line\nbreak", ""):
        written = logfmt(key=value).split(" key=", 1)[1]
        assert json.loads(written) == value


def test_level_is_lower_case_and_the_message_is_formatted() -> None:
    made = logging.getLogger("test-logs").makeRecord(
        "test-logs", logging.WARNING, __file__, 1, "node %s unreachable", ("kvm1",), None
    )
    line = logs.LogfmtFormatter().format(made)
    assert ' level=warning msg="node kvm1 unreachable"' in line


def test_a_record_without_fields_has_ts_level_and_msg_only() -> None:
    made = logging.getLogger("test-logs").makeRecord(
        "test-logs", logging.INFO, __file__, 1, "watching", (), None
    )
    made.created = CREATED.timestamp()
    assert logs.LogfmtFormatter().format(made) == (
        "ts=2026-11-25T14:03:22.123+00:00 level=info msg=watching"
    )


def test_an_exception_adds_its_last_line_as_error() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        exc_info = sys.exc_info()
    line = logs.LogfmtFormatter().format(record("failed", logging.ERROR, exc_info, vm="a"))
    assert line.endswith(' vm=a error="ValueError: bad value"')
    assert "\n" not in line


def test_json_lines_parse_with_ts_level_msg_and_the_fields() -> None:
    made = record(
        level=logging.WARNING,
        vm="web-1",
        ip=None,
        attempts=3,
        ok=True,
        at=CREATED,
        path=Path("/srv/vms"),
        note='two "words"',
    )
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2026-11-25T14:03:22.123+00:00",
        "level": "warning",
        "msg": "ip recorded",
        "vm": "web-1",
        "ip": None,
        "attempts": 3,
        "ok": True,
        "at": "2026-11-25 14:03:22.123456+00:00",  # what json cannot hold goes in as str()
        "path": "/srv/vms",
        "note": 'two "words"',
    }


def test_json_with_an_exception() -> None:
    try:
        raise KeyError("x")
    except KeyError:
        exc_info = sys.exc_info()
    parsed = json.loads(logs.JsonFormatter().format(record("failed", logging.ERROR, exc_info)))
    assert parsed["error"] == "KeyError: 'x'"
    assert parsed["level"] == "error"


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_setup_writes_one_line_per_event_to_stderr(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    log = logs.setup(f"test-logs-setup-{fmt}", fmt)
    log.info("ip recorded", extra=logs.fields(vm="web-1"))
    log.debug("not shown at info")
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    if fmt == "json":
        assert json.loads(line)["vm"] == "web-1"
    else:
        assert line.endswith(' level=info msg="ip recorded" vm=web-1')
    assert log.propagate is False and len(log.handlers) == 1
    logs.setup(f"test-logs-setup-{fmt}", fmt)  # again: still one handler
    assert len(log.handlers) == 1


def test_setup_refuses_an_unknown_format() -> None:
    from vmctl.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as caught:
        logs.setup("vmctl.test-bad-format", "xml")
    assert caught.value.field == "log-format" and "not 'xml'" in str(caught.value)


def test_a_thread_that_dies_is_one_log_line_not_a_traceback() -> None:
    import subprocess

    code = (
        "import threading; from vmctl.wiring import logs; logs.setup('vmctl.test');"
        "t = threading.Thread(target=lambda: 1 / 0, name='timer-1'); t.start(); t.join()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0
    [line] = proc.stderr.splitlines()
    assert 'level=error msg="a background thread ended with an error" thread=timer-1' in line
    assert line.endswith('error="ZeroDivisionError: division by zero"')
