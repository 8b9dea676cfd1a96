"""The model stage: a job's inputs fetched, its model run in a thread, its frames handed on.

The model runs in a thread so the event loop keeps heartbeating (and the embedded API keeps
answering, and the previous job's media stage keeps encoding) while a GPU is busy for minutes.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import pydantic
from PIL import Image

from videoserve import errors
from videoserve.jobs.failures import Failure, FailureCode
from videoserve.jobs.inputs import InputKind, JobInputs, is_manifest
from videoserve.jobs.records import Job
from videoserve.media.video_input import video_limits
from videoserve.models.backends.base import Capabilities, GeneratedVideo, GenerationInputs
from videoserve.models.registry import ModelRegistry
from videoserve.observability import logs
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore
from videoserve.worker import operations
from videoserve.worker.attempt import Signals
from videoserve.worker.media_stage import MediaStageError, ProducedVideo
from videoserve.worker.preload import ModelLoad, ModelLoads


class ModelStage:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, blobs: BlobStore, loads: ModelLoads
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._blobs = blobs
        self._loads = loads

    def time_limit(self, job: Job) -> float:
        """Seconds this job may run: the model's `max_job_seconds`, else the setting; 0: none."""
        try:
            own = self._registry.compute_limits(job.served_by).max_job_seconds
        except errors.VideoserveError:
            own = None  # the model is gone from the registry; `run` says so
        return float(own or self._settings.max_job_seconds)

    async def run(self, job: Job, signals: Signals) -> ProducedVideo:
        """The job's frames; raises what the job fails with (or `Cancelled` when stopped)."""
        resolved = self._registry.backend(job.served_by)
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
            operation = await operations.load(inputs, self._blobs, video_limits(self._settings))
            references = await self._references(job, inputs, resolved.capabilities)
        if image_key and operation is None:
            image = await self._picture(image_key)
        params = self._registry.resolve(job.model).schema.model_validate(
            job.params | _image_param(job)
        )
        loop = asyncio.get_running_loop()
        loads, registry = self._loads, self._registry

        def on_progress(step: int, total: int) -> None:
            signals.progress = int(100 * step / max(total, 1))
            loop.call_soon_threadsafe(signals.changed.set)

        def generate() -> tuple[GeneratedVideo, float]:
            logs.quiet_model_libraries()
            # `known` too: a backend that does not say whether it is loaded counts as loaded
            # once it exists, and its first load must still be timed.
            if loads.known(job.served_by) and registry.is_loaded(job.served_by):
                resolved.load()  # a no-op while it stays loaded
            else:  # a cold start (its first load here, or after the pool unloaded it)
                begun = time.perf_counter()
                resolved.load()
                loads.record(ModelLoad(job.served_by, time.perf_counter() - begun, False))
            begun = time.perf_counter()
            if operation is not None:
                video = operation.run(resolved, params, on_progress, signals.stop.is_set)
            else:
                inputs = GenerationInputs(image=image, reference_images=references)
                video = resolved.generate(params, inputs, on_progress, signals.stop.is_set)
            return video, time.perf_counter() - begun

        video, inference_time = await asyncio.to_thread(generate)
        return ProducedVideo(video, inference_time)

    async def _inputs(self, job: Job) -> JobInputs | None:
        """The job's input manifest (edits, extensions, characters); None for a plain job."""
        if not is_manifest(job.input_key):
            return None
        assert job.input_key is not None
        return JobInputs.from_json(await self._blobs.get_bytes(job.input_key))

    async def _picture(self, key: str) -> Image.Image:
        return Image.open(io.BytesIO(await self._blobs.get_bytes(key))).convert("RGB")

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


def _image_param(job: Job) -> dict[str, Any]:
    # The image is in blob storage under `input_key` (the stored params hold no data URI, and
    # a URL must not be fetched a second time).
    return {"input_reference": None} if job.input_key else {}


def _image_key(inputs: JobInputs) -> str | None:
    """A manifest's image input (first frame / guide), if it has one."""
    image = inputs.first(InputKind.IMAGE)
    return image.key if image else None


def failure_of(exc: BaseException) -> Failure:
    """The code and message a job fails with when producing its video raised `exc`."""
    if isinstance(exc, MediaStageError):
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
