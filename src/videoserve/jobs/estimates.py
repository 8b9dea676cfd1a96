"""Honest waiting: about when a queued job will start (`estimated_start_seconds`).

    estimated_start_seconds = ceil(queue_position / slots) * recent_job_seconds

`slots`: the jobs the live, undrained workers serving its model run at once (their
concurrency, summed); `recent_job_seconds`: the mean inference + encode seconds of the model's
last completed jobs (`scaling.recent_job_seconds`, as `GET /v1/admin/scaling` shows). The jobs
ahead of it are worked off `slots` at a time, and the running ones are taken as just begun:
an upper estimate while the queue is steady, off by up to a job's duration either way when
workers come and go. None (shown as null) when nothing is known: no completed job of the model
yet, or no live worker serving it (then `waiting_reason` says so).

Why a cache: the estimate is shown on every poll of a queued job, the hottest request. The two
facts behind it are read per model at most once per `ttl` seconds in this process (the first
poll of a model reads before it answers; later ones answer from the last read while the next
runs), never an aggregate per poll: a poll costs a dictionary lookup and a multiplication.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from videoserve.db.database import Database
from videoserve.jobs import scaling

log = logging.getLogger("videoserve.jobs")


@dataclass(frozen=True)
class _Facts:
    """What the last read said of one model."""

    job_seconds: float | None
    slots: int
    read_at: float  # time.monotonic() of the read


def estimate(position: int | None, job_seconds: float | None, slots: int) -> float | None:
    """Seconds until the job at `position` (1: next) starts; None when it cannot be told."""
    if position is None or position < 1 or job_seconds is None or slots < 1:
        return None
    return round(math.ceil(position / slots) * job_seconds, 1)


class StartEstimates:
    """Per model, the facts an estimate needs, read at most once per `ttl` seconds."""

    def __init__(self, database: Database, stale_after: float, ttl: float = 5.0) -> None:
        self._database = database
        self._stale_after = stale_after
        self._ttl = ttl
        self._facts: dict[str, _Facts] = {}
        self._reading: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}  # a first read that failed: one try per ttl

    def answers_now(self, served_by: str) -> bool:
        """Whether `seconds_now` can answer for `served_by` without a read: its facts were
        read, or its first read failed moments ago (then it says nothing rather than guess)."""
        return (
            served_by in self._facts
            or time.monotonic() - self._failed_at.get(served_by, -math.inf) <= self._ttl
        )

    def seconds_now(self, served_by: str, position: int | None) -> float | None:
        """`seconds` from the facts this process has read (`answers_now` must hold), with no
        wait: a status poll's path. Starts the next read when the last is `ttl` old; the next
        call sees it."""
        facts = self._facts.get(served_by)
        if facts is None:
            return None
        if time.monotonic() - facts.read_at > self._ttl and served_by not in self._reading:
            self._start_read(served_by)
        return estimate(position, facts.job_seconds, facts.slots)

    async def seconds(self, served_by: str, position: int | None) -> float | None:
        """About how long until the QUEUED job at `position` of `served_by`'s queue starts.
        The first call of a process for a model reads before it answers."""
        if not self.answers_now(served_by):
            # Concurrent first polls of a model share one read.
            await asyncio.shield(self._reading.get(served_by) or self._start_read(served_by))
        return self.seconds_now(served_by, position)

    def _start_read(self, served_by: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._read(served_by))
        self._reading[served_by] = task
        task.add_done_callback(lambda _: self._reading.pop(served_by, None))
        return task

    async def _read(self, served_by: str) -> None:
        read_at = time.monotonic()
        try:
            counts = await scaling.worker_counts(self._database, self._stale_after)
            seconds = await scaling.recent_job_seconds(self._database, served_by)
        except Exception as exc:  # the database is down: keep the last answer, retry later
            log.warning("could not read the start estimate of %s: %s", served_by, exc)
            old = self._facts.get(served_by)
            if old is not None:
                self._facts[served_by] = _Facts(old.job_seconds, old.slots, read_at)
            else:
                self._failed_at[served_by] = read_at
            return
        slots = counts.get(served_by, scaling.WorkerCounts()).slots
        self._facts[served_by] = _Facts(seconds, slots, read_at)
