"""`vmctl list` and GET /api/v1/vm over the fake store (issue 15): tables stop at 500 rows and say
on stderr how many there are in all; `--limit`/`--after` page every format; `-o json` streams
what the record path wrote; the API pages with `?limit=&after=` and a Link to the next page,
and without `limit` gives the whole array as before. Against PostgreSQL (the SQL that builds
each row's text): tests/integration/test_list_scale.py."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.unit.fakes import NOW, World, world
from vmctl.cli.options import Format
from vmctl.cli.output import emit, record
from vmctl.core.errors import InvalidInput
from vmctl.core.records import VmRecord

pytestmark = pytest.mark.unit

VMS = 620


def a_vm(i: int, project: str | None = "demo") -> VmRecord:
    """VM number ``i``: every field in each of its forms across numbers (no address, an
    expected one, a confirmed one; a group or none; times with and without microseconds)."""
    return VmRecord(
        id=i,
        name=f"vm-{i:04d}",
        node=("kvm1", "kvm2")[i % 2],
        state=("running", "stopped", "creating", "error")[i % 4],
        ram_mb=256 * (1 + i % 8),
        cpu=1 + i % 4,
        disk_gb=i % 50,
        root_gb=4,
        image="debian-12",
        mac=f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
        host_key=None,
        ip=None if i % 3 == 0 else f"10.9.{i // 250}.{i % 250 + 1}",
        ip_state=(None, "expected", "confirmed")[i % 3],
        group_name="web" if i % 5 == 0 else None,
        project=project,
        created_at=NOW + timedelta(seconds=i, microseconds=0 if i % 7 == 0 else 250 * i),
        updated_at=NOW + timedelta(hours=1),
    )


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> World:
    """A VmService over fakes holding VMS VMs, which `vmctl list` is given."""
    made = world()
    for i in range(VMS, 0, -1):  # not in name order: the list sorts
        vm = a_vm(i)
        made.store.vms[vm.name] = vm
    monkeypatch.setattr("vmctl.cli.vms.vm_service", lambda **_: made.svc)
    return made


def vmctl_list(*args: str) -> tuple[int, str, str]:
    from vmctl.cli import app

    result = CliRunner().invoke(app, ["list", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def record_path(cloud: World, fmt: Format, **filters: object) -> str:
    """What `vmctl list` wrote before it streamed: every record through emit."""
    out = io.StringIO()
    emit([record(vm) for vm in cloud.store.list(**filters)], [], fmt, out)  # type: ignore[arg-type]
    return out.getvalue()


def note(shown: int, total: int, last: str, after: str | None = None) -> str:
    vms = "VM" if shown == 1 else "VMs"
    where = f"{vms} after {after}" if after else vms
    return (
        f"vmctl: showing {shown} {where} of {total} in all (by name); --after {last} shows the "
        "next ones, --limit 0 all of them, -o json streams them.\n"
    )


# -- the CLI --------------------------------------------------------------------------------------


def test_a_table_shows_500_rows_and_says_on_stderr_how_many_there_are(cloud: World) -> None:
    code, out, err = vmctl_list()
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:3] == ["NAME", "NODE", "STATE"] and len(lines) == 1 + 500
    assert [line.split()[0] for line in lines[1:3]] == ["vm-0001", "vm-0002"]  # by name
    assert lines[-1].split()[0] == "vm-0500"
    assert err == note(500, VMS, "vm-0500")
    assert "count" in cloud.store.calls  # how many in all: PostgreSQL counts them


def test_the_next_page_of_a_table_and_the_whole_table(cloud: World) -> None:
    code, out, err = vmctl_list("--after", "vm-0500")
    assert code == 0 and err == ""  # the last page: nothing more to say
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        f"vm-{i:04d}" for i in range(501, VMS + 1)
    ]
    code, out, err = vmctl_list("--limit", "0")
    assert (code, len(out.splitlines()), err) == (0, 1 + VMS, "")
    code, out, err = vmctl_list("--limit", "3", "--after", "vm-0010", "--node", "kvm1")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["vm-0012", "vm-0014", "vm-0016"]
    assert err == note(3, VMS // 2, "vm-0016", after="vm-0010")  # counted with the same filter
    _, _, err = vmctl_list("--limit", "1")
    assert err == note(1, VMS, "vm-0001")
    cloud.store.calls.clear()
    code, out, err = vmctl_list("--limit", str(VMS))  # exactly all of them: no note, no count
    assert (code, len(out.splitlines()), err) == (0, 1 + VMS, "")
    assert "count" not in cloud.store.calls


@pytest.mark.parametrize(
    ("args", "filters"),
    [
        ([], {}),
        (["--limit", "0"], {}),
        (["--project", "nobody"], {"project": "nobody"}),
        (["--state", "running", "--node", "kvm1"], {"state": "running", "node": "kvm1"}),
        (["--after", "vm-0600"], {"after": "vm-0600"}),
    ],
)
def test_json_is_streamed_and_is_what_the_record_path_wrote(
    cloud: World, args: list[str], filters: dict[str, object]
) -> None:
    code, out, err = vmctl_list("-o", "json", *args)
    assert (code, err) == (0, "")
    assert out == record_path(cloud, Format.json, **filters)
    assert "list_json" in cloud.store.calls and cloud.store.open_streams == 0
    if not filters:
        assert len(json.loads(out)) == VMS  # no 500 rows' limit: JSON is for scripts


def test_an_explicit_limit_pages_json_and_yaml_with_the_note(cloud: World) -> None:
    code, out, err = vmctl_list("-o", "json", "--limit", "7", "--after", "vm-0100")
    assert code == 0
    assert out == record_path(cloud, Format.json, limit=7, after="vm-0100")
    assert json.loads(out)[0]["name"] == "vm-0101"
    assert err == note(7, VMS, "vm-0107", after="vm-0100")
    assert cloud.store.open_streams == 0  # closed before counting: its connection is back
    code, out, err = vmctl_list("--json", "--limit", "3")
    assert [vm["name"] for vm in json.loads(out)] == ["vm-0001", "vm-0002", "vm-0003"]
    code, out, err = vmctl_list("-o", "yaml", "--limit", "2", "--state", "stopped")
    assert code == 0
    assert out == record_path(cloud, Format.yaml, limit=2, state="stopped")
    assert [vm["name"] for vm in yaml.safe_load(out)] == ["vm-0001", "vm-0005"]
    assert err == note(2, VMS // 4, "vm-0005")
    code, out, err = vmctl_list("-o", "yaml")  # yaml unstreamed, but every VM
    assert code == 0 and len(yaml.safe_load(out)) == VMS and err == ""


def test_json_stops_reading_the_stream_at_the_limit() -> None:
    from vmctl.cli.vms import _Capped

    closed: list[bool] = []

    def endless() -> Iterator[str]:
        n = 0
        try:
            while True:
                n += 1
                yield f'  {{"name": "vm-{n}"}}'
        finally:
            closed.append(True)

    capped = _Capped(endless(), 3)
    assert list(capped) == [f'  {{"name": "vm-{n}"}}' for n in (1, 2, 3)]
    assert (capped.shown, capped.more, json.loads(capped.last), closed) == (
        3,
        True,
        {"name": "vm-3"},
        [True],
    )


def test_the_sql_of_streamed_json_has_the_records_keys_in_its_order() -> None:
    from vmctl.adapters.store import vms

    assert [key for key, _ in vms._LIST_JSON_FIELDS] == list(record(a_vm(1)))


@pytest.mark.parametrize("vm", [a_vm(1), a_vm(3)])
def test_non_ascii_text_from_postgresql_is_escaped_as_json_dumps_does(vm: VmRecord) -> None:
    """PostgreSQL's to_json leaves non-ASCII characters be; json.dumps escapes them."""
    import textwrap

    from vmctl.adapters.store.vms import _ascii_json
    from vmctl.cli.output import _plain

    odd = _plain(record(vm)) | {"project": "équipe ☃", "group": 'say "hi"\n'}
    as_python = textwrap.indent(json.dumps(odd, indent=2), "  ")
    as_postgresql = textwrap.indent(json.dumps(odd, indent=2, ensure_ascii=False), "  ")
    assert _ascii_json(as_postgresql) == as_python
    assert _ascii_json(as_python) is as_python  # ASCII text passes untouched


