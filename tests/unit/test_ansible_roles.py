"""deploy/ansible's playbook and roles, checked without hosts: `ansible-playbook --syntax-check`,
`ansible-lint --offline --profile production`, and no `command`/`shell` task that would report a
change on every run (each needs `creates`, `removes` or `changed_when`). Running the roles
against hosts is issue 14's lab test, not this one."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
ROLES = ANSIBLE / "roles"
SITE = ANSIBLE / "site.yml"
PLAY_TASK_KEYS = ("pre_tasks", "tasks", "post_tasks", "handlers")
ROLE_FILES = (
    "defaults/main.yml",
    "meta/main.yml",
    "handlers/main.yml",
    "tasks/main.yml",
    "README.md",
)
COMMAND_MODULES = {
    f"{prefix}{name}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for name in ("command", "shell", "raw", "script")
}
HONEST = ("creates", "removes")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run lab/setup-host.sh (Debian's ansible and lint)")
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    """No vmctl needed: `-i localhost,` replaces the inventory script, and no VMCTL_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMCTL_", "ANSIBLE_"))}
    env["ANSIBLE_CONFIG"] = str(ANSIBLE / "ansible.cfg")
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "ansible-local")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["NO_COLOR"] = "1"
    return env


def test_syntax_check(tmp_path: Path) -> None:
    proc = subprocess.run(
        [_tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(SITE)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production(tmp_path: Path) -> None:
    proc = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--profile", "production", "deploy/ansible"],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tasks(items: Any) -> Iterator[dict[str, Any]]:
    """Every task of a task list, blocks opened (block, rescue, always)."""
    for item in items or []:
        if not isinstance(item, dict):
            continue
        nested = [item[key] for key in ("block", "rescue", "always") if key in item]
        if nested:
            for tasks in nested:
                yield from _tasks(tasks)
        else:
            yield item


def dishonest_commands(tasks: list[Any]) -> list[str]:
    """Names of the command/shell tasks with neither creates, removes nor changed_when."""
    found = []
    for task in _tasks(tasks):
        module = next((key for key in task if key in COMMAND_MODULES), None)
        if module is None or "changed_when" in task:
            continue
        params = task[module] if isinstance(task[module], dict) else {}
        args = task.get("args") or {}
        if any(key in params or key in args for key in HONEST):
            continue
        found.append(str(task.get("name", module)))
    return found


def _task_files() -> list[Path]:
    roles = sorted(
        path
        for role in ROLES.iterdir()
        for folder in ("tasks", "handlers")
        for path in (role / folder).glob("*.yml")
    )
    return [*roles, SITE]


def test_command_tasks_are_honest() -> None:
    files = _task_files()
    assert {p.parent.parent.name for p in files if p.parent.name == "tasks"} == {
        "vmctl_node",
        "vmctl_manager",
        "ceph_client",
    }
    problems = []
    commands = 0
    for path in files:
        data = yaml.safe_load(path.read_text()) or []
        if path == SITE:
            tasks = [t for play in data for key in PLAY_TASK_KEYS for t in play.get(key) or []]
        else:
            tasks = data
        commands += sum(1 for t in _tasks(tasks) if any(k in COMMAND_MODULES for k in t))
        problems += [f"{path.relative_to(REPO)}: {name}" for name in dishonest_commands(tasks)]
    message = "command/shell without creates, removes or changed_when:\n" + "\n".join(problems)
    assert problems == [], message
    assert commands > 0  # the check saw the roles' virsh and vmctl commands


def test_the_check_catches_a_bare_command() -> None:
    tasks = [
        {"name": "bare", "ansible.builtin.command": {"argv": ["true"]}},
        {"name": "in a block", "block": [{"name": "nested", "ansible.builtin.shell": "echo hi"}]},
        {"name": "creates", "ansible.builtin.command": {"cmd": "x", "creates": "/x"}},
        {"name": "args", "command": "x", "args": {"removes": "/x"}},
        {"name": "changed_when", "ansible.builtin.command": "x", "changed_when": False},
        {"name": "a module", "ansible.builtin.file": {"path": "/x", "state": "directory"}},
    ]
    assert dishonest_commands(tasks) == ["bare", "nested"]


def test_every_role_has_its_files_and_documented_defaults() -> None:
    for role in ("vmctl_node", "vmctl_manager", "ceph_client"):
        base = ROLES / role
        for part in ROLE_FILES:
            assert (base / part).is_file(), f"{role}: {part} missing"
        meta = yaml.safe_load((base / "meta" / "main.yml").read_text())
        platforms = meta["galaxy_info"]["platforms"]
        assert {"name": "Debian", "versions": ["bookworm"]} in platforms
        # Every top-level variable of defaults/main.yml has a comment right above it (or is
        # one of a group introduced by a comment line ending in ":" or ",").
        lines = (base / "defaults" / "main.yml").read_text().splitlines()
        names = yaml.safe_load("\n".join(lines)) or {}
        for name in names:
            assert name.startswith(f"{role}_"), f"{role}: variable {name} lacks the role's prefix"
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
            above = lines[index - 1] if index else ""
            assert above.startswith("#") or (
                above.startswith(f"{role}_") and _group_comment(lines, index)
            ), f"{role}: variable {name} has no comment"


def _group_comment(lines: list[str], index: int) -> bool:
    """Variables listed right under one comment (e.g. vmctl_manager_home and _venv)."""
    i = index - 1
    while i >= 0 and lines[i].startswith(tuple("abcdefghijklmnopqrstuvwxyz")):
        i -= 1
    return i >= 0 and lines[i].startswith("#")
