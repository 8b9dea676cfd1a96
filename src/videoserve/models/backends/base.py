"""The contract between the worker and a model backend.

A backend turns validated parameters (and an already-fetched input image) into frames. It
reports progress per denoising step and stops between steps when asked; encoding, storage
and job state are someone else's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from videoserve.models.params import VideoParams


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, a reason an operator can act on."""

    available: bool
    reason: str | None = None


@dataclass
class GeneratedVideo:
    """Frames ready to encode: uint8 (T, H, W, 3) RGB at the delivered size and frame count."""

    frames: np.ndarray
    fps: float
    model: str  # the model name that actually produced it
    seed: int | None = None  # the seed used, so a caller can record and reproduce it
    segments: int = 1  # passes chained into it (image-to-video from the last frame)


class Cancelled(Exception):
    """should_stop() turned true between denoising steps."""


ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


class VideoBackend(Protocol):
    """What the worker needs from a model: availability, warm loading, and generation."""

    name: str
    schema: type[VideoParams]

    def availability(self) -> Availability:
        """Cheap check (no loading, no imports of torch) whether this backend can run here."""
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
        image: Image.Image | None,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        """Make one video; `on_progress(step, total)` after each step; raise `Cancelled`."""
        ...
