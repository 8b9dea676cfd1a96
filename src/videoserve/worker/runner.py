"""The worker: claim a job, keep its lease alive, run the model, store the video, finish.

Each slot is a two-stage pipeline. The model stage (the GPU) of one job overlaps the media stage
(encode, thumbnail, upload, finishing write: CPU and network) of the job before it: as soon as
a job's frames are handed to the media stage, the slot claims the next job and starts its model.
The bound is one job in the media stage per slot: a model that finishes while its predecessor
is still encoding waits with its frames, and nothing more is claimed meanwhile, so a slot never
holds more than two videos' frames. `VIDEOSERVE_WORKER_PIPELINE=false` runs the stages of one
job after the other instead.

Every guarantee is the attempt's (`attempt.Attempt`): the lease is heartbeated from the claim to
the finishing write, the video is stored before the job is marked COMPLETED with the lease's
fencing token, and a worker that lost its lease can upload, but never replace a newer attempt's
result (its files are deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from typing import Any

from videoserve.jobs.failures import CANCELLED_MESSAGE, Failure, FailureCode
from videoserve.jobs.handoff import StandingClaim
from videoserve.jobs.records import Job, Lease
from videoserve.jobs.store import JobStore
from videoserve.jobs.workers import WorkerRegistry, WorkerState
from videoserve.models.backends.base import Cancelled
from videoserve.models.registry import ModelRegistry
from videoserve.observability import logs
from videoserve.observability.metrics import Metrics
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore
from videoserve.worker import preload
from videoserve.worker.attempt import Attempt
from videoserve.worker.group import GroupLost, WorkerGroup, check_plans
from videoserve.worker.media_stage import MediaStage, ProducedVideo
from videoserve.worker.model_stage import ModelStage, failure_of

log = logging.getLogger("videoserve.worker")

GROUP_LOSSES_PER_JOB = 3  # a job that loses the worker group this often fails (worker_lost)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Claims and runs jobs until `stop` is set; `concurrency` slots, each a two-stage pipeline."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: ModelRegistry,
        blobs: BlobStore,
        *,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`metrics`: where its model loads are counted and timed (the process's /metrics)."""
        self.settings = settings
        self.store = store
        self.registry = registry
        self.blobs = blobs
        self.worker_id = worker_id or default_worker_id()
        self.served_by = registry.served_models(settings.worker_models or None)
        # A group of ranks when VIDEOSERVE_WORKER_DEVICES lists several devices; its entries'
        # splits are checked now, so a plan that cannot run stops the worker before it starts.
        devices = settings.worker_devices
        self.group = WorkerGroup(settings, devices) if len(devices) > 1 else None
        self.served_by = check_plans(registry, self.served_by, self.group)
        # With a group, one job at a time: a parallel job holds every device of the group.
        self.concurrency = 1 if self.group is not None else settings.worker_concurrency
        # Checked here, so a mistyped VIDEOSERVE_PRELOAD stops the worker before it starts.
        self.preloading = preload.models_to_preload(registry, settings.preload, self.served_by)
        self.loads = preload.ModelLoads(None if metrics is None else metrics.model_loaded)
        self.ready = False  # claims nothing until its preloads are done
        self.current: dict[str, Job] = {}
        self.completed = 0
        self.draining = False
        self.presence = WorkerRegistry(store.database)
        self._models = ModelStage(settings, registry, blobs, self.loads, self.group)
        self._media = MediaStage(settings, blobs)
        self._news = asyncio.Event()  # something to announce before the next beat (ready)
        self._idle_since = time.monotonic()  # when its last job ended (or it became ready)
        self.exited = False  # run() has returned or raised: nothing claims jobs any more
        self._group_losses: dict[str, int] = {}  # job id -> times the group was lost running it

    async def run(self, stop: asyncio.Event) -> None:
        """Preload, then work until `stop` is set; jobs in hand are finished first (drain)."""
        presence = asyncio.create_task(self._announce(stop), name="worker-presence")
        slots: list[asyncio.Task[None]] = []
        concurrency = self.concurrency
        try:
            await self._preload()
            log.info(
                "worker %s serving %s, %d at a time%s%s",
                self.worker_id,
                ", ".join(self.served_by) or "nothing",
                concurrency,
                "" if self.settings.worker_pipeline else " (pipelining off)",
                f", a group of {self.group.size} ranks" if self.group is not None else "",
            )
            slots = [
                asyncio.create_task(self._slot(stop), name=f"worker-slot-{i}")
                for i in range(concurrency)
            ]
            await asyncio.gather(*slots)
        finally:
            for slot in slots:
                slot.cancel()
            # Let cancelled slots hand their jobs back before the worker disappears.
            await asyncio.gather(*slots, return_exceptions=True)
            presence.cancel()
            if self.group is not None:
                await asyncio.to_thread(self.group.stop)
            self.exited = True
            with contextlib.suppress(Exception):
                await self.presence.remove(self.worker_id)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this worker's models are loaded, and the body a `/readyz` answers with:
        `loading` while it preloads, `unavailable` when every model it was to serve failed."""
        failed = self.loads.failed()
        body: dict[str, Any] = {
            "models_loaded": [load.to_json() for load in self.loads.in_memory(self.registry)],
            "models_failed": [load.to_json() for load in failed],
        }
        if not self.ready:
            loading = ", ".join(self.preloading)
            return False, {"status": "loading", "error": f"loading models: {loading}"} | body
        if not self.served_by:
            names = ", ".join(load.model for load in failed)
            error = f"no model to serve: every model failed to load ({names})"
            return False, {"status": "unavailable", "error": error} | body
        return True, {"status": "ready"} | body

    async def _preload(self) -> None:
        """Load VIDEOSERVE_PRELOAD's models, stop serving those that fail, then be ready."""
        if self.preloading:
            begun = time.perf_counter()
            await preload.preload(self.registry, self.preloading, self.loads)
            failed = {load.model for load in self.loads.failed()}
            self.served_by = [name for name in self.served_by if name not in failed]
            log.info(
                "worker %s preloaded %d of %d models in %.2fs",
                self.worker_id,
                len(self.preloading) - len(failed),
                len(self.preloading),
                time.perf_counter() - begun,
            )
        self.ready = True
        self._idle_since = time.monotonic()
        self._news.set()  # wake the presence loop: say "ready" now, not a beat later

    async def _announce(self, stop: asyncio.Event) -> None:
        """Keep this worker's row in the registry fresh (for GET /v1/admin/workers)."""
        while True:
            self.draining = stop.is_set()
            self._news.clear()
            try:
                await self.presence.beat(
                    WorkerState(
                        id=self.worker_id,
                        host=socket.gethostname(),
                        models=self.served_by,
                        concurrency=self.concurrency,
                        current_jobs=sorted(self.current),
                        draining=self.draining,
                        ready=self.ready,
                        loaded_models=[
                            load.to_json() for load in self.loads.reported(self.registry)
                        ],
                    )
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker %s: presence update failed: %s", self.worker_id, exc)
            # Until the next beat, or sooner when it has news (ready, or draining).
            waits = {asyncio.ensure_future(self._news.wait())}
            if not stop.is_set():
                waits.add(asyncio.ensure_future(stop.wait()))
            await asyncio.wait(
                waits, timeout=self.settings.heartbeat_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waits:
                waiter.cancel()

    async def _slot(self, stop: asyncio.Event) -> None:
        """Claim, run the model, hand the frames to the media stage, claim the next."""
        media: asyncio.Task[None] | None = None  # the previous job's media stage
        try:
            while not stop.is_set():
                attempt = await self._claim()
                if attempt is None:
                    attempt = await self._wait_for_work(stop)
                    if attempt is None:
                        continue
                produced = await self._model_stage(attempt)
                if produced is None:
                    continue
                if media is not None:
                    # The bound: this job's frames wait until the slot's media stage is free.
                    try:
                        await media
                    except asyncio.CancelledError:
                        await self._hand_back(attempt)
                        raise
                    media = None
                media = asyncio.create_task(
                    self._media_stage(attempt, produced), name=f"media-{attempt.job.id}"
                )
                if not self.settings.worker_pipeline:
                    await media
                    media = None
            if media is not None:  # draining: the last video is stored before we stop
                await media
        except asyncio.CancelledError:
            if media is not None:
                media.cancel()
                await asyncio.gather(media, return_exceptions=True)
            raise

    async def _claim(self) -> Attempt | None:
        """A claimed job with its lease's heartbeat running; None when none is queued."""
        if not self.served_by:
            return None  # every model this worker was meant to serve failed to load
        try:
            claimed = await self.store.claim(
                self.worker_id, self.served_by, self.settings.lease_seconds, self.warm_models()
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # the database is unreachable, say: back off, then retry
            log.exception("worker %s: claim failed; retrying", self.worker_id)
            return None
        return None if claimed is None else self._attempt(*claimed)

    def warm_models(self) -> list[str]:
        """The served models whose weights are in memory now (an adapter entry's: its base's),
        which its claims prefer (warm routing, `JobStore.claim`)."""
        return [model for model in self.served_by if self.registry.is_loaded(model)]

    def idle_seconds(self) -> float:
        """How long this worker has had no job in hand (0 while it has one, or preloads)."""
        if self.current or not self.ready:
            return 0.0
        return time.monotonic() - self._idle_since

    def _attempt(self, job: Job, lease: Lease) -> Attempt:
        self.current[job.id] = job
        return Attempt(job, lease, self.store, self.settings, self._models.time_limit(job))

    async def _wait_for_work(self, stop: asyncio.Event) -> Attempt | None:
        """Wait until a job may be claimable: None then, and the slot claims. A submit in this
        process claims for the waiting slot itself (a standing claim, see `jobs.handoff`):
        then the job it claimed, unless the worker is stopping (it goes back to the queue)."""
        offer = self.store.standing.stand_by(
            self.worker_id, self.served_by, self.settings.lease_seconds, self.warm_models()
        )
        # Woken at once by a submit in this process (or NOTIFY on PostgreSQL); the timeout
        # is the fallback poll for a worker in another process.
        waiter = asyncio.create_task(
            self.store.wait_for_queued(self.settings.poll_interval_seconds)
        )
        stopper = asyncio.create_task(stop.wait())
        waits: set[asyncio.Future[Any]] = {waiter, stopper, offer.taken}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._end_offer(offer, keep=False)
            raise
        finally:
            for task in (waiter, stopper):
                task.cancel()
        return await self._end_offer(offer, keep=not stop.is_set())

    async def _end_offer(self, offer: StandingClaim, *, keep: bool) -> Attempt | None:
        """Withdraw a standing claim: the job a submit claimed for it meanwhile, or None.

        Unless `keep`, that job goes back to the queue at once (the worker is stopping): it
        must not be left holding a lease nobody renews."""
        if self.store.standing.withdraw(offer):
            return None
        claimed = await offer.taken  # the submit's transaction ends in a moment
        if claimed is None:
            return None
        attempt = self._attempt(*claimed)
        if not keep:
            await self._hand_back(attempt)
            return None
        return attempt

    async def _model_stage(self, attempt: Attempt) -> ProducedVideo | None:
        """The job's frames; None when the attempt ended here (failed, cancelled or lost)."""
        with logs.job_context(attempt.job.id):  # every line about this job, in every thread
            try:
                return await self._models.run(attempt.job, attempt.signals)
            except asyncio.CancelledError:
                # Shutting down past the drain deadline: stop the model at its next step and
                # hand the job back without spending an attempt, so another worker starts it.
                await self._hand_back(attempt)
                raise
            except GroupLost as exc:
                # A rank died or hung: not the job's fault. The group is stopped; the job goes
                # back without spending an attempt, and the next parallel job restarts it.
                # A job that loses the group every time (a rank the kernel kills for memory,
                # say) fails after a few, rather than going round for ever.
                job_id = attempt.job.id
                self._group_losses[job_id] = self._group_losses.get(job_id, 0) + 1
                if self._group_losses[job_id] < GROUP_LOSSES_PER_JOB:
                    await self._hand_back(attempt, f"worker group lost: {exc}")
                    return None
                message = (
                    f"worker lost: the worker group failed {GROUP_LOSSES_PER_JOB} times "
                    f"running this job (last: {exc})"
                )
                failure = Failure(FailureCode.WORKER_LOST, message)
                retention = self.settings.retention_seconds
                await attempt.persist(lambda: self.store.fail(attempt.lease, failure, retention))
                await self._close(attempt)
                return None
            except Exception as exc:
                await self._end_without_video(attempt, exc)
                await self._close(attempt)
                return None

    async def _media_stage(self, attempt: Attempt, produced: ProducedVideo) -> None:
        """Encode and store the video, then mark the job COMPLETED (fenced by its lease)."""
        job, lease = attempt.job, attempt.lease
        retention = self.settings.retention_seconds
        with logs.job_context(job.id):
            try:

                async def still_wanted() -> bool:
                    # Cancelled or taken over while it waited for the media stage (or since
                    # the last beat)? Asked while the frames encode; nothing is stored if so.
                    await attempt.check_in()
                    return attempt.signals.stop_reason is None

                try:
                    stored = await self._media.store(
                        produced, lease, still_wanted, attempt.signals.enter
                    )
                except Exception as exc:
                    await self._end_without_video(attempt, exc)
                    return
                if stored is None:
                    await self._end_without_video(attempt, None)
                    return
                result = stored
                result = dataclasses.replace(result, started_at=attempt.started)
                if await attempt.persist(lambda: self.store.complete(lease, result, retention)):
                    self.completed += 1
                    log.info("job %s completed in %.2fs", job.id, time.time() - attempt.started)
                else:
                    # Our lease was taken over: this attempt's files must not outlive it.
                    log.warning("job %s: lease lost before completion; discarding attempt", job.id)
                    await self._media.discard(lease)
            except asyncio.CancelledError:
                await self._hand_back(attempt)
                raise
            except Exception:  # deleting a lost attempt's files, say: the slot goes on
                log.exception("job %s: the media stage failed", job.id)
            finally:
                await self._close(attempt)

    async def _end_without_video(self, attempt: Attempt, exc: Exception | None) -> None:
        """Record how an attempt ended without a video: timeout, error, cancel or lost lease."""
        job, lease, signals = attempt.job, attempt.lease, attempt.signals
        retention = self.settings.retention_seconds
        if signals.stop_reason == "timeout":
            failure = Failure(
                FailureCode.TIMEOUT,
                f"timeout: the job ran longer than its limit of {attempt.time_limit:g} s",
            )
            cause = type(exc).__name__ if exc else "waiting for the media stage"
            log.warning("job %s: %s (%s)", job.id, failure.message, cause)
        elif exc is not None and not isinstance(exc, Cancelled):
            failure = failure_of(exc)
            log.exception("job %s failed (%s): %s", job.id, failure.code, failure.message)
        elif signals.stop_reason == "cancelled":
            failure = Failure(FailureCode.CANCELLED, CANCELLED_MESSAGE)
            log.info("job %s cancelled while running", job.id)
        else:
            log.warning("job %s: lease lost, abandoning attempt %d", job.id, lease.attempt)
            return
        await attempt.persist(lambda: self.store.fail(lease, failure, retention))

    async def _hand_back(self, attempt: Attempt, why: str = "worker shutting down") -> None:
        await attempt.hand_back(why)
        await self._close(attempt)

    async def _close(self, attempt: Attempt) -> None:
        await attempt.close()
        self.current.pop(attempt.job.id, None)
        self._idle_since = time.monotonic()
        if attempt.signals.end_previews is not None:
            # A preview lives while its job runs; the job has ended (or gone back to the queue).
            with contextlib.suppress(Exception):
                await attempt.signals.end_previews()
