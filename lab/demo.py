"""The demo: one guest per lab node, booted through each node's own libvirt over SSH; wait for its
DHCP lease; log in with the injected key; list; delete. Run by `make demo`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guests


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def main() -> int:
    lab = guests.status()
    if not lab.get("running"):
        say("the lab is not running: run `lab/lab up` first")
        return 1
    known_hosts = Path(tempfile.mkdtemp(prefix="vmctl-demo-")) / "known_hosts"
    known_hosts.touch()
    names = [f"demo-{node['name']}" for node in lab["nodes"]]
    say(f"booting {', '.join(names)} (software emulation: about a minute)")
    booted = [guests.boot(lab, node, name) for node, name in zip(lab["nodes"], names, strict=True)]
    try:
        with ThreadPoolExecutor(len(booted)) as pool:
            seconds = list(pool.map(lambda g: guests.wait_ssh(g, lab, known_hosts), booted))
        print(f"{'NAME':16} {'NODE':8} {'IP':15} {'SSH AFTER':>9}  HOSTNAME (from inside)")
        for guest, secs in zip(booted, seconds, strict=True):
            inside = subprocess.run(
                guests.ssh_command(guest, lab, known_hosts, "hostname"),
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            print(f"{guest.name:16} {guest.node['name']:8} {guest.ip:15} {secs:8.1f}s  {inside}")
    finally:
        for guest in booted:
            say(f"deleting {guest.name} on {guest.node['name']}")
            guests.delete(guest)
        known_hosts.unlink(missing_ok=True)
        known_hosts.parent.rmdir()
    for node in lab["nodes"]:
        left = guests.hypervisor(node, lab).domains()
        say(f"{node['name']}: domains left: {left or 'none'}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    say(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)
