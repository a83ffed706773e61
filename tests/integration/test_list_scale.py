"""`vmctl list` at scale against the lab's PostgreSQL (a schema of the test's own, so only the
test's own 2,000 rows are there): `-o json` streamed from SQL is exactly what the record path
writes, tables are limited with a note, `--limit`/`--after` page, and GET /api/v1/vm pages with a
Link header through every page. bench/list_scale.py checks the same on 100,000 rows."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from tests.conftest import fresh_schema, run_vmctl

pytestmark = pytest.mark.integration

ROWS = 2000

# Every field in each of its forms: no address, an expected one, a confirmed one; with and
# without group and project; timestamps with and without microseconds.
_FILL = """
INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac, ip, ip_state,
                 group_name, project, created_at, updated_at)
SELECT format('scale-%%s', lpad(i::text, 5, '0')),
       (ARRAY['node1', 'node2', 'node3'])[1 + i %% 3],
       (ARRAY['running', 'stopped', 'creating', 'error'])[1 + i %% 4],
       256 * (1 + i %% 8), 1 + i %% 4, i %% 50, 4, 'debian-12',
       format('52:54:00:%%s:%%s:%%s', lpad(to_hex(i / 65536 %% 256), 2, '0'),
              lpad(to_hex(i / 256 %% 256), 2, '0'), lpad(to_hex(i %% 256), 2, '0')),
       CASE WHEN i %% 3 <> 0 THEN ('10.9.' || (i / 250) || '.' || (i %% 250 + 1))::inet END,
       CASE WHEN i %% 3 = 0 THEN NULL WHEN i %% 3 = 1 THEN 'expected' ELSE 'confirmed' END,
       CASE WHEN i %% 5 = 0 THEN 'web' END,
       %(project)s,
       timestamptz '2026-12-03 06:00:00+00' + i * interval '1.000250 second'
           - CASE WHEN i %% 7 = 0 THEN interval '0.000250 second' * i ELSE interval '0' END,
       timestamptz '2026-12-03 07:00:00+00'
