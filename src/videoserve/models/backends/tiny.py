"""`tiny-t2v` and `tiny-t2av`: real pipelines with tiny random weights, built in code.

Their output is noise. They exist so every path (queue, worker, progress, cancel, encoding, I2V,
and with `tiny-t2av` the sound: an LTX-2 pipeline whose MP4s carry an AAC track) runs in tests
and on a CPU without downloading anything. The weights are saved as an ordinary diffusers
folder and loaded through `WanBackend.load` / `LTX2Backend.load`, the loaders real weights use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any, Literal

from videoserve.models import previews, random_weights, random_weights_ltx2
from videoserve.models.backends.base import Availability, Capabilities
from videoserve.models.backends.ltx import ltx_decoder
from videoserve.models.backends.ltx2 import LTX2Backend
from videoserve.models.backends.wan import WanBackend, wan_decoder
from videoserve.models.grid import TINY_GRID

log = logging.getLogger("videoserve.models")

TINY_NAME = "tiny-t2v"
TINY_AUDIO_NAME = "tiny-t2av"  # the built-in model with sound
Layout = Literal["wan", "ltx2"]
_BUILD_LOCK = threading.Lock()
# LTX-2's passes hold 8k+1 frames: 33 at the tiny grid's 8 fps is 4 s, the shortest duration,
# so longer videos are chained passes like a real LTX-2's (and each pass stays cheap).
TINY_AUDIO_MAX_FRAMES = 33


def build_tiny_pipeline(folder: Path, seed: int = 0, layout: Layout = "wan") -> None:
    """Save a pipeline with tiny random weights to `folder`: a Wan 2.2 TI2V-5B-layout
    `WanPipeline` (`layout="wan"`), or an `LTX2Pipeline` that makes sound (`"ltx2"`).

    Built in a temporary sibling folder and renamed into place, so a reader never sees half a
    model; when another process wins the race, its folder is kept. The same seed gives the
    same weights, and the caller's global torch RNG is left untouched.
    """
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return
    # torch's seed is process-wide: builds in one process take turns so each gets its seed.
    with _BUILD_LOCK:
        if not (folder / "model_index.json").exists():
            _build(folder, seed, layout)


def _build(folder: Path, seed: int, layout: Layout) -> None:
    pipe: Any
    if layout == "ltx2":
        pipe = random_weights_ltx2.build_pipeline(seed=seed)
    else:
        pipe = random_weights.build_pipeline(random_weights.TINY["wan2.2-ti2v"], seed=seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        pipe.save_pretrained(staging)
        # Its preview factors, fitted from its own VAE now rather than on a job's first
        # preview (as `python -m videoserve.models.backends.preview_factors FOLDER --write`).
        decoder = ltx_decoder(pipe.vae) if layout == "ltx2" else wan_decoder(pipe.vae)
        previews.save(
            previews.fit_projection(
                decoder.decode,
                decoder.channels,
                spatial=decoder.spatial,
                temporal=decoder.temporal,
            ),
            staging,
        )
        publish(staging, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def publish(staging: Path, folder: Path) -> bool:
    """Rename a complete build into place; False (theirs kept) if another process won."""
    try:
        # rename() replaces nothing but an empty folder, so the first complete build wins.
        os.rename(staging, folder)
    except OSError:
        if not (folder / "model_index.json").exists():
            raise
        log.debug("another process built %s first; keeping theirs", folder)
        return False
    log.info("built the tiny random-weight model in %s", folder)
    return True


class TinyBackend(WanBackend):
    """The built-in `tiny-t2v`: always available, built on first load, then loaded like Wan."""

    def __init__(
        self,
        path: Path,
        *,
        name: str = TINY_NAME,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            name, path, TINY_GRID, device=device, default_steps=4, default_guidance=5.0
        )
        self.seed = seed

    def availability(self) -> Availability:
        return Availability(True)

    @property
    def capabilities(self) -> Capabilities:
        # Known before the first build: the Wan 2.2 TI2V layout does text and image to video,
        # and its text pipeline's modules make the video-to-video pipeline edits use.
        return Capabilities(
            text_to_video=True, image_to_video=True, video_to_video=True, extend=True
        )

    def load(self) -> None:
        self.pull()
        super().load()

    def pull(self) -> Path:
        """Build the weights if they are not there yet (nothing to download)."""
        folder = Path(self.weights.source)
        if not self.loaded and not (folder / "model_index.json").exists():
            build_tiny_pipeline(folder, self.seed)
        return folder


class TinySoundBackend(LTX2Backend):
    """The built-in `tiny-t2av`: a tiny LTX-2 (video with sound), always available, built on
    first load, then loaded like any LTX-2 folder."""

    def __init__(
        self,
        path: Path,
        *,
        name: str = TINY_AUDIO_NAME,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            name,
            path,
            TINY_GRID,
            device=device,
            default_steps=2,
            grid_overrides={"max_frames": TINY_AUDIO_MAX_FRAMES},
        )
        self.seed = seed

    def availability(self) -> Availability:
        return Availability(True)

    @property
    def capabilities(self) -> Capabilities:
        # Known before the first build: LTX-2 does text and image to video, with sound, and
        # extends by frame conditioning.
        return Capabilities(
            text_to_video=True, image_to_video=True, audio=True, video_to_video=False, extend=True
        )

    def load(self) -> None:
        self.pull()
        super().load()

    def pull(self) -> Path:
        """Build the weights if they are not there yet (nothing to download)."""
        folder = Path(self.weights.source)
        if not self.loaded and not (folder / "model_index.json").exists():
            build_tiny_pipeline(folder, self.seed, "ltx2")
        return folder
