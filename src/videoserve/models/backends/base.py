"""The contract between the worker and a model backend.

A backend turns validated parameters (and the job's already-fetched inputs) into frames, and a
waveform where the model makes sound. It reports progress per denoising step and stops between
steps when asked; encoding, storage and job state are someone else's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from videoserve.models.params import VideoParams


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, a reason an operator can act on."""

    available: bool
    reason: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the catalog and the service's checks read this, never a name."""

    text_to_video: bool = True
    image_to_video: bool = False  # `GenerationInputs.image` as the first frame / guide
    audio: bool = False  # returns a waveform with the frames
    video_to_video: bool = False  # `GenerationInputs.video` edited with `strength`
    reference_images: bool = False  # `GenerationInputs.reference_images` (characters)
    extend: bool = False  # continues `GenerationInputs.video` from its last frame(s)


@dataclass(frozen=True)
class GenerationInputs:
    """Everything a job hands a backend beside its parameters, already fetched and decoded."""

    image: Image.Image | None = None  # first frame / visual guide (`input_reference`)
    video: np.ndarray | None = None  # uint8 (T, H, W, 3) source frames (edits, extensions)
    video_fps: float | None = None
    audio: np.ndarray | None = None  # float32 (channels, samples) in [-1, 1] of the source
    audio_sample_rate: int | None = None
    reference_images: tuple[Image.Image, ...] = ()  # characters' reference frames
    strength: float | None = None  # edits: how far the result may move from the source
    # An extension's pass: its first frame re-renders the source's last and is dropped, so
    # the backend delivers one frame more than the duration (where its pass has it).
    continues: bool = False
    # Where preview frames go while it denoises (the worker's, per job); None: no previews.
    preview: PreviewSink | None = None


@dataclass
class GeneratedVideo:
    """Frames ready to encode: uint8 (T, H, W, 3) RGB at the delivered size and frame count."""

    frames: np.ndarray
    fps: float
    model: str  # the model name that actually produced it
    seed: int | None = None  # the seed used, so a caller can record and reproduce it
    segments: int = 1  # passes chained into it (image-to-video from the last frame)
    audio: np.ndarray | None = None  # float32 (channels, samples) in [-1, 1], in sync
    audio_sample_rate: int | None = None


class Cancelled(Exception):
    """should_stop() turned true between denoising steps."""


ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


class PreviewSink(Protocol):
    """Takes a call's preview frames as it denoises: a per-call value, in `GenerationInputs`."""

    every: int  # a preview after every `every` steps; 0: by `seconds` (never after the last)
    seconds: float  # without `every`: a preview when this long has passed since the last

    def offer(self, step: int, total: int, frames: np.ndarray) -> None:
        """Float RGB frames (T, H, W, 3) in [0, 1] at the latents' resolution, after `step`."""
        ...


@runtime_checkable
class SplitsSequences(Protocol):
    """A backend that can say how many video tokens each pass of a request is (what a worker
    group's context parallelism splits; `parallel.sequence_refusal`)."""

    def sequence_lengths(self, params: VideoParams) -> tuple[int, ...] | None: ...


class VideoBackend(Protocol):
    """What the worker needs from a model: availability, warm loading, and generation."""

    name: str
    schema: type[VideoParams]

    @property
    def capabilities(self) -> Capabilities:
        """What this model can make (configs only, never weights): the catalog lists it."""
        ...

    def availability(self) -> Availability:
        """Cheap check (no loading, no imports of torch) whether this backend can run here."""
        ...

    def check(self, params: VideoParams) -> None:
        """Refuse at submit time (`errors.InvalidRequest`, a 400) what `generate` would refuse.

        Reads configs only, never weights; a backend with nothing to refuse returns.
        """
        ...

    def load(self) -> None:
        """Load the weights; heavy, idempotent and thread-safe. Called in a worker thread."""
        ...

    def unload(self) -> None:
        """Release the weights and the memory they hold."""
        ...

    def generate(
        self,
        params: VideoParams,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        """Make one video; `on_progress(step, total)` after each step; raise `Cancelled`."""
        ...
