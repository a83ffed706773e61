"""How fast the vmctl command line starts: whole processes, as users run them.

Times `vmctl --version`, `vmctl --help`, `vmctl list` (against the lab, whose settings come from
`lab/lab env`; skipped with a note when the lab is not up) and, for reference, `virsh --version`
and the bare interpreter (`python -c pass`: start-up plus `site`, the floor of any Python command
here). The commands alternate round-robin, RUNS rounds after one untimed round; the table gives
min/median/max wall time and the median peak RSS (of each process, from `os.wait4`). Then it
lists the top importers of each vmctl command from `python -X importtime` (medians of a few runs).

`--tree LABEL=DIR` (repeatable) also times the vmctl commands of another checkout, DIR first on
PYTHONPATH, in the same rounds: a before/after in one window. For example the code before the
start-up work:

    mkdir /tmp/before && git archive e10719e vmctl templates | tar -x -C /tmp/before

Users install a wheel, whose bytecode is compiled at install time. This machine sets
PYTHONDONTWRITEBYTECODE=1, so before timing anything the bench compiles vmctl and the
interpreter's site-packages (`python -m compileall -q`), runs each command once with bytecode
writing allowed (for modules elsewhere, e.g. the standard library), and reports how many of the
modules each command imports then have an up-to-date .pyc.

    .venv/bin/python bench/cli_start.py --runs 20 [--tree before=/tmp/before] [--json]
    .venv/bin/python bench/cli_start.py --list-env environ   # list against $VMCTL_* instead

Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab" / "lab"
VMCTL_COMMANDS = {"--version": ["--version"], "--help": ["--help"], "list": ["list"]}
HEAVY = ("fastapi", "uvicorn", "fabric", "paramiko", "psycopg", "jinja2", "cryptography")

# `vmctl ARGS` in-process, as the console script runs it (its exit status ignored). Run with
# `python -P` so that the current directory does not come first on sys.path.
RUN_CLI = (
    "import sys; sys.argv = ['vmctl', *{args!r}]\n"
    "from vmctl.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
)
# ...then: how many imported modules have an up-to-date .pyc next to their source.
CHECK_PYC = """
import importlib.util, os
stale = []
total = 0
for name, module in list(sys.modules.items()):
    src = getattr(module, '__file__', None)
    if not src or not src.endswith('.py') or not os.path.exists(src):
        continue
    total += 1
    pyc = importlib.util.cache_from_source(src)
    if not os.path.exists(pyc) or os.stat(pyc).st_mtime < os.stat(src).st_mtime:
        stale.append(name)
