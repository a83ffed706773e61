"""`vmctl ssh`'s command line: the VM's host key pinned without any known_hosts file."""

from pathlib import Path

import pytest

from vmctl.core.sshcmd import ssh_argv

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1 web-1"


def options(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")


def test_the_host_key_comes_from_known_hosts_command_and_no_file_is_used() -> None:
    argv = ssh_argv(Path("/k/id"), "web-1", "debian", "10.0.0.5", KEY, ["uptime"])
    opts = options(argv)
    assert (
        opts["KnownHostsCommand"]
        == "/bin/echo vmctl-web-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1"
    )
    assert opts["UserKnownHostsFile"] == "/dev/null"
    assert opts["GlobalKnownHostsFile"] == "/dev/null"
    assert opts["StrictHostKeyChecking"] == "yes"
    assert opts["HostKeyAlias"] == "vmctl-web-1"
    assert argv[-2:] == ["debian@10.0.0.5", "uptime"]
    assert not any("/tmp" in a for a in argv)


def test_no_percent_reaches_ssh_token_expansion() -> None:
    # KnownHostsCommand expands %-tokens: a key line (base64 and a name) never holds one
    argv = ssh_argv(Path("/k/id"), "web-1", "debian", "10.0.0.5", KEY, [])
    assert "%" not in options(argv)["KnownHostsCommand"]


def test_the_console_goes_through_the_node_with_its_host_key_checked() -> None:
    from vmctl.core.sshcmd import console_argv

    argv = console_argv(Path("/k"), Path("/kh"), "root", "10.0.0.11", 2222, "web-1")
    assert argv[:2] == ["ssh", "-t"]  # a terminal: virsh console is interactive
    assert "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/kh" in argv
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[-6:] == ["root@10.0.0.11", "virsh", "-c", "qemu:///system", "console", "web-1"]
