"""--wait gives up with a message naming the step it was stuck at and where to look."""

import pytest

from vmctl import readiness
from vmctl.errors import Timeout

pytestmark = pytest.mark.unit


class NoLease:
    """A node whose DHCP server never hands out the address (the boundary, faked)."""

    class runner:
        node = "node7"

    def addresses(self, name: str, source: str = "lease") -> list[tuple[str, str]]:
        return []


def test_timeout_without_lease_names_the_step_and_the_console_log() -> None:
    with pytest.raises(Timeout) as err:
        readiness.wait_ready(
            NoLease(),
            "web-1",
            "52:54:00:00:00:01",
            "ssh-ed25519 AAAA",  # type: ignore[arg-type]
            0.1,
            lambda ip: None,
            "/srv/vms/web-1/console.log",
        )
    message = str(err.value)
    assert "no IP address" in message and "52:54:00:00:00:01" in message
    assert "node node7: /srv/vms/web-1/console.log" in message


def test_ssh_host_key_of_a_closed_port_is_none() -> None:
    assert readiness.ssh_host_key("127.0.0.1", port=1, timeout=0.5) is None
