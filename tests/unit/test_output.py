"""Tables written to a pipe without rich are exactly what rich writes there."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from vmctl.cli.output import NODE_COLUMNS, VM_COLUMNS, _rich_table, emit, plain_table

pytestmark = pytest.mark.unit

CELLS = st.one_of(
    st.none(),
    st.integers(min_value=-(10**6), max_value=10**9),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=24),
    st.datetimes(timezones=st.just(UTC)),
)


def rich(records: list[dict[str, object]], columns: list[tuple[str, str]]) -> str:
    out = io.StringIO()
    _rich_table(records, columns, out)
    return out.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({key: CELLS for key, _ in VM_COLUMNS}), max_size=6))
def test_plain_tables_are_what_rich_writes_to_a_pipe(records: list[dict[str, object]]) -> None:
    plain = plain_table(records, VM_COLUMNS)
    if plain:  # else the table is too wide for a pipe: rich lays it out
        assert plain == rich(records, VM_COLUMNS)


def test_an_empty_list_is_its_header() -> None:
    assert plain_table([], NODE_COLUMNS) == rich([], NODE_COLUMNS)
    assert plain_table([], NODE_COLUMNS).startswith("NODE  VMS  STORAGE  CPU USED")


def test_wide_or_unicode_tables_go_to_rich() -> None:
    wide = [{"name": "x" * 150, "image": "y" * 60}]
    assert plain_table(wide, VM_COLUMNS) == ""
    assert plain_table([{"name": "wéb"}], VM_COLUMNS) == ""
    out = io.StringIO()
    emit([{"name": "wéb", "created_at": datetime(2026, 12, 2, tzinfo=UTC)}], VM_COLUMNS, stream=out)
    assert out.getvalue() == rich(
        [{"name": "wéb", "created_at": datetime(2026, 12, 2, tzinfo=UTC)}], VM_COLUMNS
    )


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_streamed_json_list_is_what_emit_writes(count: int) -> None:
    import io
    import json
    import textwrap

    from vmctl.cli.options import Format
    from vmctl.cli.output import emit, stream_json

    rows = [{"name": f"vm-{i}", "ip": None, "n": i, "nested": {"a": [1, 2]}} for i in range(count)]
    emitted, streamed = io.StringIO(), io.StringIO()
    emit(rows, [], Format.json, emitted)
    stream_json((textwrap.indent(json.dumps(r, indent=2), "  ") for r in rows), streamed)
    assert streamed.getvalue() == emitted.getvalue()
