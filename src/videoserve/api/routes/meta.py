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


@router.get("/readyz", tags=["Health"], summary="The database answers")
async def readyz(runtime: RuntimeDep) -> Any:
    try:
        await runtime.store.ping()
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "error": f"database: {exc}"},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    return {"status": "ready"}
