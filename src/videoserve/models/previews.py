"""Preview frames while a video denoises: latents to RGB by a linear map, no VAE decode.

Why linear: a VAE decode of a real video's latents takes seconds and gigabytes; a preview is
for a person watching a video form, and a per-channel linear map from the latent space to RGB
(one 3 x C matrix and a bias, ComfyUI's and Wan2GP's "latent2rgb" idea) shows the layout and
colours at the latents' own resolution for a few hundred FLOPs per latent pixel.

The map is fitted by least squares from the model's own VAE (`fit_projection`): a few random
latents, decoded once, each latent pixel paired with the mean colour of the pixels it becomes.
Nothing published is needed, so every family and the tiny test models get theirs the same
way. `python -m videoserve.models.backends.preview_factors FOLDER [--write]` prints the factors
of a model folder (Wan, LTX, LTX-2, HunyuanVideo 1.5: by its VAE's class) and writes them to
`FOLDER/preview_factors.json`, where a backend reads them;
a folder without that file is fitted in memory on its first preview, once per load. The tiny
models write theirs when they are built.

What is projected is the current estimate of the clean latents, not the noisy ones: for a
flow-matching sampler, two consecutive states x_a, x_b at noise levels s_a > s_b of one
trajectory give x0 = (s_a x_b - s_b x_a) / (s_a - s_b) (`clean_estimate`).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PREVIEW_FRAMES = 4  # frames across time in one preview strip
PREVIEW_HEIGHT = 96  # pixels; the strip's width follows the aspect ratio
FIT_SAMPLES = 4  # random latents decoded for a fit
FIT_SEED = 0
RIDGE = 0.05  # the fit's ridge penalty, per sample (latents are about unit variance)
FACTORS_FILE = "preview_factors.json"
PREVIEW_SECONDS = 2.0  # without `preview_every`: a preview when this long has passed


@dataclass(frozen=True)
class Decoder:
    """How a family's VAE turns the denoiser's latents into pictures, for a fit."""

    decode: Callable[[Any], np.ndarray]  # (1, C, T, H, W) -> float frames (T', H', W', 3)
    channels: int
    spatial: int  # pixels per latent pixel, each way
    temporal: int  # frames per latent frame after the first


@dataclass(frozen=True)
class LatentProjection:
    """RGB = latents . weights + bias, per latent pixel; values in [0, 1]."""

    weights: np.ndarray  # float32 (channels, 3)
    bias: np.ndarray  # float32 (3,)

    def rgb(self, latents: np.ndarray) -> np.ndarray:
        """(C, T, H, W) latents as float RGB frames (T, H, W, 3), clipped to [0, 1]."""
        pixels = np.moveaxis(latents.astype(np.float32, copy=False), 0, -1)
        return np.clip(pixels @ self.weights + self.bias, 0.0, 1.0)


def save(projection: LatentProjection, folder: Path) -> Path:
    """Write the factors beside the weights, as `load` reads them."""
    path = Path(folder) / FACTORS_FILE
    data = {"weights": projection.weights.tolist(), "bias": projection.bias.tolist()}
    path.write_text(json.dumps(data))
    return path


def load(folder: Path | None) -> LatentProjection | None:
    """The factors written beside a model's weights; None when there are none (or unreadable)."""
    if folder is None:
        return None
    try:
        data = json.loads((Path(folder) / FACTORS_FILE).read_text())
        return LatentProjection(
            np.asarray(data["weights"], np.float32), np.asarray(data["bias"], np.float32)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fit_projection(
    decode: Callable[[Any], np.ndarray],
    channels: int,
    *,
    latent_size: tuple[int, int, int] = (2, 8, 8),
    spatial: int,
    temporal: int,
    samples: int = FIT_SAMPLES,
    seed: int = FIT_SEED,
) -> LatentProjection:
    """Least squares from `samples` random latents (1, C, T, H, W) to what `decode` makes of
    them: `decode(latents)` gives float frames (T', H', W', 3) in [0, 1], `spatial` and
    `temporal` its compression (the first latent frame is one frame, each later one is
    `temporal` frames, as in Wan's causal VAE)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs, targets = [], []
    for _ in range(samples):
        latents = torch.randn((1, channels, *latent_size), generator=generator)
        frames = decode(latents)
        targets.append(pooled(frames, latent_size, spatial, temporal).reshape(-1, 3))
        inputs.append(np.moveaxis(latents[0].numpy(), 0, -1).reshape(-1, channels))
    design = np.concatenate(inputs).astype(np.float64)
    target = np.concatenate(targets).astype(np.float64)
    # Ridge on the weights (not the bias): with few samples a plain fit chases noise, and a
    # VAE whose output is not linear in its latents (a random-weight one) then falls back to
    # about its mean colour rather than to something worse.
    mean_in, mean_out = design.mean(axis=0), target.mean(axis=0)
    centred_in, centred_out = design - mean_in, target - mean_out
    gram = centred_in.T @ centred_in + RIDGE * len(design) * np.eye(channels)
    weights = np.linalg.solve(gram, centred_in.T @ centred_out)
    bias = mean_out - mean_in @ weights
    return LatentProjection(weights=weights.astype(np.float32), bias=bias.astype(np.float32))


def pooled(
    frames: np.ndarray, latent_size: tuple[int, int, int], spatial: int, temporal: int
) -> np.ndarray:
    """Decoded frames (T', H', W', 3) averaged down to the latent grid (T, H, W, 3)."""
    count, height, width = latent_size
    groups = [frames[:1]] + [
        frames[1 + (j - 1) * temporal : 1 + j * temporal] for j in range(1, count)
    ]
    per_frame = np.stack([group.mean(axis=0) for group in groups])
    cropped = per_frame[:, : height * spatial, : width * spatial]
    shaped = cropped.reshape(count, height, spatial, width, spatial, 3)
    return shaped.mean(axis=(2, 4))


def clean_estimate(
    current: Any, sigma: float, previous: Any | None, previous_sigma: float | None
) -> Any:
    """The clean latents a flow-matching trajectory is heading to, from its state now and its
    state one step before; the state itself where there is no earlier one (or no noise left)."""
    if previous is None or previous_sigma is None or previous_sigma - sigma <= 1e-6:
        return current
    return (previous_sigma * current - sigma * previous) / (previous_sigma - sigma)


class StepPreviews:
    """One call's previews: after a step, when the sink's `every` steps have passed (or,
    without it, `seconds` since the last preview), the clean-latent estimate from this step's
    latents and the previous step's is turned into frames by `frames_of(pipeline, latents)`
    and handed to the sink. Never after the last step (the real decode follows). One per call:
    no state outlives the call."""

    def __init__(
        self,
        sink: Any,
        frames_of: Callable[[Any, Any], np.ndarray | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.frames_of = frames_of
        self.clock = clock
        self.every = int(getattr(sink, "every", 0) or 0) if sink is not None else 0
        self.seconds = float(getattr(sink, "seconds", 0.0) or 0.0) if sink is not None else 0.0
        self.enabled = sink is not None and (self.every > 0 or self.seconds > 0)
        self.last = clock()
        self.kept: tuple[Any, float] | None = None  # (latents, sigma) of the step before

    def after_step(self, pipeline: Any, done: int, latents: Any) -> None:
        """After step `done` (1-based) of `pipeline.num_timesteps`, with its latents."""
        if not self.enabled or latents is None:
            return
        sigma = _sigma_now(pipeline.scheduler)
        if done < pipeline.num_timesteps and self._due(done):
            previous, previous_sigma = self.kept if self.kept is not None else (None, None)
            estimate = clean_estimate(
                latents, sigma if sigma is not None else 0.0, previous, previous_sigma
            )
            frames = self.frames_of(pipeline, estimate)
            if frames is not None:
                self.sink.offer(done, pipeline.num_timesteps, frames)
            self.last = self.clock()
        self.kept = (latents.detach().clone(), sigma) if sigma is not None else None

    def _due(self, done: int) -> bool:
        if self.every:
            return done % self.every == 0
        return self.clock() - self.last >= self.seconds


def _sigma_now(scheduler: Any) -> float | None:
    """The noise level of the latents after the step just taken (flow-matching schedulers)."""
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is None or index is None or index >= len(sigmas):
        return None
    return float(sigmas[index])


def strip(
    frames: np.ndarray, *, count: int = PREVIEW_FRAMES, height: int = PREVIEW_HEIGHT
) -> bytes:
    """A JPEG of `count` frames evenly spread across `frames` (T, H, W, 3 floats in [0, 1]),
    side by side, each `height` pixels high: a preview a browser shows as it is."""
    total = len(frames)
    picks = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))})
    tiles = []
    for index in picks:
        tile = Image.fromarray((frames[index] * 255.0 + 0.5).astype(np.uint8))
        width = max(1, round(tile.width * height / tile.height))
        tiles.append(tile.resize((width, height), Image.Resampling.BILINEAR))
    sheet = Image.new("RGB", (sum(t.width for t in tiles), height))
    offset = 0
    for tile in tiles:
        sheet.paste(tile, (offset, 0))
        offset += tile.width
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()
