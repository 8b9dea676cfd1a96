"""Extensions and edits of an existing video, over a backend's ordinary pipelines.

An extension continues the source from its last frame with the model's image-to-video, for
`duration` more seconds, and returns one stitched video at the source's size and frame rate:
the source's own frames, then the new ones (whose first frame, a re-rendering of the source's
last, is dropped). An edit runs video-to-video on the source with the prompt and keeps its
duration and aspect. The refusals say, before a job is queued, why a model cannot do either.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models.backends.base import (
    GeneratedVideo,
    GenerationInputs,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.params import SIZES, VideoParams

DEFAULT_STRENGTH = 0.6  # an edit keeps the source's layout and motion, changes its look


@dataclass(frozen=True)
class SourceVideo:
    """The decoded source: uint8 RGB frames (T, H, W, 3) and their measured rate."""

    frames: np.ndarray
    fps: float

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

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
        from videoserve.models.backends.diffusion import DiffusersBackend, read_model_index

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


def edit_frames(backend: Any, seconds: float) -> int:
    """Frames an edit of `seconds` generates in one pass; a 400 when over the model's pass."""
    grid = backend.grid
    wanted = max(1, round(seconds * grid.fps))
    count = math.ceil((wanted - 1) / grid.frame_rule) * grid.frame_rule + 1
    if count > grid.max_frames:
        longest = (grid.max_frames - 1) / grid.fps
        raise errors.InvalidRequest(
            f"video: {seconds:.1f}s is longer than model '{backend.name}' edits in one pass "
            f"(max {longest:.1f}s)",
            param="video",
        )
    return count


def extend(
    backend: Any,
    params: VideoParams,
    source: SourceVideo,
    on_progress: ProgressCallback,
    should_stop: StopCheck,
) -> GeneratedVideo:
    """The source, then `params.duration` seconds continued from its last frame: one video."""
    last = Image.fromarray(source.frames[-1])
    generated = _generate_from_image(backend, params, last, on_progress, should_stop)
    width, height = source.size
    added = max(1, round(params.duration * source.fps))
    # Drop the re-rendered seam frame; then pick frames at the source's rate.
    new = generated.frames[1:] if len(generated.frames) > 1 else generated.frames
    step = generated.fps / source.fps
    picked = [new[min(int(j * step), len(new) - 1)] for j in range(added)]
    fitted = np.stack([_fit(frame, width, height) for frame in picked])
    return GeneratedVideo(
        frames=np.concatenate([source.frames, fitted]),
        fps=source.fps,
        model=generated.model,
        seed=generated.seed,
        segments=generated.segments + 1,
    )


def edit(
    backend: Any,
    params: VideoParams,
    source: SourceVideo,
    strength: float,
    on_progress: ProgressCallback,
    should_stop: StopCheck,
) -> GeneratedVideo:
    """Video-to-video on the source: same duration (at the model's rate) and aspect."""
    grid = backend.grid
    count = edit_frames(backend, source.seconds)
    wanted = max(1, round(source.seconds * grid.fps))
    shape = grids.plan(grid, params.size, params.duration, chain=True)
    indexes = [min(int(j * source.fps / grid.fps), len(source.frames) - 1) for j in range(count)]
    video = [
        Image.fromarray(_fit(source.frames[i], shape.gen_width, shape.gen_height)) for i in indexes
    ]
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
    floats = backend.run_video_to_video(call, seed, video, strength, on_progress, should_stop)
    frames = (np.clip(floats[:wanted], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    width, height = source.size
    width, height = width - width % 2, height - height % 2
    frames = np.stack([_fit(frame, width, height) for frame in frames])
    return GeneratedVideo(frames=frames, fps=float(grid.fps), model=backend.name, seed=seed)


def _generate_from_image(
    backend: Any,
    params: VideoParams,
    image: Image.Image,
    on_progress: ProgressCallback,
    should_stop: StopCheck,
) -> GeneratedVideo:
    """The backend's image-to-video; the one place that knows `generate`'s signature."""
    return backend.generate(params, GenerationInputs(image=image), on_progress, should_stop)


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    from videoserve.models.backends.diffusion import fit_image

    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    return np.asarray(fit_image(Image.fromarray(frame), width, height))
