"""Edits and extensions of a caller's video: checks, then one ordinary job with its inputs.

The source is an uploaded file or one of the caller's own completed videos (another key's id
is a 404, like every id). The key's credits are checked first (a 406 costs no decode), then
the source is decoded here on the process's bounded decoder, under the `max_video_*` limits,
so a file that is not a video is a 400 before anything is queued or charged; an extension's
stitched output (the source's frames and the new ones, at the source's measured rate) is
checked against the decoded-size cap before it is queued, as the worker checks it again before
allocating it; the model is asked whether it can do the operation at all, so a refusal names
the model. The job itself is a normal job whose
input manifest says what to do (`jobs.inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from videoserve import errors
from videoserve.jobs import ledger
from videoserve.jobs.inputs import InputKind, JobInputs, Operation, PendingInput
from videoserve.jobs.queue_options import DEFAULTS, QueueOptions
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status
from videoserve.media.video_input import DecodedVideo, VideoDecoder
from videoserve.models.backends import continuation
from videoserve.services.characters import Characters, frames_of
from videoserve.services.jobs import JobService
from videoserve.storage.base import BlobNotFound

PARAM = "video"
# What the source decides for an edit or an extension; a request that sets them is refused
# rather than silently overridden.
_FROM_SOURCE = ("size", "duration", "input_reference")


@dataclass(frozen=True)
class SourceRef:
    """Where the source comes from: an upload's bytes, or the id of the caller's video."""

    upload: bytes | None = None
    content_type: str | None = None
    video_id: str | None = None


@dataclass(frozen=True)
class Source:
    data: bytes
    decoded: DecodedVideo
    job: Job | None  # the caller's video it came from, when given by id

    @property
    def video_id(self) -> str | None:
        return self.job.id if self.job else None

    def raw_params(self, extra: dict[str, Any], prompt: Any, duration: Any) -> dict[str, Any]:
        """The job's parameters: the caller's extras, the prompt, and the duration and size
        that the source decides."""
        size = continuation.nearest_size(self.decoded.width, self.decoded.height)
        return {**extra, "prompt": prompt, "duration": duration, "size": size}


class VideoOperations:
    """Extensions and edits, over the job service."""

    def __init__(self, service: JobService, decoder: VideoDecoder) -> None:
        self.service = service
        self.decoder = decoder

    async def source(
        self,
        key: ApiKey,
        ref: SourceRef,
        before_decode: Callable[[Job | None], Awaitable[None]] | None = None,
    ) -> Source:
        """The source's bytes, decoded and checked; 404 for an id that is not the caller's.

        `before_decode` (given the source video's job, if any) runs the cheap checks that
        would refuse the request anyway, so a refused request costs no decode."""
        job = None
        if ref.video_id is not None:
            job = await self.service.get(key, ref.video_id)
            if job.status != Status.COMPLETED or job.result is None:
                raise errors.InvalidRequest(
                    f"{PARAM}: video '{job.id}' is {job.status.value.lower()}; only a "
                    "completed video can be a source",
                    param=PARAM,
                )
            try:
                data = await self.service.blobs.get_bytes(job.result.output_key)
            except BlobNotFound:
                raise errors.NotFound(f"video '{job.id}' not found (it may have expired)") from None
        elif ref.upload is not None:
            data = ref.upload
        else:
            raise errors.InvalidRequest(
                f'{PARAM}: required: an uploaded MP4, MOV or WebM file, or {{"id": ...}} '
                "of a completed video",
                param=PARAM,
            )
        if before_decode is not None:
            await before_decode(job)
        # The sound too: a broken audio stream is the caller's 400 now, not a failed job later.
        decoded = await self.decoder.decode(data, what=PARAM, audio=True)
        return Source(data, decoded, job)

    def _afford(
        self,
        key: ApiKey,
        model: str | None,
        default_model: str,
        seconds: Any,
        extra: dict[str, Any],
    ) -> Callable[[Job | None], Awaitable[None]]:
        """A `before_decode` check: a 406 when the key cannot pay the request's least price
        (its model at `seconds`, or at the shortest duration when that is the source's)."""

        async def check(job: Job | None) -> None:
            name = model or (job.model if job else None) or default_model
            duration = 4.0 if seconds is None else _seconds(seconds)
            try:
                served_by = self.service.registry.resolve(name).served_by
            except errors.VideoserveError:
                return  # the full validation after the decode answers it precisely
            if duration is None:
                return
            steps = extra.get("num_inference_steps")
            steps = int(steps) if isinstance(steps, int | str) and str(steps).isdigit() else 0
            price = self.service.price(key, served_by, duration, steps)
            await ledger.check_affordable(self.service.store.database, key.id, price)

        return check

    async def extend(
        self,
        key: ApiKey,
        model: str | None,
        prompt: Any,
        seconds: Any,
        ref: SourceRef,
        extra: dict[str, Any],
        *,
        default_model: str,
        idempotency_key: str | None = None,
        queue: QueueOptions = DEFAULTS,
    ) -> Job:
        """Queue an extension: `seconds` more of the source, from its end."""
        _refuse_source_fields(extra, "an extension")
        amount = "4" if seconds is None else seconds
        check = self._afford(key, model, default_model, amount, extra)
        source = await self.source(key, ref, check)
        model = self._model(source, model, default_model, continuation.extend_refusal)
        raw = source.raw_params(extra, prompt, amount)
        _check_extension_size(source.decoded, amount, self.decoder)
        inputs = JobInputs(
            Operation.EXTEND,
            source_video_id=source.video_id,
            source_seconds=round(source.decoded.seconds, 3),
        )
        return await self._submit(
            key,
            model,
            raw,
            inputs,
            source,
            idempotency_key,
            queue,
        )

    async def edit(
        self,
        key: ApiKey,
        model: str | None,
        prompt: Any,
        strength: Any,
        ref: SourceRef,
        extra: dict[str, Any],
        *,
        default_model: str,
        idempotency_key: str | None = None,
        queue: QueueOptions = DEFAULTS,
    ) -> Job:
        """Queue an edit: video-to-video on the source, same duration and aspect."""
        _refuse_source_fields(extra, "an edit")
        strength = _strength(strength)
        source = await self.source(key, ref, self._afford(key, model, default_model, None, extra))
        model = self._model(source, model, default_model, continuation.edit_refusal)
        seconds = source.decoded.seconds
        # The price and the plan's size follow the shortest duration that covers the source.
        duration = next((d for d in (4, 8, 12) if d >= seconds - 1e-6), 12)
        raw = source.raw_params(extra, prompt, duration)
        backend = self.service.registry.resolve(model).backend
        continuation.edit_passes(backend, seconds)  # a 400 where the model cannot chain
        continuation.check_output_size(
            continuation.edit_frames(backend, seconds),
            source.decoded.width,
            source.decoded.height,
            self.decoder.limits,
        )
        _refuse_empty_denoise(extra.get("num_inference_steps"), backend, strength)
        inputs = JobInputs(
            Operation.EDIT,
            source_video_id=source.video_id,
            source_seconds=round(seconds, 3),
            strength=strength,
        )
        return await self._submit(
            key,
            model,
            raw,
            inputs,
            source,
            idempotency_key,
            queue,
        )

    def _model(
        self,
        source: Source,
        model: str | None,
        default_model: str,
        refusal: Callable[[Any], str | None],
    ) -> str:
        """The model asked for, else the source video's, else the default; a 400 naming it
        when it cannot do the operation (`refusal` says why)."""
        model = model or (source.job.model if source.job else None) or default_model
        reason = refusal(self.service.registry.resolve(model).backend)
        if reason:
            raise errors.InvalidRequest(f"model: {reason}", param="model")
        return model

    async def characters(
        self,
        key: ApiKey,
        characters: Characters,
        model: str,
        ids: list[str],
        prompt: Any,
    ) -> tuple[JobInputs, list[PendingInput]] | None:
        """The inputs for the characters a create uses (ids and `@Name`s); None if none.

        A model without reference images refuses them, naming itself.
        """
        used = await characters.resolve(key, ids, prompt if isinstance(prompt, str) else "")
        if not used:
            return None
        backend = self.service.registry.resolve(model).backend
        capabilities = getattr(backend, "capabilities", None)
        if capabilities is None or not capabilities.reference_images:
            names = ", ".join(c.name for c in used)
            raise errors.InvalidRequest(
                f"characters: model '{model}' does not take reference images, so it cannot "
                f"use characters ({names}); use a model with reference images (Wan VACE)",
                param="characters",
            )
        files = [
            PendingInput(InputKind.REFERENCE, f"{c.id}-{n}.png", png, "image/png", c.id)
            for c in used
            for n, png in enumerate(await frames_of(self.service.blobs, c))
        ]
        inputs = JobInputs(Operation.GENERATE, characters=tuple(c.id for c in used))
        return inputs, files

    async def remix(
        self,
        key: ApiKey,
        source_id: str,
        prompt: Any,
        *,
        idempotency_key: str | None = None,
        queue: QueueOptions = DEFAULTS,
    ) -> Job:
        """A remix of the caller's completed video: an edit or an extension is the same
        operation on the same source, with a new prompt; anything else is the job service's
        remix."""
        source = await self.service.get(key, source_id)
        inputs = await self.service.inputs_of(source)
        if inputs is None or source.status != Status.COMPLETED:
            return await self.service.remix(
                key, source, prompt, idempotency_key=idempotency_key, queue=queue
            )
        return await self._repeat(
            key,
            source,
            inputs,
            prompt,
            idempotency_key,
            queue,
        )

    async def _repeat(
        self,
        key: ApiKey,
        source: Job,
        inputs: JobInputs,
        prompt: Any,
        idempotency_key: str | None,
        queue: QueueOptions,
    ) -> Job:
        files = []
        for stored in inputs.inputs:
            data = await self.service.blobs.get_bytes(stored.key)
            name = stored.key.rsplit("/", 1)[-1]
            files.append(
                PendingInput(stored.kind, name, data, stored.content_type, stored.character_id)
            )
        raw = {**source.params, "prompt": prompt}
        return await self.service.submit(
            key,
            source.model,
            raw,
            idempotency_key=idempotency_key,
            inputs=replace(inputs, inputs=()),
            files=files,
            remixed_from=source.id,
            queue=queue,
        )

    async def _submit(
        self,
        key: ApiKey,
        model: str,
        raw: dict[str, Any],
        inputs: JobInputs,
        source: Source,
        idempotency_key: str | None,
        queue: QueueOptions,
    ) -> Job:
        name = "source.webm" if source.decoded.container == "webm" else "source.mp4"
        content_type = "video/webm" if source.decoded.container == "webm" else "video/mp4"
        return await self.service.submit(
            key,
            model,
            raw,
            idempotency_key=idempotency_key,
            inputs=inputs,
            files=[PendingInput(InputKind.VIDEO, name, source.data, content_type)],
            queue=queue,
        )


def _check_extension_size(decoded: DecodedVideo, seconds: Any, decoder: VideoDecoder) -> None:
    """A 400 now when the stitched extension would be over the decoded-size cap: the source's
    frames and `seconds` more at its measured rate (itself capped), at its size."""
    duration = _seconds(seconds)
    if duration is None:
        return  # the schema's check answers a bad duration
    added = continuation.added_frames(duration, decoded.fps)
    continuation.check_output_size(
        decoded.frames + added, decoded.width, decoded.height, decoder.limits
    )


def _seconds(value: Any) -> float | None:
    """A duration as a number, leniently (the schema checks it precisely); None if none."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 < number <= 3600 else None


def _refuse_source_fields(extra: dict[str, Any], what: str) -> None:
    for name in _FROM_SOURCE:
        if name in extra:
            raise errors.InvalidRequest(
                f"{name}: {what} takes its size and timing from the source video", param=name
            )


def _refuse_empty_denoise(steps: Any, backend: Any, strength: float) -> None:
    """A 400 when the edit would denoise no step: video-to-video runs `int(steps * strength)`
    of its steps, and none is a crash inside the pipeline, not an edit."""
    if isinstance(steps, str) and steps.strip().isdigit():
        steps = int(steps)
    if steps is None:
        steps = getattr(backend, "default_steps", None)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        return  # the schema's own check answers a bad value
    if int(steps * strength) < 1:
        raise errors.InvalidRequest(
            f"strength: {strength:g} of {steps} step{'s' if steps > 1 else ''} denoises none "
            f"(an edit runs int(steps x strength) of them): use strength >= {1 / steps:g} "
            f"or num_inference_steps >= {math.ceil(1 / strength)}",
            param="strength",
        )


def _strength(value: Any) -> float:
    """An edit's `strength`: a number from 0 to 1 (a form sends it as a string)."""
    if value is None:
        return continuation.DEFAULT_STRENGTH
    if isinstance(value, bool):
        raise errors.InvalidRequest(f"strength: must be a number (got {value!r})", param="strength")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise errors.InvalidRequest(
            f"strength: must be a number from 0 to 1 (got {value!r})", param="strength"
        ) from None
    if not 0 < number <= 1:
        raise errors.InvalidRequest(
            f"strength: must be above 0 and at most 1 (got {value!r})", param="strength"
        )
    return number
