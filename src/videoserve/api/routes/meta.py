"""Models, health and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from videoserve.api.deps import FleetDep, RegistryDep, SettingsDep

router = APIRouter()


@router.get("/v1/models", tags=["Models"], summary="Every model, its parameters and availability")
async def list_models(registry: RegistryDep, settings: SettingsDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": registry.describe(),
        # What `POST /v1/videos/characters` costs and how many one key may keep (docs/api.md).
        "character_price": settings.character_price,
        "max_characters_per_key": settings.max_characters_per_key,
    }


@router.get("/healthz", tags=["Health"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["Health"],
    summary="The database answers, and the embedded worker has loaded its models",
)
async def readyz(fleet: FleetDep) -> Any:
    """503 while the database is unreachable or the embedded worker is still preloading
    (VIDEOSERVE_PRELOAD), or when every model it was to serve failed to load."""
    try:
        await fleet.ping()
    except Exception as exc:
        return _unready({"status": "unavailable", "error": f"database: {exc}"})
    readiness = fleet.embedded_readiness
    if readiness is None:  # an API-only process: no models of its own
        return {"status": "ready"}
    ready, body = readiness()
    return body if ready else _unready(body)


def _unready(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
