"""Builds and owns every long-lived resource of one process, from one `Settings`.

`videoserve serve` and `videoserve worker` both start a Runtime; tests build as many as they
like. Nothing here is a module global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from videoserve.db.database import Database
from videoserve.jobs import estimates, schema, workers
from videoserve.jobs.fairness import SchedulingPolicy
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.store import JobStore, Policy
from videoserve.jobs.workers import WorkerRegistry
from videoserve.media.video_input import VideoDecoder, video_limits
from videoserve.models.registry import ModelRegistry
from videoserve.moderation import BlocklistModerator, Moderator
from videoserve.observability.metrics import Metrics, models_of
from videoserve.services import characters
from videoserve.services.accounts import AccountService
from videoserve.services.characters import Characters
from videoserve.services.files import Files
from videoserve.services.fleet import Fleet
from videoserve.services.jobs import JobService
from videoserve.services.maintenance import Maintenance
from videoserve.services.video_ops import VideoOperations
from videoserve.settings import Settings
from videoserve.storage import open_blob_store
from videoserve.storage.signing import UrlSigner
from videoserve.webhooks import tables as webhook_tables
from videoserve.webhooks.dispatcher import WebhookDispatcher
from videoserve.webhooks.urls import WebhookUrls

if TYPE_CHECKING:
    # Type only: a process that runs no embedded worker (an API-only one, `videoserve.api`
    # imported) loads no worker module; `start` imports it when it starts one.
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
        # The configured models behind every public name: the per-model gauges' and the
        # scaling report's rows, shown even while idle.
        self.metrics_models = models_of(self.registry.names(), self.registry.served_by)
        self.metrics = Metrics(
            self.metrics_models, multiprocess_dir=settings.prometheus_multiproc_dir
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
                scheduling=SchedulingPolicy(settings.scheduling_policy),
                default_job_seconds=settings.fair_default_job_seconds,
                refund_content_blocks=settings.refund_content_blocks,
                refund_running_cancellations=settings.refund_running_cancellations,
                warm_skip_seconds=settings.warm_skip_seconds,
            ),
            observer=self.metrics,
        )
        self.keys = KeyStore(self.database, cache_seconds=settings.auth_cache_seconds)
        self.workers = WorkerRegistry(self.database)
        # What live workers serve, read once in a while: a queued job's `waiting_reason`.
        self.served_models = workers.ServedModels(self.workers, self.worker_stale_after)
        # About when a queued job starts, from facts read per model every few seconds.
        self.start_estimates = estimates.StartEstimates(self.database, self.worker_stale_after)
        self.blobs = open_blob_store(settings.resolved_storage_url(), settings)
        self.signer = UrlSigner(settings.resolved_secret_key())
        self.service = JobService(
            settings,
            self.store,
            self.registry,
            self.blobs,
            moderator or BlocklistModerator(settings.blocklist),
            served_models=self.served_models,
            start_estimates=self.start_estimates,
        )
        self.accounts = AccountService(self.store)
        # One bound on concurrent decodes of callers' videos for the whole process.
        decoder = VideoDecoder(video_limits(settings), settings.max_concurrent_video_decodes)
        self.characters = Characters(settings, self.database, self.blobs, decoder)
        self.video_ops = VideoOperations(self.service, decoder)
        self.maintenance = Maintenance(settings, self.store, self.service, self.characters)
        self.webhooks = WebhookDispatcher(
            settings, self.store, blobs=self.blobs, signer=self.signer
        )
        self.webhook_urls = WebhookUrls(
            allow_private=settings.allow_private_urls, resolver=self.webhooks.resolver
        )
        self.files = Files(self.blobs, self.signer)
        self.fleet = Fleet(
            self.store, self.workers, self.metrics, self.metrics_models, self.worker_stale_after
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
            from videoserve.worker.runner import Worker  # see the TYPE_CHECKING import

            self.worker = Worker(
                self.settings, self.store, self.registry, self.blobs, metrics=self.metrics
            )
            self.fleet.embedded_readiness = self.worker.readiness
            self._tasks.append(asyncio.create_task(self.worker.run(self._stop), name="worker"))

    @property
    def worker_stale_after(self) -> float:
        """Seconds without a heartbeat after which a worker no longer counts as live."""
        return workers.stale_after(self.settings.heartbeat_seconds)

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
        await self.service.input_hosts.close()
        await self.webhooks.resolver.close()
        await self.blobs.close()
        await self.store.close()
