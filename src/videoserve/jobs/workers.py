"""Live workers: each one upserts its row every heartbeat; admins list the fresh ones."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from videoserve import clock
from videoserve.db.database import Database
from videoserve.jobs import schema

log = logging.getLogger("videoserve.workers")
workers = schema.workers

MISSED_BEATS = 3  # heartbeats a worker may miss before it no longer counts as live


def stale_after(heartbeat_seconds: float) -> float:
    """Seconds without a heartbeat after which a worker no longer counts as live: every
    reader of the registry (the admin list, the metrics gauge) asks here."""
    return MISSED_BEATS * heartbeat_seconds + 1


def _heard_since(cutoff: float) -> sa.ColumnElement[bool]:
    return workers.c.last_heartbeat >= cutoff


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
    """The `workers` table: each worker's beats, and who counts as live (`stale_after`)."""

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
                    .where(_heard_since(cutoff))
                    .order_by(workers.c.last_heartbeat.desc())
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def serving(self, stale_after: float) -> set[str]:
        """The models that live workers not draining serve (read-only: nothing is pruned)."""
        query = sa.select(workers.c.models).where(
            _heard_since(clock.now() - stale_after), sa.not_(workers.c.draining)
        )
        async with self._database.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {model for (models,) in rows for model in models or ()}

    async def count_live(self, stale_after: float) -> int:
        """How many workers `live` would list (read-only: nothing is pruned)."""
        query = sa.select(sa.func.count()).where(_heard_since(clock.now() - stale_after))
        async with self._database.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


@functools.lru_cache(maxsize=256)  # one string per model, built once rather than every poll
def no_worker_reason(served_by: str) -> str:
    """Why a queued job waits when no live worker serves its model (its `waiting_reason`)."""
    return f"no worker serving model '{served_by}' is running"


class ServedModels:
    """The models this process believes live, undrained workers serve: read from the
    registry at most once per `ttl` seconds, so a status poll asks a set, not the database.

    Why a cache: `waiting_reason` is shown on every poll of a queued job, the hottest request;
    a read of the workers table per poll would double its database work. A stale answer is
    seconds old at most, and the first call of a process reads before it answers."""

    def __init__(self, registry: WorkerRegistry, stale_after: float, ttl: float = 2.0) -> None:
        self._registry = registry
        self._stale_after = stale_after
        self._ttl = ttl
        self._served: frozenset[str] | None = None
        self._read_at = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None

    def answers_now(self) -> bool:
        """Whether `reason_now` can answer without a read: the workers were read, or the last
        read failed moments ago (then it says nothing rather than guess)."""
        return self._served is not None or time.monotonic() - self._read_at <= self._ttl

    def reason_now(self, served_by: str) -> str | None:
        """`waiting_reason` from what this process has read (`answers_now` must hold), with
        no wait: a status poll's path. Starts the next read when the last is `ttl` old; the
        next call sees it."""
        served = self._served
        if served is None:
            return None
        if time.monotonic() - self._read_at > self._ttl and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
            self._refreshing.add_done_callback(self._refreshed)
        return None if served_by in served else no_worker_reason(served_by)

    async def waiting_reason(self, served_by: str) -> str | None:
        """Why a QUEUED job of `served_by` waits beyond its place in line; None: a live
        worker serves its model. The first call of a process reads before it answers."""
        if not self.answers_now():
            await self._refresh()
        return self.reason_now(served_by)

    def _refreshed(self, _task: asyncio.Task[None]) -> None:
        self._refreshing = None

    async def _refresh(self) -> None:
        self._read_at = time.monotonic()  # also after a failure: one try per `ttl`
        try:
            rows = await self._registry.serving(self._stale_after)
        except Exception as exc:  # the database is down: keep the last answer
            log.warning("could not read the live workers: %s", exc)
            return
        self._served = frozenset(rows)
