"""Prometheus' scrapes: a replica's own metrics, and the cloud's (the same on every replica:
HAProxy's monitoring frontend sends each scrape to one). Neither is served to the outside:
HAProxy's external frontend answers 404 for /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vmctl.adapters.metrics import cloud
from vmctl.api.deps import Svc
from vmctl.services.metrics import cloud_report

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def replica_metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/cloud")
def cloud_metrics(svc: Svc) -> Response:
    return Response(cloud.text(cloud_report(svc.vms)), media_type=CONTENT_TYPE_LATEST)
