"""The operator's view of the system: live workers, the queue, scaling signals, metrics and
this process's readiness. What the admin, metrics and health routes read, and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from videoserve.jobs import scaling
from videoserve.jobs.store import JobStore
from videoserve.jobs.workers import WorkerRegistry
from videoserve.observability.metrics import Metrics

log = logging.getLogger("videoserve.metrics")

# An embedded worker's answer to `/readyz`: whether its models are loaded, and the body.
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class Fleet:
    def __init__(
        self,
        store: JobStore,
        workers: WorkerRegistry,
        metrics: Metrics,
        models: Sequence[str],
        stale_after: float,
    ) -> None:
        self._store = store
        self._workers = workers
        self._metrics = metrics
        self._models = models  # every configured model: scaling rows even while idle
        self._stale_after = stale_after
        # Set while this process runs an embedded worker (`Runtime.start`); None: API only.
        self.embedded_readiness: Readiness | None = None

    async def live_workers(self) -> list[dict[str, Any]]:
        """Workers heard from recently, newest first (older rows are pruned)."""
        return await self._workers.live(self._stale_after)

    async def count_live_workers(self) -> int:
        return await self._workers.count_live(self._stale_after)

    async def queue(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return await self._store.count_by_status()

    async def scaling(self, target_wait: float) -> list[scaling.ModelScaling]:
        """Per model: demand, running, live and warm workers, and the workers it wants."""
        return await scaling.report(
            self._store.database, self._models, self._stale_after, target_wait
        )

    async def metrics_text(self) -> bytes:
        """The Prometheus text; with the database down, what this process counted itself."""
        try:
            await self._metrics.refresh(self._store, self._workers, self._stale_after)
        except Exception as exc:
            log.warning("metrics: cannot read the job database: %s", exc)
            self._metrics.forget_database()
        return self._metrics.render()

    async def ping(self) -> None:
        """Raises when the database does not answer."""
        await self._store.ping()
