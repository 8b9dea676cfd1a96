"""Extensions and edits of an existing video, over a backend's ordinary pipelines.

An extension continues the source for `duration` more seconds and returns one stitched video
at the source's size and frame rate: the source's own frames, then the new ones. A backend with
frame conditioning (`continuation_frames`: LTX-2) is handed the source's last frames at its own
rate; any other continues with image-to-video from the last frame. Either way the new pass's
first frame re-renders the source's last and is dropped from the pictures; its time is where
the sound is joined (`_stitched_sound`).

An edit runs video-to-video on the source with the prompt and keeps its duration and aspect; a
source longer than one pass is edited pass by pass, each pass a window of the source that
shares its first frame with the previous pass's last (dropped once), as chaining does.
The source's sound is kept (an edit keeps its timing).

The refusals say, before a job is queued, why a model cannot do either.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from videoserve import errors
from videoserve.media.video_input import VideoLimits, check_decoded_bytes, resample_audio
from videoserve.models import grid as grids
from videoserve.models.backends import seams
from videoserve.models.backends.base import (
    GeneratedVideo,
    GenerationInputs,
    PreviewSink,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.backends.diffusion import DiffusersBackend, fit_image, read_model_index
from videoserve.models.params import SIZES, VideoParams

DEFAULT_STRENGTH = 0.6  # an edit keeps the source's layout and motion, changes its look


@dataclass(frozen=True)
class SourceVideo:
    """The decoded source: uint8 RGB frames (T, H, W, 3) and their measured rate, and its
    sound (float32 (channels, samples)) where it has one."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    audio_sample_rate: int | None = None
    duration: float | None = None  # measured from its timestamps (a sparse clip's count / fps
    # would over-count it); None: count / fps

    @property
    def seconds(self) -> float:
        return self.duration if self.duration is not None else len(self.frames) / self.fps

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def nearest_size(width: int, height: int) -> str:
    """The public `size` whose aspect ratio is closest to `width`x`height`'s."""
    aspect = width / height

    def distance(size: str) -> float:
        w, h = grids.parse_size(size)
        return abs(math.log((w / h) / aspect))

    return min(SIZES, key=distance)


def extend_refusal(backend: Any) -> str | None:
    """Why `backend` cannot continue a video from its last frame; None when it can."""
    capabilities = getattr(backend, "capabilities", None)
    if capabilities is not None:
        able = capabilities.extend or capabilities.image_to_video
    else:
        if not isinstance(backend, DiffusersBackend):
            able = False
        else:
            index = read_model_index(backend.path) or {}
            # No index yet (the tiny model before its first build): it has image-to-video.
            able = not index or backend._accepts_image(index)
    if able:
        return None
    return (
        f"model '{getattr(backend, 'name', '?')}' cannot continue a video: it has no "
        "image-to-video over its weights to start from the last frame"
    )


def edit_refusal(backend: Any) -> str | None:
    """Why `backend` cannot edit a video (video-to-video); None when it can."""
    refusal = getattr(backend, "edit_refusal", None)
    if refusal is not None:  # the backend's own reason names its weights' class
        return refusal()
    capabilities = getattr(backend, "capabilities", None)
    if capabilities is not None and not capabilities.video_to_video:
        return f"model '{backend.name}' cannot edit a video: it has no video-to-video pipeline"
    return f"model '{getattr(backend, 'name', '?')}' cannot edit a video"


def edit_passes(backend: Any, seconds: float) -> tuple[int, ...]:
    """Frame counts of the passes that edit `seconds` of video, consecutive ones sharing a
    frame (`grid.chain_frames`); a 400 naming the limit where the model's pass is too short
    to chain (a single frame)."""
    grid = backend.grid
    wanted = max(1, round(seconds * grid.fps))
    longest = (grid.max_frames - 1) // grid.frame_rule * grid.frame_rule + 1
    if longest < 2 and wanted > longest:
        raise errors.InvalidRequest(
            f"video: {seconds:.1f}s is longer than model '{backend.name}' edits "
            f"(one pass of {longest} frame)",
            param="video",
        )
    return tuple(grids.chain_frames(wanted, longest, grid.frame_rule))


def added_frames(seconds: float, fps: float) -> int:
    """How many frames an extension of `seconds` adds at the source's rate `fps` (a rate
    already capped by `max_video_fps` when the source was decoded)."""
    return max(1, round(seconds * fps))


def check_output_size(frames: int, width: int, height: int, limits: VideoLimits) -> None:
    """A 400 (`VideoInputInvalid`) when a stitched video of `frames` pictures at the
    source's size would exceed the decoded-size cap: checked before it is planned."""
    check_decoded_bytes(frames, width, height, limits, "video")


def edit_frames(backend: Any, seconds: float) -> int:
    """How many frames an edit of `seconds` gives: the source's duration at the model's rate."""
    return max(1, round(seconds * backend.grid.fps))


