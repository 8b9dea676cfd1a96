"""Signals to autoscale: per model, what is queued and running, which workers serve it and
have it loaded, how long its jobs take, and how many workers it wants.

Read at scrape time (`/metrics`) and by `GET /v1/admin/scaling`, from the jobs and workers
tables; any API process gives the same answer. The arithmetic of `desired_workers` is here
alone, and docs/api.md states it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import sqlalchemy as sa

from videoserve import clock
from videoserve.db.database import Database
from videoserve.jobs import schema
from videoserve.jobs.states import Status

jobs = schema.jobs
workers = schema.workers

LOW_PRIORITY = 0  # `fairness.Priority.LOW` (fairness imports this module)
RECENT_JOBS = 20  # completed jobs per model that `recent_job_seconds` averages


@dataclass(frozen=True)
class QueueState:
    """One model's jobs now."""

    queued: int = 0
    running: int = 0
    oldest_queued_at: float | None = None  # created_at of its oldest QUEUED job
    demand: int = 0  # QUEUED and not low priority: what an autoscaler should serve


@dataclass(frozen=True)
class WorkerCounts:
    """One model's live workers (heard from recently, not draining)."""

    live: int = 0  # serving the model
    warm: int = 0  # with the model loaded now
    slots: int = 0  # jobs the live ones run at once (their concurrency, summed)


@dataclass(frozen=True)
class ModelScaling:
    """`GET /v1/admin/scaling`'s entry for one model."""

    model: str
    demand: int
    running: int
    live_workers: int
    warm_workers: int
    recent_job_seconds: float | None
    oldest_queued_seconds: float | None
    desired_workers: int


async def queue_states(database: Database) -> dict[str, QueueState]:
    """Per model (`served_by`): jobs QUEUED (and of those, the demand: not low priority) and
    PROCESSING, and the oldest queued one's age. One grouped read over ix_jobs_queue's
    statuses."""
    wanted = sa.func.sum(sa.case((jobs.c.priority > LOW_PRIORITY, 1), else_=0))
    query = (
        sa.select(
            jobs.c.served_by,
            jobs.c.status,
            sa.func.count(),
            sa.func.min(jobs.c.created_at),
            wanted,
        )
        .where(jobs.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value]))
        .group_by(jobs.c.served_by, jobs.c.status)
    )
    found: dict[str, QueueState] = {}
    async with database.connect() as conn:
        rows = (await conn.execute(query)).all()
    for model, status, count, oldest, demand in rows:
        state = found.get(model, QueueState())
        if status == Status.QUEUED.value:
            state = replace(state, queued=int(count), oldest_queued_at=oldest, demand=int(demand))
        else:
            state = replace(state, running=int(count))
        found[model] = state
    return found


async def worker_counts(database: Database, stale_after: float) -> dict[str, WorkerCounts]:
    """Per model: the live, undrained workers serving it, those with it loaded, their slots."""
    query = sa.select(workers.c.models, workers.c.loaded_models, workers.c.concurrency).where(
        workers.c.last_heartbeat >= clock.now() - stale_after, sa.not_(workers.c.draining)
    )
    async with database.connect() as conn:
        rows = (await conn.execute(query)).all()
    live: dict[str, int] = {}
    warm: dict[str, int] = {}
    slots: dict[str, int] = {}
    for models, loaded, concurrency in rows:
        for model in set(models or ()):
            live[model] = live.get(model, 0) + 1
            slots[model] = slots.get(model, 0) + int(concurrency or 1)
        for model in {m.get("model") for m in loaded or () if m.get("error") is None}:
            if isinstance(model, str):
                warm[model] = warm.get(model, 0) + 1
    return {
        model: WorkerCounts(live.get(model, 0), warm.get(model, 0), slots.get(model, 0))
        for model in {*live, *warm}
    }


async def recent_job_seconds(database: Database, served_by: str) -> float | None:
    """The mean inference + encode seconds of the model's last `RECENT_JOBS` completed jobs
    (those whose results say both); None when it has none."""
    query = (
        sa.select(jobs.c.result)
        .where(jobs.c.served_by == served_by, jobs.c.status == Status.COMPLETED.value)
        .order_by(jobs.c.finished_at.desc())
        .limit(RECENT_JOBS)
    )
    async with database.connect() as conn:
        rows = (await conn.execute(query)).all()
    seconds = []
    for (result,) in rows:  # the two numbers only: no need to build a whole `JobResult`
        inference = (result or {}).get("inference_time")
        encode = (result or {}).get("encode_time")
        if isinstance(inference, int | float):
            seconds.append(inference + (encode if isinstance(encode, int | float) else 0.0))
    return sum(seconds) / len(seconds) if seconds else None


def desired_workers(
    demand: int, running: int, job_seconds: float | None, target_wait: float, slots_per_worker: int
) -> int:
    """Workers a model wants: enough to clear its queue within `target_wait` seconds, plus
    those its running jobs hold.

        queue part   = ceil(demand * job_seconds / target_wait)   (1 while job_seconds is
                       unknown and demand > 0: one worker, to learn how long its jobs take)
        running part = ceil(running / slots_per_worker)           (slots_per_worker >= 1)

    0 when nothing is queued or running; never negative."""
    if demand <= 0 and running <= 0:
        return 0
    queue_part = 0
    if demand > 0:
        queue_part = 1 if job_seconds is None else math.ceil(demand * job_seconds / target_wait)
    running_part = math.ceil(max(0, running) / max(1, slots_per_worker))
    return max(0, queue_part + running_part)


async def report(
    database: Database, models: Iterable[str], stale_after: float, target_wait: float
) -> list[ModelScaling]:
    """Every configured model's scaling entry (and any other model with jobs now)."""
    queues = await queue_states(database)
    counts = await worker_counts(database, stale_after)
    now = clock.now()
    entries = []
    for model in sorted({*models, *queues}):
        queue = queues.get(model, QueueState())
        workers_of = counts.get(model, WorkerCounts())
        seconds = await recent_job_seconds(database, model)
        if seconds is not None:
            seconds = round(seconds, 3)  # as shown: `desired_workers` follows from the shown
        per_worker = max(1, workers_of.slots // workers_of.live) if workers_of.live else 1
        entries.append(
            ModelScaling(
                model=model,
                demand=queue.demand,
                running=queue.running,
                live_workers=workers_of.live,
                warm_workers=workers_of.warm,
                recent_job_seconds=seconds,
                oldest_queued_seconds=(
                    None
                    if queue.oldest_queued_at is None
                    else round(max(0.0, now - queue.oldest_queued_at), 3)
                ),
                desired_workers=desired_workers(
                    queue.demand, queue.running, seconds, target_wait, per_worker
                ),
            )
        )
    return entries