FROM generate_series(1, %(rows)s) AS i
"""


@pytest.fixture(scope="module")
def scale_env(lab: dict, vmctl_env: dict[str, str]) -> Iterator[dict[str, str]]:  # type: ignore[type-arg]
    import psycopg

    with fresh_schema(lab["postgres"]["url"]) as url:
        env = {**vmctl_env, "VMCTL_DATABASE_URL": url}
        upgrade = run_vmctl(env, "db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_FILL, {"project": "scale", "rows": ROWS})  # type: ignore[arg-type]
            conn.execute("UPDATE vms SET project = NULL WHERE name = 'scale-00004'")
            # text PostgreSQL's to_json leaves be and json.dumps escapes: non-ASCII, a quote
            conn.execute("""UPDATE vms SET group_name = 'wé"b ☃' WHERE name = 'scale-00010'""")
        yield env


def records_text(env: dict[str, str], **filters: object) -> str:
    """What the record path (PgStore.list → output.record → emit) writes for the same rows."""
    from vmctl.adapters.store import PgStore
    from vmctl.cli.options import Format
    from vmctl.cli.output import emit, record

    out = io.StringIO()
    with PgStore(env["VMCTL_DATABASE_URL"]) as store:
        emit([record(vm) for vm in store.list(**filters)], [], Format.json, out)  # type: ignore[arg-type]
    return out.getvalue()


def test_json_streamed_from_sql_is_the_record_paths_text(scale_env: dict[str, str]) -> None:
    proc = run_vmctl(scale_env, "list", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == records_text(scale_env)
    vms = json.loads(proc.stdout)
    assert len(vms) == ROWS
    assert {vm["ip_state"] for vm in vms} == {None, "expected", "confirmed"}
    assert any("." not in vm["created_at"] for vm in vms)  # whole seconds: no fraction
    page = run_vmctl(scale_env, "list", "-o", "json", "--limit", "7", "--after", "scale-00100")
    assert page.stdout == records_text(scale_env, limit=7, after="scale-00100")
    assert json.loads(page.stdout)[0]["name"] == "scale-00101"
    mine = run_vmctl(scale_env, "list", "-o", "json", "--project", "scale")
    assert mine.returncode == 0 and mine.stderr == ""
    assert mine.stdout == records_text(scale_env, project="scale")
    assert len(json.loads(mine.stdout)) == ROWS - 1  # all but scale-00004, of no project
    assert '"group": "w\\u00e9\\"b \\u2603"' in mine.stdout
    none = run_vmctl(scale_env, "list", "-o", "json", "--project", "nobody")
    assert (none.returncode, none.stdout) == (0, "[]\n")


def test_a_table_shows_a_page_and_says_how_to_see_the_rest(scale_env: dict[str, str]) -> None:
    proc = run_vmctl(scale_env, "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("NAME") and len(lines) == 1 + 500
    assert (
        f"showing 500 VMs of {ROWS} in all (by name); --after scale-00500 shows the next ones"
        in proc.stderr
    )
    ten = run_vmctl(scale_env, "list", "--limit", "10", "--project", "scale")
    assert len(ten.stdout.splitlines()) == 1 + 10
    assert ten.stderr == (
        f"vmctl: showing 10 VMs of {ROWS - 1} in all (by name); --after scale-00011 shows the "
        "next ones, --limit 0 all of them, -o json streams them.\n"
    )
    tail = run_vmctl(scale_env, "list", "--after", "scale-01995")
    assert [line.split()[0] for line in tail.stdout.splitlines()[1:]] == [
        f"scale-0{n}" for n in range(1996, 2001)
    ]
    assert tail.stderr == ""  # nothing more to show
    every = run_vmctl(scale_env, "list", "--limit", "0", "--state", "running")
    assert len(every.stdout.splitlines()) == 1 + ROWS // 4 and every.stderr == ""


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--limit", "-1"], 2, "limit: must be 0 or more"),
        (["--after", "Not_A_Name"], 2, "after"),
        (["--limit", "many"], 2, "many"),
    ],
)
def test_bad_paging_options_are_refused(
    scale_env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    proc = run_vmctl(scale_env, "list", *args)
    assert proc.returncode == code and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_the_api_pages_through_every_vm_of_the_project(scale_env: dict[str, str]) -> None:
    """GET /api/v1/vm over the test's schema: without `limit` the whole array, with it pages
    linked by rel="next" that add up to the same array."""
    import logging

    from fastapi.testclient import TestClient

    from vmctl.adapters.store import PgStore
    from vmctl.api.models import vm_out
    from vmctl.api.server import build
    from vmctl.core import tokens
    from vmctl.wiring.settings import load

    url = scale_env["VMCTL_DATABASE_URL"]
    token, digest = tokens.new_secret(tokens.TOKEN_PREFIX)
    with PgStore(url) as store:
        store.create_token("scale", digest, "test_list_scale")
        expected = [vm_out(vm) for vm in store.list(project="scale")]
    app = build(load({}, scale_env), logging.getLogger("test_list_scale"))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        whole = client.get("/api/v1/vm")
        assert whole.status_code == 200 and "link" not in whole.headers
        assert whole.json() == expected and len(expected) == ROWS - 1
        seen: list[dict[str, str]] = []
        path, pages = "/api/v1/vm?limit=300", 0
        while path:
            page = client.get(path)
            assert page.status_code == 200, page.text
            assert len(page.json()) <= 300
            seen += page.json()
            pages += 1
            link = page.headers.get("link")
            assert link is None or link.endswith('; rel="next"')
            path = link.split(">")[0].lstrip("<") if link else ""
        assert (seen, pages) == (expected, 7)  # 6 x 300 + 199: the short page has no Link
        after = client.get("/api/v1/vm?limit=2&after=scale-01000").json()
        assert [vm["Name"] for vm in after] == ["scale-01001", "scale-01002"]
        assert client.get("/api/v1/vm?limit=10001").status_code == 422