def extend(
    backend: Any,
    params: VideoParams,
    source: SourceVideo,
    on_progress: ProgressCallback,
    should_stop: StopCheck,
    limits: VideoLimits | None = None,
    preview: PreviewSink | None = None,
) -> GeneratedVideo:
    """The source, then `params.duration` seconds continued from its end: one video, with
    sound over all of it where the source or the model has sound. With `limits`, the
    stitched output's size is checked before anything is generated or allocated; `preview`
    gets the continuation's previews as a generation's."""
    width, height = source.size
    added = added_frames(params.duration, source.fps)
    if limits is not None:
        check_output_size(len(source.frames) + added, width, height, limits)
    inputs = dataclasses.replace(_continuation_inputs(backend, source), preview=preview)
    generated = backend.generate(params, inputs, on_progress, should_stop)
    # Drop the re-rendered seam frame; then pick frames at the source's rate.
    new = generated.frames[1:] if len(generated.frames) > 1 else generated.frames
    step = generated.fps / source.fps
    picked = [new[min(int(j * step), len(new) - 1)] for j in range(added)]
    fitted = np.stack([_fit(frame, width, height) for frame in picked])
    sound = _stitched_sound(source, generated, added) if _wants_audio(params) else None
    return GeneratedVideo(
        frames=np.concatenate([source.frames, fitted]),
        fps=source.fps,
        model=generated.model,
        seed=generated.seed,
        segments=generated.segments + 1,
        audio=None if sound is None else sound[0],
        audio_sample_rate=None if sound is None else sound[1],
    )


def edit(
    backend: Any,
    params: VideoParams,
    source: SourceVideo,
    strength: float,
    on_progress: ProgressCallback,
    should_stop: StopCheck,
    limits: VideoLimits | None = None,
    preview: PreviewSink | None = None,
) -> GeneratedVideo:
    """Video-to-video on the source: same duration (at the model's rate), aspect and sound.
    With `limits`, the output's size is checked before anything is generated; `preview` gets
    each pass's previews."""
    grid = backend.grid
    passes = edit_passes(backend, source.seconds)
    wanted = edit_frames(backend, source.seconds)
    if limits is not None:
        check_output_size(wanted, *source.size, limits)
    shape = grids.plan(grid, params.size, params.duration, chain=True)
    seed = getattr(params, "seed", None)
    seed = secrets.randbits(32) if seed is None else seed
    call = {
        "prompt": params.prompt,
        "negative_prompt": getattr(params, "negative_prompt", None)
        or backend.default_negative_prompt,
        "num_inference_steps": getattr(params, "num_inference_steps", None)
        or backend.default_steps,
        "guidance_scale": getattr(params, "guidance_scale", None) or backend.default_guidance,
        "height": shape.gen_height,
        "width": shape.gen_width,
    }
    parts: list[np.ndarray] = []
    start = 0  # the first output frame of this pass
    for k, count in enumerate(passes):

        def progress(step: int, total: int, k: int = k) -> None:
            on_progress(k * total + step, len(passes) * total)

        indexes = [_source_index(source, j, grid.fps) for j in range(start, start + count)]
        video = [
            Image.fromarray(_fit(source.frames[i], shape.gen_width, shape.gen_height))
            for i in indexes
        ]
        # seed + k, as chained generation does: one seed still gives one video.
        floats = backend.run_video_to_video(
            call, seed + k, video, strength, progress, should_stop, preview
        )
        parts.append(floats[1:] if k else floats)
        start += count - 1
    floats = np.concatenate(parts)
    frames = (np.clip(floats[:wanted], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    width, height = source.size
    width, height = width - width % 2, height - height % 2
    frames = np.stack([_fit(frame, width, height) for frame in frames])
    keep = source.audio is not None and _wants_audio(params)
    return GeneratedVideo(
        frames=frames,
        fps=float(grid.fps),
        model=backend.name,
        seed=seed,
        segments=len(passes),
        audio=source.audio if keep else None,  # the encoder fits it to the frames' duration
        audio_sample_rate=source.audio_sample_rate if keep else None,
    )


def _source_index(source: SourceVideo, frame: int, fps: float) -> int:
    """The source frame shown at output frame `frame` of a video at `fps`."""
    return min(int(frame * source.fps / fps), len(source.frames) - 1)


def _continuation_inputs(backend: Any, source: SourceVideo) -> GenerationInputs:
    """What the backend continues from: the source's last frames at the model's rate where it
    conditions on frames, else its last frame as an image-to-video input."""
    lead = int(getattr(backend, "continuation_frames", 0) or 0)
    if lead < 2:
        return GenerationInputs(image=Image.fromarray(source.frames[-1]), continues=True)
    fps = float(backend.grid.fps)
    last = len(source.frames) - 1
    step = source.fps / fps
    indexes = [max(0, round(last - (lead - 1 - j) * step)) for j in range(lead)]
    return GenerationInputs(video=source.frames[indexes], video_fps=fps, continues=True)


def _wants_audio(params: VideoParams) -> bool:
    """`audio: false` (a sound model's parameter) makes a silent file; anything else keeps it."""
    return getattr(params, "audio", True) is not False


def _stitched_sound(
    source: SourceVideo, generated: GeneratedVideo, added: int
) -> tuple[np.ndarray, int] | None:
    """The extension's sound and its rate, covering the source's frames and `added` more.

    The source's sound (silence where it has none) and the new pass's (silence where the model
    makes none; it starts at the dropped seam frame) overlap by that one frame's time and are
    crossfaded there, equal power, as chained passes are (`seams.join_passes`). The rate is the
    model's when it makes sound (the source's is resampled to it), else the source's.
    None when neither has sound.
    """
    if source.audio is None and generated.audio is None:
        return None
    if generated.audio is not None and generated.audio_sample_rate:
        rate = generated.audio_sample_rate
        after = generated.audio
    else:
        assert source.audio_sample_rate is not None  # decoded sound has its rate
        rate = source.audio_sample_rate
        after = np.zeros((1, 0), dtype=np.float32)
    before = np.zeros((1, 0), dtype=np.float32)
    if source.audio is not None and source.audio_sample_rate:
        before = resample_audio(source.audio, source.audio_sample_rate, rate)
    wave = seams.join_passes([before, after], (len(source.frames), added + 1), source.fps, rate)
    return wave, rate


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    return np.asarray(fit_image(Image.fromarray(frame), width, height))
