"""`GET /metrics`: Prometheus text format (see `videoserve.observability.metrics`).

Not behind an API key, as Prometheus scrapers expect; it shows counts and timings, never
prompts or keys. Restrict it at the network if that is too much.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response

from videoserve.api.deps import RuntimeDep
from videoserve.observability.metrics import CONTENT_TYPE

router = APIRouter()
log = logging.getLogger("videoserve.metrics")


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    try:
        await runtime.metrics.refresh(runtime.store, runtime.worker_stale_after)
    except Exception as exc:  # the database is down: still serve what this process counted
        log.warning("metrics: cannot read the job database: %s", exc)
        runtime.metrics.forget_database()
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
