from pathlib import Path

import pytest
import yaml

from vmctl.core import cloudinit, hostkeys

pytestmark = pytest.mark.unit


def seed(**kw: object) -> cloudinit.Seed:
    values: dict[str, object] = dict(
        hostname="web-1",
        instance_id="web-1-abc",
        user="debian",
        ssh_authorized_keys=["ssh-ed25519 AAAA op@desk"],
        mac="52:54:00:01:02:03",
    )
    values.update(kw)
    return cloudinit.Seed(**values)  # type: ignore[arg-type]


def test_user_data_sets_hostname_user_key_and_data_disk() -> None:
    files = cloudinit.render(seed())
    assert files["user-data"].startswith("#cloud-config\n")
    data = yaml.safe_load(files["user-data"])
    assert data["hostname"] == "web-1"
    (user,) = data["users"]
    assert user["name"] == "debian"
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAA op@desk"]
    assert user["lock_passwd"] is True
    assert data["ssh_pwauth"] is False
    # The data disk is made and mounted by runcmd (after sshd: SSH never waits for mkfs), first,
    # before the agent's step and any runcmd of the user's; not by fs_setup/mounts (before sshd).
    assert "fs_setup" not in data and "mounts" not in data
    disk = data["runcmd"][0][2]
    assert "mkfs.xfs -q -L DATA_XFS /dev/vdb" in disk
    assert "'/dev/vdb /dataxfs xfs defaults,nofail 0 2' >> /etc/fstab" in disk
    assert disk.endswith("mount /dataxfs")
    assert "qemu-guest-agent" in data["runcmd"][1][2]
    assert "ssh_keys" not in data


def test_meta_data_and_network_config_match_by_mac() -> None:
    files = cloudinit.render(seed())
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "web-1-abc",
        "local-hostname": "web-1",
    }
    net = yaml.safe_load(files["network-config"])
    eth = net["ethernets"]["primary"]
    assert net["version"] == 2
    assert eth["match"] == {"macaddress": "52:54:00:01:02:03"}
    assert eth["dhcp4"] is True


def test_host_key_is_carried_intact() -> None:
    key = hostkeys.new_host_key("web-1")
    data = yaml.safe_load(cloudinit.render(seed(host_key=key))["user-data"])
    assert data["ssh_keys"]["ed25519_private"] == key.private
    assert data["ssh_keys"]["ed25519_public"] == key.public
    assert key.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert hostkeys.known_hosts_line("web-1", key.public).startswith("web-1 ssh-ed25519 AAAA")


def test_hostile_values_stay_values() -> None:
    evil = 'x"\nruncmd: [reboot]\n#'
    data = yaml.safe_load(cloudinit.render(seed(hostname=evil, data_disk=None))["user-data"])
    assert data["hostname"] == evil
    assert ["reboot"] not in data["runcmd"] and len(data["runcmd"]) == 1  # only the agent's
    assert "fs_setup" not in data


def test_macs_are_random_and_local() -> None:
    macs = {hostkeys.new_mac() for _ in range(50)}
    assert len(macs) == 50
    assert all(m.startswith("52:54:00:") and len(m) == 17 for m in macs)


def test_every_template_value_is_json_quoted() -> None:
    import re

    from vmctl.core.resources import templates_dir

    for template in templates_dir().glob("*.j2"):
        for expr in re.findall(r"{{(.*?)}}", template.read_text()):
            assert expr.strip().endswith("| tojson"), f"{template.name}: {{{{{expr}}}}}"


def test_extra_user_data_becomes_a_second_mime_part() -> None:
    import email

    extra = "#cloud-config\npackages: [nginx]\n"
    text = cloudinit.render(seed(), extra_user_data=extra)["user-data"]
    parts = [p for p in email.message_from_string(text).walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/cloud-config"]
    assert yaml.safe_load(parts[0].get_payload(decode=True))["hostname"] == "web-1"
    assert parts[1].get_payload(decode=True).decode() == extra


def test_extra_user_data_script_and_garbage() -> None:
    import email

    from vmctl.core.errors import InvalidInput

    text = cloudinit.render(seed(), extra_user_data="#!/bin/sh\necho hi\n")["user-data"]
    types = [p.get_content_type() for p in email.message_from_string(text).walk()]
    assert "text/x-shellscript" in types
    with pytest.raises(InvalidInput, match="user-data: must start with"):
        cloudinit.render(seed(), extra_user_data="packages: [x]\n")


def test_guest_agent_is_installed_if_missing_and_enabled_only_where_it_can_be(
    tmp_path: Path,
) -> None:
    """The runcmd line, run by sh against a stand-in systemctl: a static unit (Debian's) is
    neither enabled (15 s of systemd reloads under emulation) nor started again when active."""
    import subprocess

    data = yaml.safe_load(cloudinit.render(seed(data_disk=None))["user-data"])
    (cmd,) = data["runcmd"]
    assert cmd[:2] == ["sh", "-c"]
    log = tmp_path / "calls"
    for name in ("qemu-ga", "apt-get", "systemctl"):
        stub = tmp_path / name
        answer = 'case "$1" in is-enabled) echo "$STATE" ;; is-active) exit $ACTIVE ;; esac\n'
        body = answer if name == "systemctl" else ""
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\n{body}')
        stub.chmod(0o755)

    def calls(state: str, active: int, agent: bool = True) -> list[str]:
        log.write_text("")
        if not agent:
            (tmp_path / "qemu-ga").unlink(missing_ok=True)
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "STATE": state, "ACTIVE": str(active)}
        subprocess.run(["sh", "-c", cmd[2]], env=env, check=True)
        return [c for c in log.read_text().splitlines() if not c.startswith("systemctl is-")]

    assert calls("static", 0) == []
    assert calls("static", 3) == ["systemctl start qemu-guest-agent"]
    assert calls("disabled", 3) == [
        "systemctl enable qemu-guest-agent",
        "systemctl start qemu-guest-agent",
    ]
    assert calls("enabled", 0) == []
    assert calls("static", 3, agent=False) == [
        "apt-get update",
        "apt-get install -y qemu-guest-agent",
        "systemctl start qemu-guest-agent",
    ]


def test_the_users_lists_add_to_vmctls() -> None:
    import email

    text = cloudinit.render(seed(), extra_user_data="#cloud-config\nruncmd: [[touch, /x]]\n")
    parts = [p for p in email.message_from_string(text["user-data"]).walk() if not p.is_multipart()]
    assert parts[0].get("Merge-Type") is None
    assert parts[1]["Merge-Type"] == "list(append)+dict(recurse_array)+str()"


def test_the_data_filesystem_grows_at_every_boot() -> None:
    data = yaml.safe_load(cloudinit.render(seed())["user-data"])
    (command,) = data["bootcmd"]
    assert command[:2] == ["sh", "-c"]
    assert "xfs_growfs -d /dataxfs" in command[2] and "mountpoint -q /dataxfs" in command[2]
    none = yaml.safe_load(cloudinit.render(seed(data_disk=None))["user-data"])
    assert "bootcmd" not in none
