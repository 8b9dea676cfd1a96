"""The worker's side of edits and extensions: fetch and decode the source, then run the model.

The source was checked when the job was submitted; it is decoded again here (under the same
limits) because the worker trusts nothing it reads back from storage more than the API did.
Its sound is decoded too: an extension continues it and an edit keeps it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from videoserve import errors
from videoserve.jobs.inputs import InputKind, JobInputs, Operation
from videoserve.media.video_input import VideoLimits, decode_video
from videoserve.models.backends import continuation
from videoserve.models.backends.base import (
    GeneratedVideo,
    PreviewSink,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.params import VideoParams
from videoserve.storage.base import BlobStore


@dataclass(frozen=True)
class SourceOperation:
    """An edit or an extension of a decoded source video."""

    inputs: JobInputs
    source: continuation.SourceVideo
    limits: VideoLimits | None = None  # the stitched output's cap, checked before allocating

    def run(
        self,
        backend: Any,
        params: VideoParams,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
        preview: PreviewSink | None = None,
    ) -> GeneratedVideo:
        """Edits and extensions preview like a generation (one step loop for all)."""
        if self.inputs.operation == Operation.EXTEND:
            return continuation.extend(
                backend, params, self.source, on_progress, should_stop, self.limits, preview
            )
        strength = self.inputs.strength
        strength = continuation.DEFAULT_STRENGTH if strength is None else strength
        return continuation.edit(
            backend, params, self.source, strength, on_progress, should_stop, self.limits, preview
        )


async def load(inputs: JobInputs, blobs: BlobStore, limits: VideoLimits) -> SourceOperation | None:
    """The operation of a manifest, its source decoded; None for a plain generation."""
    if inputs.operation == Operation.GENERATE:
        return None
    source = inputs.first(InputKind.VIDEO)
    if source is None:
        raise errors.InvalidRequest(f"a {inputs.operation} job has no source video")
    data = await blobs.get_bytes(source.key)
    decoded = await asyncio.to_thread(
        decode_video, data, limits, keep=lambda index: True, audio=True
    )
    source_video = continuation.SourceVideo(
        decoded.kept, decoded.fps, decoded.audio, decoded.audio_sample_rate, decoded.seconds
    )
    return SourceOperation(inputs, source_video, limits)