print('PYC', total, len(stale), ' '.join(sorted(stale)[:8]), file=sys.__stderr__)
"""
IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)\s*$")


@dataclass
class Command:
    label: str
    argv: list[str]
    env: dict[str, str]
    vmctl_args: list[str] | None = None  # a vmctl command: what `RUN_CLI` runs in-process
    times: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def vmctl_python(vmctl: Path) -> str:
    """The interpreter of the vmctl console script (its #! line), else this one."""
    try:
        first = vmctl.read_text().splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return sys.executable
    return first[2:].strip() if first.startswith("#!") and "python" in first else sys.executable


def lab_env() -> tuple[dict[str, str] | None, str]:
    """The environment `lab/lab env` prints (as tests/conftest.py's vmctl_env), or why not."""
    try:
        out = subprocess.run(
            [str(LAB), "env"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        return None, f"cannot run {LAB}: {exc}"
    if out.returncode != 0:
        return None, (out.stderr.strip() or f"lab/lab env exited {out.returncode}")
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value.strip("'")
    return env, "the lab (`lab/lab env`)"


def compile_bytecode(python: str, envs: list[dict[str, str]]) -> str:
    """Compile each tree's vmctl and the interpreter's site-packages; say what was compiled."""
    dirs: list[str] = []
    for env in envs:
        where = subprocess.run(
            [
                python,
                "-P",
                "-c",
                "import os, sysconfig, vmctl; paths = sysconfig.get_paths(); "
                "print(os.path.dirname(vmctl.__file__)); print(paths['purelib']); "
                "print(paths['platlib'])",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.split()
        dirs += [d for d in where if os.path.isdir(d)]
    dirs = list(dict.fromkeys(dirs))
    started = time.perf_counter()
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", *dirs], check=False)
    took = time.perf_counter() - started
    return f"`python -m compileall -q` over {', '.join(dirs)} ({took:.1f} s)"


def warm_up(python: str, commands: list[Command]) -> list[str]:
    """Run each vmctl command once in-process with bytecode writing allowed, then check that
    every module it imported has an up-to-date .pyc. Returns one line per command."""
    lines = []
    for cmd in commands:
        if cmd.vmctl_args is None:
            continue
        env = {k: v for k, v in cmd.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        code = RUN_CLI.format(args=cmd.vmctl_args)
        subprocess.run([python, "-P", "-c", code], env=env, capture_output=True, check=False)
        out = subprocess.run(
            [python, "-P", "-c", code + CHECK_PYC], env=cmd.env, capture_output=True, text=True
        )
        found = [ln for ln in out.stderr.splitlines() if ln.startswith("PYC ")]
        if not found:
            lines.append(f"`{cmd.label}`: could not check the bytecode")
            continue
        _, total, stale, names = found[-1].split(" ", 3)
        without = f" (without: {names})" if int(stale) else ""
        lines.append(f"`{cmd.label}` {int(total) - int(stale)}/{total} modules{without}")
    return lines


def run_once(cmd: Command) -> None:
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            cmd.argv,
            env=cmd.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        cmd.failures.append(f"cannot run {cmd.argv[0]}: {exc.strerror}")
        return
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        cmd.failures.append(f"exit {proc.returncode}: {text[-1] if text else ''}")
        return
    cmd.times.append(elapsed)
    cmd.rss_kib.append(usage.ru_maxrss)  # KiB on Linux


def parse_importtime(stderr: str) -> list[tuple[str, int, int, str]]:
    """(module, cumulative µs, self µs, imported by) of each `-X importtime` line."""
    lines = []
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            own, cumulative, indent, name = match.groups()
            lines.append((name, int(cumulative), int(own), (len(indent) - 1) // 2))
    # A module's line follows its imports' lines: read backwards, the importer comes first.
    rows = []
    last_at_depth: dict[int, str] = {}
    for name, cumulative, own, depth in reversed(lines):
        last_at_depth[depth] = name
        rows.append((name, cumulative, own, last_at_depth.get(depth - 1, "") if depth else ""))
    return rows


def importers(python: str, cmd: Command, runs: int, top: int) -> dict[str, Any]:
    """The `top` modules by cumulative import time (medians of `runs` runs, in ms)."""
    assert cmd.vmctl_args is not None
    samples: dict[str, list[tuple[int, int, str]]] = {}
    totals = []
    for _ in range(runs):
        out = subprocess.run(
            [python, "-P", "-X", "importtime", "-c", RUN_CLI.format(args=cmd.vmctl_args)],
            env=cmd.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        rows = parse_importtime(out.stderr)
        for name, cumulative, own, parent in rows:
            samples.setdefault(name, []).append((cumulative, own, parent))
        totals.append(sum(cumulative for _, cumulative, _, parent in rows if not parent))
    table: list[dict[str, Any]] = [
        {
            "module": name,
            "cumulative_ms": statistics.median(s[0] for s in values) / 1000,
            "self_ms": statistics.median(s[1] for s in values) / 1000,
            "imported_by": values[0][2],
        }
        for name, values in samples.items()
    ]
    table.sort(key=lambda row: -row["cumulative_ms"])
    return {
        "total_ms": statistics.median(totals) / 1000 if totals else 0.0,
        "modules": len(samples),
        "heavy": [name for name in HEAVY if name in samples],
        "top": table[:top],
    }


def summary(cmd: Command) -> dict[str, Any]:
    if not cmd.times:
        return {"runs": 0, "failures": cmd.failures}
    return {
        "runs": len(cmd.times),
        "min_s": min(cmd.times),
        "median_s": statistics.median(cmd.times),
        "max_s": max(cmd.times),
        "peak_rss_mib": statistics.median(cmd.rss_kib) / 1024,
        "failures": cmd.failures,
    }


def markdown(report: dict[str, Any]) -> str:
    out = [
        f"CLI start-up, {report['when']}, {report['machine']}",
        f"vmctl: {report['vmctl']} (python {report['python_version']})",
        f"bytecode: {report['bytecode']['compiled']}; modules with a .pyc then: "
        + "; ".join(report["bytecode"]["check"]),
        f"`vmctl list` against: {report['list_env']}",
        "",
        "| command | runs | min | median | max | peak RSS (median) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        if not row["runs"]:
            out.append(f"| {row['label']} | 0 | failed: {row['failures'][0]} | | | |")
            continue
        out.append(
            f"| {row['label']} | {row['runs']} | {row['min_s']:.3f} s | **{row['median_s']:.3f} s**"
            f" | {row['max_s']:.3f} s | {row['peak_rss_mib']:.0f} MiB |"
        )
    for row in report["results"]:
        if row["failures"]:
            out.append(f"\n{row['label']}: {len(row['failures'])} failed: {row['failures'][0]}")
    for label, imp in report["importers"].items():
        heavy = ", ".join(imp["heavy"]) or "none"
        out += [
            "",
            f"Top importers of `{label}` (`-X importtime`, medians of {report['importtime_runs']}"
            f" runs; {imp['modules']} modules, {imp['total_ms']:.0f} ms importing; of "
            f"{'/'.join(HEAVY)}: {heavy}):",
            "",
            "| module | cumulative | self | imported by |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {row['module']} | {row['cumulative_ms']:.1f} ms | {row['self_ms']:.1f} ms"
            f" | {row['imported_by'] or '(top level)'} |"
            for row in imp["top"]
        ]
    out += [f"\n{note}" for note in report["notes"]]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds (at least 10); default 20")
    parser.add_argument("--vmctl", type=Path, default=REPO / ".venv" / "bin" / "vmctl")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also time the vmctl commands with DIR (holding vmctl/) first on PYTHONPATH",
    )
    parser.add_argument("--virsh", default="virsh", help="the reference command's program")
    parser.add_argument("--top", type=int, default=10, help="importers listed per command")
    parser.add_argument("--importtime-runs", type=int, default=5, metavar="N")
    parser.add_argument(
        "--list-env",
        choices=["lab", "environ"],
        default="lab",
        help="where `vmctl list` gets its settings: `lab/lab env` (default) or this "
        "process's VMCTL_* variables",
    )
    parser.add_argument("--json", action="store_true", help="JSON instead of markdown")
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10 (medians of fewer runs are noise here)")
    trees: list[tuple[str, str]] = [("", "")]
    for spec in args.tree:
        label, sep, where = spec.partition("=")
        if not sep or not (Path(where) / "vmctl" / "__init__.py").is_file():
            parser.error(f"--tree {spec}: expected LABEL=DIR with DIR/vmctl/__init__.py")
        trees.append((label, str(Path(where).resolve())))
    vmctl = args.vmctl.resolve()
    python = vmctl_python(vmctl)
    base = dict(os.environ)
    notes: list[str] = []

    if args.list_env == "lab":
        lab, list_env = lab_env()
    else:
        lab, list_env = {}, "this process's environment (VMCTL_* variables)"
    if lab is None:
        notes.append(f"`vmctl list` skipped: {list_env}")
        list_env = "skipped (lab not up)"
    commands = []
    for label, where in trees:
        env = {**base, "PYTHONPATH": where} if where else base
        for name, vmctl_args in VMCTL_COMMANDS.items():
            if name == "list" and lab is None:
                continue
            commands.append(
                Command(
                    f"vmctl {name}" + (f" ({label})" if label else ""),
                    [str(vmctl), *vmctl_args],
                    {**env, **lab} if name == "list" and lab else env,
                    vmctl_args,
                )
            )
    commands.append(Command("python -c pass", [python, "-c", "pass"], base))
    commands.append(Command("virsh --version", [args.virsh, "--version"], base))

    compiled = compile_bytecode(python, [cmd.env for cmd in commands if cmd.vmctl_args])
    check = warm_up(python, commands)
    for cmd in commands:  # one untimed round: page cache, the lab's connections
        run_once(cmd)
        cmd.times.clear()
        cmd.rss_kib.clear()
    for _ in range(args.runs):
        for cmd in commands:
            run_once(cmd)
    imports = {
        cmd.label: importers(python, cmd, args.importtime_runs, args.top)
        for cmd in commands
        if cmd.vmctl_args is not None
    }
    report = {
        "when": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "vmctl": str(vmctl),
        "trees": {label: where for label, where in trees if label},
        "python_version": platform.python_version(),
        "bytecode": {"compiled": compiled, "check": check},
        "list_env": list_env,
        "importtime_runs": args.importtime_runs,
        "results": [{"label": cmd.label, **summary(cmd)} for cmd in commands],
        "importers": imports,
        "notes": notes,
    }
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 1 if any(not row["runs"] for row in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
