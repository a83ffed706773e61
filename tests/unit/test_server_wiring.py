"""`vmctl serve` hands its own logger to the services it builds: what a look for an address
(POST /api/v1/ip/) finds is logged with the rest of the server's lines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from tests.unit.fakes import INVENTORY
from vmctl.api.server import build
from vmctl.wiring.settings import Settings

pytestmark = pytest.mark.unit


def test_the_services_of_serve_log_through_its_logger(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    settings = Settings(
        inventory=inventory,
        database_url="postgresql://vmctl@127.0.0.1:1/vmctl",  # never reached by this test
        ssh_key=tmp_path / "no-key",
    )
    log = logging.getLogger("vmctl.serve.test")
    app = build(settings, log)
    services = app.state.services()
    assert services.vms.log is log
