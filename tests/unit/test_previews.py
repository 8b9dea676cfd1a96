"""The preview projection (latents to RGB, no VAE decode), its fit, the clean-latent estimate,
and the whole-job progress of the phases (issue 25)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from videoserve.jobs import phases
from videoserve.jobs.phases import Phase
from videoserve.models import previews


def test_the_fit_recovers_a_linear_decoder_exactly() -> None:
    # A decoder that IS affine per latent pixel (each latent pixel becomes a 4x4 patch, each
    # later latent frame two frames): least squares must give back its matrix and bias.
    generator = np.random.default_rng(3)
    weights = generator.normal(0, 0.1, (8, 3)).astype(np.float32)
    bias = np.array([0.5, 0.4, 0.3], np.float32)

    def decode(latents: torch.Tensor) -> np.ndarray:
        rgb = np.moveaxis(latents[0].numpy(), 0, -1) @ weights + bias  # (T, H, W, 3)
        frames = np.concatenate([rgb[:1], np.repeat(rgb[1:], 2, axis=0)])
        return frames.repeat(4, axis=1).repeat(4, axis=2)

    fitted = previews.fit_projection(decode, 8, spatial=4, temporal=2, samples=8)
    # The ridge term shrinks the weights by about 5 % (by design); the bias stays exact.
    assert np.allclose(fitted.weights, weights, rtol=0.1, atol=0.005)
    assert np.allclose(fitted.bias, bias, atol=0.002)


def test_a_fit_from_a_real_vae_previews_a_smooth_latent_within_its_stated_error(
    tmp_path: Path,
) -> None:
    """The tiny model's VAE (diffusers' AutoencoderKLWan, random weights, the layout of Wan
    2.2's): the projection fitted from it reproduces its decode of a smooth latent within
    0.05 mean absolute error on [0, 1] RGB at the latent grid, and never worse than the
    flat mean colour (a random-weight VAE is far from linear, unlike a trained one)."""
    from diffusers import AutoencoderKLWan

    from videoserve.models import random_weights
    from videoserve.models.backends.wan import wan_decoder

    pipe = random_weights.build_pipeline(random_weights.TINY["wan2.2-ti2v"], seed=0)
    vae: AutoencoderKLWan = pipe.vae
    decoder = wan_decoder(vae)
    projection = previews.fit_projection(
        decoder.decode, decoder.channels, spatial=decoder.spatial, temporal=decoder.temporal
    )
    size = (2, 4, 4)
    generator = torch.Generator().manual_seed(11)
    offset = torch.randn((1, decoder.channels, 1, 1, 1), generator=generator)
    slope = torch.randn((1, decoder.channels, 1, 1, 1), generator=generator)
    ramp = torch.linspace(-1.0, 1.0, size[2]).view(1, 1, 1, 1, size[2])
    smooth = (offset + slope * ramp).expand(1, decoder.channels, *size).contiguous()
    truth = previews.pooled(decoder.decode(smooth), size, decoder.spatial, decoder.temporal)
    error = float(np.abs(projection.rgb(smooth[0].numpy()) - truth).mean())
    flat = float(np.abs(truth - truth.mean(axis=(0, 1, 2))).mean())
    assert error < 0.05, error
    assert error <= flat * 1.05, (error, flat)
    # Saved beside the weights, read back as it was.
    previews.save(projection, tmp_path)
    loaded = previews.load(tmp_path)
    assert loaded is not None and np.array_equal(loaded.weights, projection.weights)
    assert previews.load(tmp_path / "missing") is None


def test_the_clean_estimate_of_a_flow_matching_trajectory_is_exact() -> None:
    clean, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    earlier, now = 0.9, 0.6
    state_then = (1 - earlier) * clean + earlier * noise
    state_now = (1 - now) * clean + now * noise
    estimate = previews.clean_estimate(state_now, now, state_then, earlier)
    assert torch.allclose(estimate, clean, atol=1e-5)
    assert previews.clean_estimate(state_now, now, None, None) is state_now  # no history


class _Sink:
    def __init__(self, every: int, seconds: float = 0.0) -> None:
        self.every, self.seconds = every, seconds
        self.offered: list[int] = []

    def offer(self, step: int, total: int, frames: np.ndarray) -> None:
        self.offered.append(step)


class _Scheduler:
    def __init__(self, steps: int) -> None:
        self.sigmas = torch.linspace(1.0, 0.0, steps + 1)
        self.step_index = 0


class _Pipeline:
    def __init__(self, steps: int) -> None:
        self.num_timesteps = steps
        self.scheduler = _Scheduler(steps)


def _run(sink: _Sink, steps: int, clock: list[float] | None = None) -> list[int]:
    pipeline = _Pipeline(steps)
    ticks = iter(clock or [0.0] * (steps + 1))
    loop = previews.StepPreviews(
        sink, lambda pipe, latents: np.zeros((2, 2, 2, 3)), clock=lambda: next(ticks)
    )
    for done in range(1, steps + 1):
        pipeline.scheduler.step_index = done
        loop.after_step(pipeline, done, torch.zeros(1, 4, 2, 2, 2))
    return sink.offered


def test_previews_come_every_n_steps_never_after_the_last() -> None:
    assert _run(_Sink(every=2), 8) == [2, 4, 6]
    assert _run(_Sink(every=1), 4) == [1, 2, 3]
    assert _run(_Sink(every=0, seconds=0.0), 4) == []  # off
    # By time: a preview once 2 s have passed since the last one.
    assert _run(_Sink(every=0, seconds=2.0), 6, [0, 1, 2.5, 2.6, 3, 4.6, 5, 5]) == [2, 5]


def test_a_strip_is_a_jpeg_of_frames_across_time() -> None:
    frames = np.linspace(0, 1, 9 * 6 * 10 * 3, dtype=np.float32).reshape(9, 6, 10, 3)
    picture = Image.open(io.BytesIO(previews.strip(frames)))
    assert picture.format == "JPEG"
    assert picture.size == (4 * 160, previews.PREVIEW_HEIGHT)  # 10:6 frames, 96 high


def test_progress_covers_the_whole_job_and_reaches_100_only_when_completed() -> None:
    seen = [phases.progress(Phase.LOADING_MODEL), phases.progress(Phase.ENCODING_PROMPT)]
    seen += [phases.progress(Phase.DENOISING, step, 30) for step in range(31)]
    seen += [phases.progress(p) for p in (Phase.DECODING, Phase.ENCODING_VIDEO, Phase.STORING)]
    assert seen == sorted(seen) and seen[0] == 0 and max(seen) < 100
    assert sum(phases.SHARES.values()) == phases.MAX_RUNNING_PROGRESS == 99


@pytest.mark.parametrize(
    ("status", "phase", "shown"),
    [
        ("QUEUED", None, "queued"),
        ("PROCESSING", None, "starting"),
        ("PROCESSING", "decoding", "decoding"),
        ("COMPLETED", "storing", "completed"),
        ("FAILED", "denoising", "failed"),
    ],
)
def test_the_phase_a_view_shows(status: str, phase: str | None, shown: str) -> None:
    assert phases.shown(status, phase) == shown


@pytest.mark.parametrize(
    ("body", "label"),
    [
        ({"status": "QUEUED", "queue_position": 3}, "queued (position 3)"),
        ({"status": "PROCESSING", "phase": "loading_model"}, "loading model"),
        (
            {"status": "PROCESSING", "phase": "denoising", "step": 7, "steps": 30},
            "denoising, step 7/30",
        ),
        ({"status": "PROCESSING", "phase": "encoding_video"}, "encoding video"),
        ({"status": "PROCESSING"}, "processing"),  # a server from before phases
        ({"status": "COMPLETED", "phase": "completed"}, "completed"),
    ],
)
def test_the_cli_progress_bar_names_the_phase_and_step(body: dict, label: str) -> None:
    from videoserve.cli.generate import status_label

    assert status_label(body) == label


def test_the_factors_script_fits_any_family_folder_by_its_vae(tmp_path: Path) -> None:
    """`python -m videoserve.models.backends.preview_factors FOLDER --write`: reads the VAE
    only, prints the factors, writes preview_factors.json where the backend reads it; a folder
    without a known VAE is refused with a message naming why."""
    import subprocess
    import sys

    from videoserve.models import random_weights

    folder = tmp_path / "ltx"
    random_weights.build_pipeline(random_weights.TINY["ltx"], seed=0).save_pretrained(folder)
    script = [sys.executable, "-m", "videoserve.models.backends.preview_factors"]
    done = subprocess.run([*script, str(folder), "--write"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "weights = [" in done.stdout and "written to" in done.stdout
    written = previews.load(folder)
    channels = json.loads((folder / "vae" / "config.json").read_text())["latent_channels"]
    assert written is not None and written.weights.shape == (channels, 3)
    refused = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "no vae/config.json (not a diffusers model folder)" in refused.stderr
