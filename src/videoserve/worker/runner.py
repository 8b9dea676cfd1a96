"""The worker: claim a job, keep its lease alive, run the model, store the video, finish.

The model runs in a thread so the event loop keeps heartbeating (and the embedded API keeps
answering) while a GPU is busy for minutes. The video is stored under a key that includes the
attempt, and only then is the job marked COMPLETED with the lease's fencing token: a worker that
lost its lease can upload, but never replace a newer attempt's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from PIL import Image

from videoserve import errors
from videoserve.jobs.failures import CANCELLED_MESSAGE, Failure, FailureCode
from videoserve.jobs.inputs import InputKind, JobInputs, is_manifest
from videoserve.jobs.records import Job, JobResult, Lease
from videoserve.jobs.service import job_blob_prefix
from videoserve.jobs.store import JobStore
from videoserve.jobs.workers import WorkerRegistry, WorkerState
from videoserve.media.encode import choose_encoder, encode_mp4, write_thumbnail
from videoserve.media.probe import VideoInfo
from videoserve.media.video_input import video_limits
from videoserve.models.backends.base import Cancelled, Capabilities, GenerationInputs
from videoserve.models.registry import ModelRegistry
from videoserve.observability import logs
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore
from videoserve.worker import operations

log = logging.getLogger("videoserve.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Signals:
    """Shared between the model thread and the event loop."""

    progress: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancelled", "lease lost", "timeout" or "draining"
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    """Claims and runs jobs until `stop` is set; `concurrency` jobs at a time."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: ModelRegistry,
        blobs: BlobStore,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.blobs = blobs
        self.worker_id = worker_id or default_worker_id()
        self.served_by = registry.served_models(settings.worker_models or None)
        self.current: dict[str, Job] = {}
        self.completed = 0
        self.draining = False
        self.presence = WorkerRegistry(store.database)
        self._scratch = Path(settings.data_dir) / "tmp"
        self._encoder = choose_encoder(settings.encoder)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; a job in hand is finished first (drain)."""
        log.info(
            "worker %s serving %s, %d at a time",
            self.worker_id,
            ", ".join(self.served_by),
            self.settings.worker_concurrency,
        )
        slots = [
            asyncio.create_task(self._slot(stop), name=f"worker-slot-{i}")
            for i in range(self.settings.worker_concurrency)
        ]
        presence = asyncio.create_task(self._announce(stop), name="worker-presence")
        try:
            await asyncio.gather(*slots)
        finally:
            for slot in slots:
                slot.cancel()
            # Let cancelled slots hand their jobs back before the worker disappears.
            await asyncio.gather(*slots, return_exceptions=True)
            presence.cancel()
            with contextlib.suppress(Exception):
                await self.presence.remove(self.worker_id)

    async def _announce(self, stop: asyncio.Event) -> None:
        """Keep this worker's row in the registry fresh (for GET /v1/admin/workers)."""
        while True:
            self.draining = stop.is_set()
            try:
                await self.presence.beat(
                    WorkerState(
                        id=self.worker_id,
                        host=socket.gethostname(),
                        models=self.served_by,
                        concurrency=self.settings.worker_concurrency,
                        current_jobs=sorted(self.current),
                        draining=self.draining,
                    )
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker %s: presence update failed: %s", self.worker_id, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_seconds):
                    await stop.wait()

    async def _slot(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                ran = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is unreachable, say: back off, then retry
                log.exception("worker %s: claim failed; retrying", self.worker_id)
                ran = False
            if not ran:
                # Woken at once by a submit in this process (or NOTIFY on PostgreSQL);
                # the timeout is the fallback poll for a worker in another process.
                waiter = asyncio.create_task(
                    self.store.wait_for_queued(self.settings.poll_interval_seconds)
                )
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in (waiter, stopper):
                    task.cancel()

    async def run_once(self) -> bool:
        """Claim and run one job if one is queued; False when the queue is empty."""
        claimed = await self.store.claim(
            self.worker_id, self.served_by, self.settings.lease_seconds
        )
        if claimed is None:
            return False
        job, lease = claimed
        self.current[job.id] = job
        try:
            with logs.job_context(job.id):  # every line about this job, in every thread, says so
                await self._execute(job, lease)
        finally:
            self.current.pop(job.id, None)
        return True

    async def _execute(self, job: Job, lease: Lease) -> None:
        started = time.time()
        signals = _Signals()
        reporter = asyncio.create_task(self._report(lease, signals), name=f"lease-{job.id}")
        retention = self.settings.retention_seconds
        time_limit = self._time_limit(job)
        timer = None
        if time_limit:
            # The model stops at its next step, as for a cancel; the job fails as a timeout.
            timer = asyncio.get_running_loop().call_later(time_limit, _time_out, signals)
        try:
            result = await self._produce(job, lease, signals)
        except asyncio.CancelledError:
            # Shutting down past the drain deadline: stop the model at its next step and hand
            # the job back without spending an attempt, so another worker starts it at once.
            signals.stop_reason = "draining"
            signals.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(lease))
            log.warning("job %s handed back to the queue (worker shutting down)", job.id)
            raise
        except Exception as exc:
            if signals.stop_reason == "timeout":
                timed_out = Failure(
                    FailureCode.TIMEOUT,
                    f"timeout: the job ran longer than its limit of {time_limit:g} s",
                )
                log.warning("job %s: %s (%s)", job.id, timed_out.message, type(exc).__name__)
                await self._persist(lambda: self.store.fail(lease, timed_out, retention))
                return
            if not isinstance(exc, Cancelled):
                failure = _failure_of(exc)
                log.exception("job %s failed (%s): %s", job.id, failure.code, failure.message)
                await self._persist(lambda: self.store.fail(lease, failure, retention))
                return
            if signals.stop_reason == "cancelled":
                cancelled = Failure(FailureCode.CANCELLED, CANCELLED_MESSAGE)
                await self._persist(lambda: self.store.fail(lease, cancelled, retention))
                log.info("job %s cancelled while running", job.id)
            else:
                log.warning("job %s: lease lost, abandoning attempt %d", job.id, lease.attempt)
            return
        finally:
            if timer is not None:
                timer.cancel()
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        result = dataclasses.replace(result, started_at=started)
        if await self._persist(lambda: self.store.complete(lease, result, retention)):
            self.completed += 1
            log.info("job %s completed in %.2fs", job.id, time.time() - started)
        else:
            # Our lease was taken over: this attempt's files must not outlive it.
            log.warning("job %s: lease lost before completion; discarding attempt", job.id)
            await self.blobs.delete_prefix(_attempt_prefix(lease))

    def _time_limit(self, job: Job) -> float:
        """Seconds this job may run: the model's `max_job_seconds`, else the setting; 0: none."""
        try:
            own = self.registry.compute_limits(job.served_by).max_job_seconds
        except errors.VideoserveError:
            own = None  # the model is gone from the registry; _produce says so
        return float(own or self.settings.max_job_seconds)

    async def _persist(self, write: Callable[[], Awaitable[bool]]) -> bool:
        """Run a finishing write, retrying while the database is unreachable.

        Gives up after a lease's length: by then the reaper has requeued the job anyway, and
        the fenced write would be refused."""
        deadline = time.monotonic() + self.settings.lease_seconds
        delay = 0.1
        while True:
            try:
                return await write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.error("giving up a finishing write: %s", exc)
                    return False
                log.warning("finishing write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _produce(self, job: Job, lease: Lease, signals: _Signals) -> JobResult:
        resolved = self.registry.backend(job.served_by)
        availability = resolved.availability()
        if not availability.available:
            raise errors.ModelUnavailable(
                f"model '{job.served_by}' is unavailable: {availability.reason}"
            )
        image = None
        references: tuple[Image.Image, ...] = ()
        inputs = await self._inputs(job)
        image_key = job.input_key if inputs is None else _image_key(inputs)
        operation = None
        if inputs is not None:
            operation = await operations.load(inputs, self.blobs, video_limits(self.settings))
            references = await self._references(job, inputs, resolved.capabilities)
        if image_key and operation is None:
            image = await self._picture(image_key)
        params = self.registry.resolve(job.model).schema.model_validate(
            job.params | _image_param(job)
        )
        loop = asyncio.get_running_loop()

        def on_progress(step: int, total: int) -> None:
            signals.progress = int(100 * step / max(total, 1))
            loop.call_soon_threadsafe(signals.changed.set)

        def generate():
            logs.quiet_model_libraries()
            resolved.load()
            begun = time.perf_counter()
            if operation is not None:
                video = operation.run(resolved, params, on_progress, signals.stop.is_set)
            else:
                inputs = GenerationInputs(image=image, reference_images=references)
                video = resolved.generate(params, inputs, on_progress, signals.stop.is_set)
            return video, time.perf_counter() - begun

        video, inference_time = await asyncio.to_thread(generate)
        try:
            return await self._store_video(video, inference_time, lease)
        except Exception as exc:
            raise _MediaStageError(f"media error: {type(exc).__name__}: {exc}") from exc

    async def _store_video(self, video: Any, inference_time: float, lease: Lease) -> JobResult:
        """Encode the MP4 and its thumbnail, and store both under the attempt's prefix."""
        self._scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._scratch) as scratch:
            video_path, thumb_path = Path(scratch) / "video.mp4", Path(scratch) / "thumb.jpg"
            begun = time.perf_counter()
            # Scratch files, not fsynced: the blob store makes its copies durable, and both
            # are stored before the job is marked COMPLETED.
            info = await asyncio.to_thread(_encode, video, video_path, thumb_path, self._encoder)
            encode_time = time.perf_counter() - begun
            prefix = _attempt_prefix(lease)
            await asyncio.gather(
                self.blobs.put_file(prefix + "thumbnail.jpg", thumb_path, "image/jpeg"),
                self.blobs.put_file(prefix + "video.mp4", video_path, "video/mp4"),
            )
        return JobResult(
            output_key=prefix + "video.mp4",
            thumbnail_key=prefix + "thumbnail.jpg",
            served_by=video.model,
            width=info.width,
            height=info.height,
            fps=info.fps,
            frames=info.frames,
            seconds=info.seconds,
            codec=info.codec,
            encoder=info.encoder,  # libx264, or h264_nvenc where it ran
            has_audio=info.has_audio,
            audio_sample_rate=info.audio_sample_rate,
            audio_codec=info.audio_codec,
            seed=getattr(video, "seed", None),
            segments=getattr(video, "segments", 1),
            inference_time=round(inference_time, 4),
            encode_time=round(encode_time, 4),
        )

    async def _inputs(self, job: Job) -> JobInputs | None:
        """The job's input manifest (edits, extensions, characters); None for a plain job."""
        if not is_manifest(job.input_key):
            return None
        assert job.input_key is not None
        return JobInputs.from_json(await self.blobs.get_bytes(job.input_key))

    async def _picture(self, key: str) -> Image.Image:
        return Image.open(io.BytesIO(await self.blobs.get_bytes(key))).convert("RGB")

    async def _references(
        self, job: Job, inputs: JobInputs, able: Capabilities
    ) -> tuple[Image.Image, ...]:
        """The characters' reference frames, for a model that takes reference images."""
        frames = inputs.of_kind(InputKind.REFERENCE)
        if frames and not able.reference_images:
            # Refused at submit already; a job whose model changed since is refused here too.
            raise errors.InvalidRequest(
                f"model '{job.served_by}' does not take reference images (characters)"
            )
        return tuple([await self._picture(frame.key) for frame in frames])

    async def _report(self, lease: Lease, signals: _Signals) -> None:
        """Heartbeat every third of a lease, and write progress as it changes (throttled)."""
        reported = -1
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_seconds):
                    await signals.changed.wait()
            signals.changed.clear()
            progress = signals.progress if signals.progress != reported else None
            try:
                beat = await self.store.heartbeat(lease, self.settings.lease_seconds, progress)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the model running; the next beat may get through
                log.warning("job %s: heartbeat failed: %s", lease.job_id, exc)
                continue
            if progress is not None:
                reported = progress
            if not beat.alive:
                signals.stop_reason = "lease lost"
                signals.stop.set()
                return
            if beat.cancel_requested:
                signals.stop_reason = "cancelled"
                signals.stop.set()
            # Progress is at most a few writes a second, however fast the steps are.
            await asyncio.sleep(0.2)


