"""The suite passes on a lab that has been used: what others left (an interrupted create's
staging directory, someone's own VM rows) is not counted as this test's leftovers."""

from __future__ import annotations

import secrets

import pytest

from tests.conftest import leftovers

pytestmark = pytest.mark.integration


def test_leftovers_count_only_the_tests_own_names(lab: dict, vmctl_env: dict[str, str]) -> None:  # type: ignore[type-arg]
    import guests

    node = lab["nodes"][0]
    hv = guests.hypervisor(node, lab)
    stray = f"{guests.STORAGE}/.staging/someone-else.{secrets.token_hex(4)}"
    mine = f"{guests.STORAGE}/.staging/mine-1.{secrets.token_hex(4)}"
    hv.runner.run(["mkdir", "-p", stray, mine])
    try:
        assert leftovers(lab, vmctl_env, ["other-1"]) == {}
        found = leftovers(lab, vmctl_env, ["mine-1"])
        assert found == {"staging": [f"{node['name']}:{mine.rsplit('/', 1)[1]}"]}
    finally:
        hv.runner.run(["rm", "-rf", "--", stray, mine])
