"""Builds and owns every long-lived resource of one process, from one `Settings`.

`videoserve serve` and `videoserve worker` both start a Runtime; tests build as many as they
like. Nothing here is a module global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from videoserve.jobs import characters, schema
from videoserve.jobs.accounts import AccountService
from videoserve.jobs.characters import Characters
from videoserve.jobs.database import Database
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.service import JobService
from videoserve.jobs.store import JobStore, Policy
from videoserve.jobs.video_ops import VideoOperations
from videoserve.jobs.workers import WorkerRegistry
from videoserve.models.registry import ModelRegistry
from videoserve.moderation import BlocklistModerator, Moderator
from videoserve.observability.metrics import Metrics, models_of
from videoserve.settings import Settings
from videoserve.storage import open_blob_store
from videoserve.storage.signing import UrlSigner
from videoserve.webhooks import tables as webhook_tables
from videoserve.webhooks.dispatcher import WebhookDispatcher
from videoserve.worker.maintenance import Maintenance
from videoserve.worker.runner import Worker

log = logging.getLogger("videoserve")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ModelRegistry | None = None,
        moderator: Moderator | None = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry or ModelRegistry.from_settings(settings)
        self.metrics = Metrics(
            models_of(self.registry.names(), self.registry.served_by),
            multiprocess_dir=settings.prometheus_multiproc_dir,
        )
        # The one database seam, with every package's tables (jobs/ cannot know webhooks/).
        self.database = Database(
            settings.resolved_database_url(),
            pool_size=settings.database_pool_size,
            migrations=(schema.MIGRATIONS, characters.MIGRATIONS, webhook_tables.MIGRATIONS),
        )
        self.store = JobStore(
            self.database,
            policy=Policy(
                max_running_per_key=settings.max_running_per_key,
                refund_content_blocks=settings.refund_content_blocks,
                refund_running_cancellations=settings.refund_running_cancellations,
            ),
            observer=self.metrics,
        )
        self.keys = KeyStore(self.database, cache_seconds=settings.auth_cache_seconds)
        self.workers = WorkerRegistry(self.database)
        self.blobs = open_blob_store(settings.resolved_storage_url(), settings)
        self.signer = UrlSigner(settings.resolved_secret_key())
        self.service = JobService(
            settings,
            self.store,
            self.registry,
            self.blobs,
            moderator or BlocklistModerator(settings.blocklist),
        )
        self.accounts = AccountService(self.store)
        self.characters = Characters(settings, self.database, self.blobs)
        self.video_ops = VideoOperations(self.service)
        self.maintenance = Maintenance(settings, self.store, self.service, self.characters)
        self.webhooks = WebhookDispatcher(
            settings, self.store, blobs=self.blobs, signer=self.signer
        )
        self.worker: Worker | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, worker: bool, maintenance: bool = True) -> None:
        await self.store.start()
        if maintenance:
            self._tasks.append(
                asyncio.create_task(self.maintenance.run(self._stop), name="maintenance")
            )
            self._tasks.append(asyncio.create_task(self.webhooks.run(self._stop), name="webhooks"))
        if worker:
            self.worker = Worker(self.settings, self.store, self.registry, self.blobs)
            self._tasks.append(asyncio.create_task(self.worker.run(self._stop), name="worker"))

    @property
    def worker_stale_after(self) -> float:
        """Seconds without a heartbeat after which a worker no longer counts as live."""
        return 3 * self.settings.heartbeat_seconds + 1

    async def wait(self) -> None:
        """Until every background task ends (after `stop`)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self, *, grace: float = 30.0) -> None:
        """Stop claiming; let a running job finish within `grace`, then close everything."""
        self._stop.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.blobs.close()
        await self.store.close()