def _time_out(signals: _Signals) -> None:
    if signals.stop_reason is None:
        signals.stop_reason = "timeout"
        signals.stop.set()


def _encode(video: Any, video_path: Path, thumb_path: Path, encoder: str) -> VideoInfo:
    """The MP4 and its thumbnail, in one trip to a thread."""
    info = encode_mp4(
        video.frames,
        video.fps,
        video_path,
        durable=False,
        encoder=encoder,
        audio=getattr(video, "audio", None),
        sample_rate=getattr(video, "audio_sample_rate", None),
    )
    write_thumbnail(video.frames[0], thumb_path, durable=False)
    return info


def _attempt_prefix(lease: Lease) -> str:
    return f"{job_blob_prefix(lease.job_id)}{lease.attempt}/"


def _image_param(job: Job) -> dict[str, Any]:
    # The image is in blob storage under `input_key` (the stored params hold no data URI, and
    # a URL must not be fetched a second time).
    return {"input_reference": None} if job.input_key else {}


def _image_key(inputs: JobInputs) -> str | None:
    """A manifest's image input (first frame / guide), if it has one."""
    image = inputs.first(InputKind.IMAGE)
    return image.key if image else None


class _MediaStageError(Exception):
    """Encoding or storing the video failed (not the model)."""


def _failure_of(exc: BaseException) -> Failure:
    """The code and message a job fails with when producing its video raised `exc`."""
    if isinstance(exc, _MediaStageError):
        return Failure(FailureCode.MEDIA_ERROR, str(exc))
    if isinstance(exc, errors.ModelUnavailable):
        code = FailureCode.MODEL_UNAVAILABLE
    elif isinstance(exc, errors.InvalidRequest | pydantic.ValidationError):
        code = FailureCode.INPUT_INVALID
    else:
        code = FailureCode.MODEL_ERROR
    if isinstance(exc, errors.VideoserveError) and exc.message:
        return Failure(code, exc.message)
    return Failure(code, f"model error: {type(exc).__name__}: {exc}")
