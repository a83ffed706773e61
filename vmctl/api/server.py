"""`vmctl serve`'s app, built from settings: the inventory loaded once, one Services per worker
thread, progress to the log."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from vmctl import wiring
from vmctl.api.app import create_app
from vmctl.core.errors import ConfigError
from vmctl.wiring.settings import Settings

POOL_SIZE = 10  # PostgreSQL connections of one replica


def build(settings: Settings, log: logging.Logger) -> FastAPI:
    inventory = wiring.load_inventory(settings)
    settings.require_database()
    try:
        keys = wiring.authorized_keys(settings)
    except ConfigError:
        keys = []  # API callers then have to send SSHKeys
    # One pool of PostgreSQL connections for every worker thread (uvicorn runs sync routes on
    # AnyIO's pool of at most 40 threads; most calls hold a connection for milliseconds).
    shared = wiring.store(settings, max_size=POOL_SIZE)
    queue = wiring.job_queue(settings)  # one pool for every thread's jobs
    return create_app(
        lambda: wiring.services(
            settings,
            inventory=inventory,
            tell=log.info,
            default_keys=keys,
            shared_store=shared,
            log=log,  # what a look for an address (POST /api/v1/ip/) finds is logged here
            shared_queue=queue,
        ),
        log,
    )