def test_a_negative_limit_is_a_usage_error_naming_the_option() -> None:
    # Refused before settings are read: no database is needed to see it.
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl", "list", "--limit", "-1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == "vmctl: error: limit: must be 0 or more, not -1\n"
    assert proc.stdout == ""
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl", "list", "--limit", "many"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "many" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("args", [["--after", "Not_A_Name"], ["-o", "json", "--after", ""]])
def test_a_bad_after_is_refused_naming_the_option(cloud: World, args: list[str]) -> None:
    with pytest.raises(InvalidInput) as refused:
        vmctl_list(*args)
    assert refused.value.field == "after"
    assert "list_json" not in cloud.store.calls and "list" not in cloud.store.calls


# -- the API --------------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[tuple[TestClient, World]]:
    """The API's app over the fake store, with a token of project demo; VMS VMs of demo and
    a few of another project."""
    from vmctl.api.app import create_app
    from vmctl.services import Services
    from vmctl.services.tokens import TokenService

    made = world()
    for i in range(1, VMS + 1):
        vm = a_vm(i)
        made.store.vms[vm.name] = vm
    for i in range(VMS + 1, VMS + 6):
        vm = a_vm(i, project="other")
        made.store.vms[vm.name] = vm
    tokens = TokenService(made.store)
    _, token = tokens.create("demo")
    app = create_app(lambda: Services(vms=made.svc, tokens=tokens), logging.getLogger("test"))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, made


