"""Housekeeping every API and worker process runs: the lease reaper, the start-deadline
expiry and the retention sweeper.

Each is a single atomic statement (or idempotent deletes), so any number of processes may run
them at once without coordination. The reaper and the sweeper run on their intervals; the
expiry runs at the next start deadline (read from the database each round, and sooner when
this process's store notes a nearer one), so a job expires within moments of its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from videoserve import clock
from videoserve.jobs.store import JobStore
from videoserve.services.characters import Characters
from videoserve.services.jobs import JobService
from videoserve.settings import Settings

log = logging.getLogger("videoserve.maintenance")
# How long after a start deadline the expiry runs, so that its `start_deadline <= now` holds.
DEADLINE_SLACK_SECONDS = 0.01


class Maintenance:
    def __init__(
        self, settings: Settings, store: JobStore, service: JobService, characters: Characters
    ) -> None:
        self.settings = settings
        self.store = store
        self.service = service
        self.characters = characters
        self._remix_sources_settled = False

    async def reap(self) -> tuple[int, int]:
        """Requeue (or fail, when out of attempts) jobs whose worker stopped heartbeating."""
        return await self.store.reap_expired_leases(self.settings.retention_seconds)

    async def expire(self) -> int:
        """Fail (refunded) the queued jobs no worker started before their start deadline."""
        return len(await self.store.expire_unstarted(self.settings.retention_seconds))

    async def sweep(self) -> int:
        """Delete results past their retention, by the same path as DELETE /v1/videos/{id}."""
        deleted = await self.service.purge_expired()
        if not self._remix_sources_settled:  # rows made before migration 12: once a process
            settled = await self.service.settle_remix_sources()
            self._remix_sources_settled = True
            if settled:
                log.info("remix sources: read %d markers into their rows", settled)
        if deleted:
            log.info("retention: deleted %d expired requests", deleted)
        characters = await self.characters.sweep()
        if characters:
            log.info("retention: deleted %d expired characters", characters)
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        interval = min(self.settings.lease_seconds / 2, self.settings.sweep_interval_seconds)
        alarm = self.store.deadline_alarm
        next_reap = next_sweep = time.monotonic()
        while not stop.is_set():
            alarm.begin_round()
            deadline: float | None = None
            try:
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + interval
                    await self.reap()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
                    await self.sweep()
                await self.expire()
                deadline = await self.store.next_start_deadline()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database down: try again next round
                log.warning("maintenance round failed: %s", exc)
                next_reap = min(next_reap, time.monotonic() + interval)
            timeout = max(0.0, min(next_reap, next_sweep) - time.monotonic())
            now = clock.now()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - now) + DEADLINE_SLACK_SECONDS)
            await alarm.sleep_until(now + timeout, timeout, stop)
