"""Models, health and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from videoserve.api.deps import RuntimeDep

router = APIRouter()


@router.get("/v1/models", tags=["Models"], summary="Every model, its parameters and availability")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    return {"object": "list", "data": runtime.registry.describe()}


@router.get("/healthz", tags=["Health"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["Health"],
    summary="The database answers, and the embedded worker has loaded its models",
)
async def readyz(runtime: RuntimeDep) -> Any:
    """503 while the database is unreachable or the embedded worker is still preloading
    (VIDEOSERVE_PRELOAD), or when every model it was to serve failed to load."""
    try:
        await runtime.store.ping()
    except Exception as exc:
        return _unready({"status": "unavailable", "error": f"database: {exc}"})
    worker = runtime.worker
    if worker is None:  # an API-only process: no models of its own
        return {"status": "ready"}
    failed = worker.loads.failed()
    body: dict[str, Any] = {
        "models_loaded": [load.to_json() for load in worker.loads.in_memory(worker.registry)],
        "models_failed": [load.to_json() for load in failed],
    }
    if not worker.ready:
        loading = ", ".join(worker.preloading)
        return _unready({"status": "loading", "error": f"loading models: {loading}"} | body)
    if not worker.served_by:
        names = ", ".join(load.model for load in failed)
        error = f"no model to serve: every model failed to load ({names})"
        return _unready({"status": "unavailable", "error": error} | body)
    return {"status": "ready"} | body


def _unready(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