def test_without_limit_the_api_gives_the_whole_array_as_before(
    api: tuple[TestClient, World],
) -> None:
    from vmctl.api.models import vm_out

    client, made = api
    whole = client.get("/api/v1/vm")
    assert whole.status_code == 200 and "link" not in whole.headers
    assert whole.json() == [vm_out(vm) for vm in made.store.list(project="demo")]
    assert len(whole.json()) == VMS  # the other project's VMs are not shown


def test_the_api_pages_by_name_with_a_link_to_the_next_page(
    api: tuple[TestClient, World],
) -> None:
    client, _ = api
    whole = [vm["Name"] for vm in client.get("/api/v1/vm").json()]
    seen: list[str] = []
    url, pages = "/api/v1/vm?limit=100", 0
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        names = [vm["Name"] for vm in page.json()]
        assert len(names) <= 100
        seen += names
        pages += 1
        link = page.headers.get("link")
        if link is not None:
            assert link == f'</api/v1/vm?limit=100&after={names[-1]}>; rel="next"'
        url = link.split(">")[0].lstrip("<") if link else ""
    assert (seen, pages) == (whole, 7)  # 6 full pages and one of 20: no Link after it
    page = client.get("/api/v1/vm?limit=5&after=vm-0040&state=running")
    assert [vm["Name"] for vm in page.json()] == [f"vm-{i:04d}" for i in (44, 48, 52, 56, 60)]
    link = page.headers["link"]  # the filters stay in the next page's link
    assert link.startswith("</api/v1/vm?") and link.endswith('; rel="next"')
    assert sorted(link[1:].split(">")[0].split("?")[1].split("&")) == [
        "after=vm-0060",
        "limit=5",
        "state=running",
    ]
    end = client.get("/api/v1/vm?limit=10&after=vm-0620")
    assert (end.status_code, end.json(), end.headers.get("link")) == (200, [], None)


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("limit=0", 422, "limit"),
        ("limit=-3", 422, "limit"),
        ("limit=10001", 422, "limit"),
        ("limit=ten", 422, "limit"),
        ("limit=10&after=Not_A_Name", 400, "after"),
    ],
)
def test_a_bad_page_is_refused_naming_the_parameter(
    api: tuple[TestClient, World], query: str, status: int, field: str
) -> None:
    client, made = api
    made.store.calls.clear()
    response = client.get(f"/api/v1/vm?{query}")
    assert response.status_code == status
    assert response.json()["field"] == field
    assert "list_contract_page" not in made.store.calls


def test_the_openapi_document_shows_the_page_parameters(api: tuple[TestClient, World]) -> None:
    client, _ = api
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/vm"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert {"node", "state", "limit", "after"} <= set(params)
    limit = params["limit"]["schema"]["anyOf"][0]
    assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, 10000)
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["type"] == (
        "array"
    )
