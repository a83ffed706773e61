"""How fast the vmctl command line starts: whole processes, as users run them.

Times `vmctl --version`, `vmctl --help`, `vmctl list` (against the lab, whose settings come from
`lab/lab env`; skipped with a note when the lab is not up) and, for reference, `virsh --version`
and the bare interpreter (`python -c pass`: start-up plus `site`, the floor of any Python command
here). The commands alternate round-robin, RUNS rounds; the table gives min/median/max wall time
and the median peak RSS (per process, from `os.wait4`). Then it lists the top importers of each
vmctl command from `python -X importtime` (median of a few runs).

Users install a wheel, whose bytecode is compiled at install time. This machine sets
PYTHONDONTWRITEBYTECODE=1, so before timing anything the bench compiles the vmctl package and the
interpreter's site-packages (`python -m compileall -q`), runs each command once with bytecode
writing allowed (for any other module it imports), and reports how many of the imported modules
then have an up-to-date .pyc.

    .venv/bin/python bench/cli_start.py --runs 20
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

# Runs `vmctl ARGS` in-process like the console script does (exit status ignored).
RUN_CLI = (
    "import sys; sys.argv = ['vmctl', *{args!r}]\n"
    "from vmctl.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
)
# ...then counts the imported modules whose source has no up-to-date .pyc next to it.
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
    times: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def vmctl_python(vmctl: Path) -> str:
    """The interpreter of the vmctl console script (its #! line), else this one."""
    try:
        first = vmctl.read_text().splitlines()[0]
    except (OSError, IndexError):
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


def compile_bytecode(python: str, env: dict[str, str]) -> str:
    """Compile vmctl and the interpreter's site-packages once; return what was compiled."""
    where = subprocess.run(
        [
            python,
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
    dirs = list(dict.fromkeys(d for d in where if os.path.isdir(d)))
    started = time.perf_counter()
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", *dirs], env=env, check=False)
    return (
        f"`python -m compileall -q` over {', '.join(dirs)} ({time.perf_counter() - started:.1f} s)"
    )


def warm_up(python: str, commands: list[Command]) -> list[str]:
    """Run each vmctl command once in-process with bytecode writing allowed, then check that
    every module it imported has an up-to-date .pyc. Returns one line per command."""
    lines = []
    for cmd in commands:
        if cmd.label not in VMCTL_COMMANDS:
            continue
        env = {k: v for k, v in cmd.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        code = RUN_CLI.format(args=VMCTL_COMMANDS[cmd.label])
        subprocess.run([python, "-c", code], env=env, capture_output=True, check=False)
        out = subprocess.run(
            [python, "-c", code + CHECK_PYC], env=cmd.env, capture_output=True, text=True
        )
        found = [ln for ln in out.stderr.splitlines() if ln.startswith("PYC ")]
        if not found:
            lines.append(f"{cmd.label}: could not check bytecode")
            continue
        _, total, stale, *names = found[-1].split(" ", 3)
        extra = f" (without: {names[0]})" if int(stale) else ""
        lines.append(f"`vmctl {cmd.label}`: {int(total) - int(stale)}/{total} modules{extra}")
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


def importers(python: str, cmd: Command, runs: int, top: int) -> dict[str, Any]:
    """The top `top` modules by cumulative import time (median of `runs` runs, in ms)."""
    samples: dict[str, list[tuple[int, int, int]]] = {}
    totals = []
    for _ in range(runs):
        out = subprocess.run(
            [python, "-X", "importtime", "-c", RUN_CLI.format(args=VMCTL_COMMANDS[cmd.label])],
            env=cmd.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        total = 0
        for line in out.stderr.splitlines():
            match = IMPORT_LINE.match(line)
            if not match:
                continue
            own, cumulative, indent, name = match.groups()
            depth = (len(indent) - 1) // 2
            samples.setdefault(name, []).append((int(cumulative), int(own), depth))
            if depth == 0:
                total += int(cumulative)
        totals.append(total)
    rows: list[dict[str, Any]] = [
        {
            "module": name,
            "cumulative_ms": statistics.median(s[0] for s in values) / 1000,
            "self_ms": statistics.median(s[1] for s in values) / 1000,
            "depth": values[0][2],
        }
        for name, values in samples.items()
    ]
    rows.sort(key=lambda row: -row["cumulative_ms"])
    heavy = ("fastapi", "uvicorn", "fabric", "paramiko", "psycopg", "jinja2", "cryptography")
    return {
        "total_ms": statistics.median(totals) / 1000 if totals else 0.0,
        "modules": len(samples),
        "heavy": [name for name in heavy if name in samples],
        "top": rows[:top],
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
        f"bytecode: {report['bytecode']['compiled']}; then with a .pyc: "
        + "; ".join(report["bytecode"]["check"]),
        f"`vmctl list` against: {report['list_env']}",
        "",
        "| command | runs | min | median | max | peak RSS (median) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        if not row["runs"]:
            out.append(f"| {row['label']} | 0 | failed: {'; '.join(row['failures'][:1])} | | | |")
            continue
        out.append(
            f"| {row['label']} | {row['runs']} | {row['min_s']:.3f} s | **{row['median_s']:.3f} s**"
            f" | {row['max_s']:.3f} s | {row['peak_rss_mib']:.0f} MiB |"
        )
    for row in report["results"]:
        if row["failures"]:
            out.append(
                f"\n{row['label']}: {len(row['failures'])} failed run(s): {row['failures'][0]}"
            )
    for label, imp in report["importers"].items():
        heavy = ", ".join(imp["heavy"]) or "none"
        out += [
            "",
            f"Top importers of `vmctl {label}` (`-X importtime`, median of "
            f"{report['importtime_runs']}; {imp['modules']} modules, {imp['total_ms']:.0f} ms in "
            f"imports; of fastapi/uvicorn/fabric/paramiko/psycopg/jinja2/cryptography: {heavy}):",
            "",
            "| module | cumulative | self |",
            "|---|---|---|",
        ]
        out += [
            f"| {'· ' * row['depth']}{row['module']} | {row['cumulative_ms']:.1f} ms"
            f" | {row['self_ms']:.1f} ms |"
            for row in imp["top"]
        ]
    out += [f"\n{note}" for note in report["notes"]]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds (at least 10); default 20")
    parser.add_argument("--vmctl", type=Path, default=REPO / ".venv" / "bin" / "vmctl")
    parser.add_argument("--virsh", default="virsh", help="the reference command's program")
    parser.add_argument("--top", type=int, default=10, help="importers listed per command")
    parser.add_argument("--importtime-runs", type=int, default=5)
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
    vmctl = args.vmctl.resolve()
    python = vmctl_python(vmctl)
    base = dict(os.environ)
    notes: list[str] = []

    commands = [
        Command("--version", [str(vmctl), "--version"], base),
        Command("--help", [str(vmctl), "--help"], base),
    ]
    if args.list_env == "lab":
        lab, list_env = lab_env()
    else:
        lab, list_env = {}, "this process's environment (VMCTL_* variables)"
    if lab is None:
        notes.append(f"`vmctl list` skipped: {list_env}")
        list_env = "skipped (lab not up)"
    else:
        commands.append(Command("list", [str(vmctl), "list"], {**base, **lab}))
    commands.append(Command("python -c pass", [python, "-c", "pass"], base))
    commands.append(Command("virsh --version", [args.virsh, "--version"], base))

    compiled = compile_bytecode(python, base)
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
        if cmd.label in VMCTL_COMMANDS
    }
    report = {
        "when": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "vmctl": str(vmctl),
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
