"""The ASGI app of `vmctl serve`: the routers, the error handlers, one Services per thread, the
replica's metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI

from vmctl.adapters.metrics import process_registry, requests
from vmctl.api import errors
from vmctl.api.deps import PerThread
from vmctl.api.routes import internal, jobs, lifecycle, metrics, snapshots, vms
from vmctl.services import Services


def create_app(make_services: Callable[[], Services], log: logging.Logger) -> FastAPI:
    """The API over services made by ``make_services`` (one per worker thread)."""
    app = FastAPI(
        title="vmctl",
        version="1",
        description="Create, list and delete VMs on the vmctl cloud (the prototype's contract).",
    )
    app.state.services = PerThread(make_services)
    # The replica's own metrics (GET /metrics): requests, latency, in flight, the process.
    app.state.metrics = process_registry()
    app.add_middleware(requests.RequestMetrics, registry=app.state.metrics)
    errors.install(app, log)
    app.include_router(vms.router)
    app.include_router(jobs.router)
    app.include_router(lifecycle.router)
    app.include_router(snapshots.router)
    app.include_router(internal.router)
    app.include_router(metrics.router)
    return app
