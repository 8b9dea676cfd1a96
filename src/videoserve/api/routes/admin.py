"""Operator endpoints: admin keys only (`videoserve keys create --admin`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from videoserve import errors
from videoserve.api.deps import KeyDep, RuntimeDep

router = APIRouter(prefix="/v1/admin", tags=["Admin"])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@router.get("/workers", summary="Live workers: models, current jobs, last heartbeat")
async def list_workers(runtime: RuntimeDep, key: KeyDep) -> dict[str, Any]:
    if not key.is_admin:
        raise errors.Forbidden("this endpoint needs an admin key (videoserve keys create --admin)")
    # Three missed heartbeats and a worker is no longer live.
    rows = await runtime.workers.live(stale_after=3 * runtime.settings.heartbeat_seconds + 1)
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
                "started_at": _iso(r["started_at"]),
                "last_heartbeat": _iso(r["last_heartbeat"]),
            }
            for r in rows
        ],
        "queue": await runtime.store.count_by_status(),
    }
