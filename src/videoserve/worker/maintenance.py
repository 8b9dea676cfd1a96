"""Housekeeping every API and worker process runs: the lease reaper and the retention sweeper.

Both are single atomic statements (or idempotent deletes), so any number of processes may run
them at once without coordination.
"""

from __future__ import annotations

import asyncio
import logging

from videoserve.jobs.characters import Characters
from videoserve.jobs.service import JobService
from videoserve.jobs.store import JobStore
from videoserve.settings import Settings

log = logging.getLogger("videoserve.maintenance")


class Maintenance:
    def __init__(
        self, settings: Settings, store: JobStore, service: JobService, characters: Characters
    ) -> None:
        self.settings = settings
        self.store = store
        self.service = service
        self.characters = characters

    async def reap(self) -> tuple[int, int]:
        """Requeue (or fail, when out of attempts) jobs whose worker stopped heartbeating."""
        return await self.store.reap_expired_leases(self.settings.retention_seconds)

    async def sweep(self) -> int:
        """Delete results past their retention, by the same path as DELETE /v1/videos/{id}."""
        deleted = await self.service.purge_expired()
        if deleted:
            log.info("retention: deleted %d expired requests", deleted)
        characters = await self.characters.sweep()
        if characters:
            log.info("retention: deleted %d expired characters", characters)
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        interval = min(self.settings.lease_seconds / 2, self.settings.sweep_interval_seconds)
        since_sweep = float("inf")
        while not stop.is_set():
            try:
                await self.reap()
                if since_sweep >= self.settings.sweep_interval_seconds:
                    await self.sweep()
                    since_sweep = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database down: try again next round
                log.warning("maintenance round failed: %s", exc)
            try:
                async with asyncio.timeout(interval):
                    await stop.wait()
            except TimeoutError:
                since_sweep += interval
