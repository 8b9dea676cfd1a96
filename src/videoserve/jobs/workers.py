"""Live workers: each one upserts its row every heartbeat; admins list the fresh ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from videoserve.jobs import clock, schema
from videoserve.jobs.database import Database

workers = schema.workers


@dataclass(frozen=True)
class WorkerState:
    id: str
    host: str
    models: list[str]
    concurrency: int
    current_jobs: list[str]
    draining: bool = False
    ready: bool = True  # False while it loads its models (VIDEOSERVE_PRELOAD): it claims nothing
    # Each model it loaded: {"model", "load_seconds", "preloaded", "error"} (error: it failed).
    loaded_models: list[dict[str, Any]] = field(default_factory=list)


class WorkerRegistry:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def beat(self, state: WorkerState) -> None:
        """Record that the worker is alive, what it serves and what it runs now."""
        now = clock.now()
        values: dict[str, Any] = {
            "host": state.host,
            "models": state.models,
            "concurrency": state.concurrency,
            "current_jobs": state.current_jobs,
            "last_heartbeat": now,
            "draining": state.draining,
            "ready": state.ready,
            "loaded_models": state.loaded_models,
        }
        async with self._database.transaction() as conn:
            updated = (
                await conn.execute(
                    workers.update().where(workers.c.id == state.id).values(**values)
                )
            ).rowcount
            if not updated:
                await conn.execute(workers.insert().values(id=state.id, started_at=now, **values))

    async def remove(self, worker_id: str) -> None:
        async with self._database.transaction() as conn:
            await conn.execute(workers.delete().where(workers.c.id == worker_id))

    async def live(self, stale_after: float) -> list[dict[str, Any]]:
        """Workers heard from within `stale_after` seconds, newest first; older rows are pruned."""
        cutoff = clock.now() - stale_after
        async with self._database.transaction() as conn:
            await conn.execute(workers.delete().where(workers.c.last_heartbeat < cutoff - 3600))
            rows = (
                await conn.execute(
                    sa.select(workers)
                    .where(workers.c.last_heartbeat >= cutoff)
                    .order_by(workers.c.last_heartbeat.desc())
                )
            ).all()
        return [dict(r._mapping) for r in rows]
