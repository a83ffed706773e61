"""Shared fixtures. Lab fixtures bring the lab up (idempotent) and share booted guests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab" / "lab"
sys.path.insert(0, str(REPO / "lab"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `lab_teardown` take the lab down: run them last."""
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_teardown: takes the lab down; runs last")


@pytest.fixture(scope="session")
def lab() -> dict:  # type: ignore[type-arg]
    import guests

    subprocess.run([str(LAB), "up"], check=True)
    info = guests.status()
    assert info["running"], info
    return info


@pytest.fixture(scope="session")
def guest_known_hosts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "known_hosts"
    path.touch()
    return path


@pytest.fixture(scope="session")
def booted(lab: dict, guest_known_hosts: Path) -> Iterator[list]:  # type: ignore[type-arg]
    """One guest per node, booted concurrently and shared by every test that only looks."""
    import guests

    made = []
    try:
        for node in lab["nodes"]:
            made.append(guests.boot(lab, node, f"t-{node['name']}", ram_mb=384, cpu=1, data_gb=1))
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(lambda g: guests.wait_ssh(g, lab, guest_known_hosts, 300), made))
        yield made
    finally:
        for guest in made:
            guests.delete(guest)
