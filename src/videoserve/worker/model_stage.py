"""The model stage: a job's inputs fetched, its model run in a thread, its frames handed on.

The model runs in a thread so the event loop keeps heartbeating (and the embedded API keeps
answering, and the previous job's media stage keeps encoding) while a GPU is busy for minutes.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from typing import Any

import pydantic
from PIL import Image

from videoserve import errors
from videoserve.jobs.failures import STORAGE_FULL_MESSAGE, Failure, FailureCode
from videoserve.jobs.inputs import InputKind, JobInputs, is_manifest
from videoserve.jobs.phases import Phase
from videoserve.jobs.records import Job
from videoserve.media.video_input import video_limits
from videoserve.models.backends.base import Capabilities, GeneratedVideo, GenerationInputs
from videoserve.models.options import ParallelOptions
from videoserve.models.registry import ModelRegistry
from videoserve.observability import logs
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore, out_of_space
from videoserve.worker import operations
from videoserve.worker.attempt import Signals
from videoserve.worker.group import RankFailed, WorkerGroup
from videoserve.worker.media_stage import MediaStageError, ProducedVideo
from videoserve.worker.preload import ModelLoad, ModelLoads
from videoserve.worker.previews import JobPreviews
from videoserve.worker.rank import RankCall

# A rank's failure (`rank.py`) -> the job's failure code.
_RANK_FAILURES = {
    "out_of_memory": FailureCode.OUT_OF_MEMORY,
    "input_invalid": FailureCode.INPUT_INVALID,
    "model_unavailable": FailureCode.MODEL_UNAVAILABLE,
}


class ModelStage:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        blobs: BlobStore,
        loads: ModelLoads,
        group: WorkerGroup | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._blobs = blobs
        self._loads = loads
        self._group = group  # the worker's ranks, for entries with `parallel`

    def time_limit(self, job: Job) -> float:
        """Seconds this job may run: its own `execution_timeout` (X-Execution-Timeout, never
        above the model's limit: checked at submit), else the model's `max_job_seconds`, else
        the setting; 0: none."""
        try:
            own = self._registry.compute_limits(job.served_by).max_job_seconds
        except errors.VideoserveError:
            own = None  # the model is gone from the registry; `run` says so
        limit = float(own or self._settings.max_job_seconds)
        if job.execution_timeout is not None:
            # The smaller: a model whose limit was lowered since the submit still bounds it.
            return min(limit, job.execution_timeout) if limit else job.execution_timeout
        return limit

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
        plan = self._registry.parallel(job.served_by) if self._group is not None else None
        if plan is not None and operation is None:
            sink = self._previews(job, signals)
            call = RankCall(
                job.served_by,
                self._seeded(job),
                image,
                references,
                preview_every=None if sink is None else sink.every,
                preview_seconds=0.0 if sink is None else sink.seconds,
            )
            return await self._run_parallel(call, plan, signals, sink)
        loads, registry = self._loads, self._registry
        sink = self._previews(job, signals)

        def generate() -> tuple[GeneratedVideo, float, float]:
            logs.quiet_model_libraries()
            load_time = 0.0
            # `known` too: a backend that does not say whether it is loaded counts as loaded
            # once it exists, and its first load must still be timed.
            if loads.known(job.served_by) and registry.is_loaded(job.served_by):
                resolved.load()  # a no-op while it stays loaded
            else:  # a cold start (its first load here, or after the pool unloaded it)
                signals.enter(Phase.LOADING_MODEL)
                begun = time.perf_counter()
                resolved.load()
                load_time = time.perf_counter() - begun
                loads.record(ModelLoad(job.served_by, load_time, False))
            signals.enter(Phase.ENCODING_PROMPT)
            begun = time.perf_counter()
            if operation is not None:
                video = operation.run(resolved, params, signals.stepped, signals.stop.is_set, sink)
            else:
                inputs = GenerationInputs(image=image, reference_images=references, preview=sink)
                video = resolved.generate(params, inputs, signals.stepped, signals.stop.is_set)
            return video, time.perf_counter() - begun, load_time

        video, inference_time, load_time = await asyncio.to_thread(generate)
        return ProducedVideo(video, inference_time, load_time)

    async def _run_parallel(
        self, call: RankCall, plan: ParallelOptions, signals: Signals, sink: JobPreviews | None
    ) -> ProducedVideo:
        """The job's frames from the worker group: every rank runs the call, rank 0's frames
        come back. Raises `group.GroupLost` when a rank was lost (the job goes back)."""
        group = self._group
        assert group is not None

        def generate() -> tuple[GeneratedVideo, float, float]:
            logs.quiet_model_libraries()
            signals.enter(Phase.ENCODING_PROMPT)
            begun = time.perf_counter()
            offer = None if sink is None else sink.offer
            run = group.generate(call, signals.stepped, signals.stop.is_set, offer)
            return run.video, time.perf_counter() - begun - run.load_seconds, run.load_seconds

        video, inference_time, load_time = await asyncio.to_thread(generate)
        return ProducedVideo(video, inference_time, load_time, parallel=plan.describe())

    def _seeded(self, job: Job) -> dict[str, object]:
        """The job's parameters with its seed fixed, so that every rank draws the same noise."""
        params = job.params | _image_param(job)
        schema = self._registry.resolve(job.model).schema
        if "seed" in schema.model_fields and params.get("seed") is None:
            params["seed"] = secrets.randbits(32)
        return params

    def _previews(self, job: Job, signals: Signals) -> JobPreviews | None:
        """The job's preview sink: every `preview_every` steps of its model, else about
        every `PREVIEW_SECONDS`; None when the model's entry turns them off."""
        try:
            every = self._registry.preview_every(job.served_by)
        except errors.VideoserveError:
            return None
        if every == 0:
            return None
        loop = asyncio.get_running_loop()
        sink = JobPreviews(job.id, self._blobs, signals, loop, every=every or 0)
        signals.end_previews = sink.end
        return sink

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
        return exc.failure
    if isinstance(exc, RankFailed):
        return Failure(_RANK_FAILURES.get(exc.code, FailureCode.MODEL_ERROR), exc.message)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        # torch.OutOfMemoryError (CUDA) by name: this module does not import torch.
        return Failure(FailureCode.OUT_OF_MEMORY, f"out of memory: {exc}")
    if out_of_space(exc):  # a model that writes (a cache, say) on a full disk
        return Failure(FailureCode.STORAGE_FULL, STORAGE_FULL_MESSAGE)
    if isinstance(exc, errors.ModelUnavailable):
        code = FailureCode.MODEL_UNAVAILABLE
    elif isinstance(exc, errors.InvalidRequest | pydantic.ValidationError):
        code = FailureCode.INPUT_INVALID
    else:
        code = FailureCode.MODEL_ERROR
    if isinstance(exc, errors.VideoserveError) and exc.message:
        return Failure(code, exc.message)
    return Failure(code, f"model error: {type(exc).__name__}: {exc}")
