"""Operator endpoints: admin keys only (`videoserve keys create --admin`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter

from videoserve import errors
from videoserve.api.deps import FleetDep, KeyDep, SettingsDep
from videoserve.api.views import iso
from videoserve.jobs.records import ApiKey

router = APIRouter(prefix="/v1/admin", tags=["Admin"])


@router.get("/workers", summary="Live workers: models, current jobs, last heartbeat")
async def list_workers(fleet: FleetDep, key: KeyDep) -> dict[str, Any]:
    _require_admin(key)
    rows = await fleet.live_workers()
    return {
        "object": "list",
        "data": [
            {
                "id": r["id"],
                "host": r["host"],
                "models": r["models"],
                "concurrency": r["concurrency"],
                "current_jobs": r["current_jobs"],
                "draining": bool(r["draining"]),
                "ready": bool(r["ready"]),
                "loaded_models": r["loaded_models"] or [],
                "started_at": iso(r["started_at"]),
                "last_heartbeat": iso(r["last_heartbeat"]),
            }
            for r in rows
        ],
        "queue": await fleet.queue(),
    }


@router.get(
    "/scaling",
    summary="Per model: demand, running, live and warm workers, and the workers it wants",
)
async def scaling_signals(fleet: FleetDep, settings: SettingsDep, key: KeyDep) -> dict[str, Any]:
    _require_admin(key)
    target = settings.target_wait_seconds
    entries = await fleet.scaling(target)
    return {
        "object": "list",
        "target_wait_seconds": target,
        "data": [dataclasses.asdict(entry) for entry in entries],
    }


def _require_admin(key: ApiKey) -> None:
    if not key.is_admin:
        raise errors.Forbidden("this endpoint needs an admin key (videoserve keys create --admin)")
