"""`GET /metrics`: Prometheus text format (see `videoserve.observability.metrics`).

Not behind an API key, as Prometheus scrapers expect; it shows counts and timings, never
prompts or keys. Restrict it at the network if that is too much.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response

from videoserve.api.deps import FleetDep
from videoserve.observability.metrics import CONTENT_TYPE

router = APIRouter()
log = logging.getLogger("videoserve.metrics")


@router.get("/metrics", include_in_schema=False)
async def metrics(fleet: FleetDep) -> Response:
    # With the database down, still what this process counted (`Fleet.metrics_text`).
    return Response(await fleet.metrics_text(), media_type=CONTENT_TYPE)
