"""Housekeeping every API and worker process runs: the lease reaper and the retention sweeper.

Both are single atomic statements (or idempotent deletes), so any number of processes may run
them at once without coordination.
"""

from __future__ import annotations

import asyncio
import logging

from videoserve.jobs.characters import Characters
from videoserve.jobs.service import job_blob_prefix
from videoserve.jobs.store import JobStore
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore

log = logging.getLogger("videoserve.maintenance")


class Maintenance:
    def __init__(self, settings: Settings, store: JobStore, blobs: BlobStore) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs

    async def reap(self) -> tuple[int, int]:
        """Requeue (or fail, when out of attempts) jobs whose worker stopped heartbeating."""
        return await self.store.reap_expired_leases(self.settings.retention_seconds)

    async def sweep(self) -> int:
        """Delete results past their retention: the video first, then the row."""
        deleted = 0
        while batch := await self.store.expired(limit=100):
            for job in batch:
                await self.blobs.delete_prefix(job_blob_prefix(job.id))
            deleted += await self.store.delete([job.id for job in batch])
        if deleted:
            log.info("retention: deleted %d expired requests", deleted)
        characters = await Characters(self.settings, self.store, self.blobs).sweep()
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
