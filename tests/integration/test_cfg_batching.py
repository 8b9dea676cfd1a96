"""Batched CFG (`videoserve.models.backends.cfg`) on tiny random-weight Wan pipelines.

With the same seed, batched and plain CFG give the same video up to float rounding (fp32 on the
CPU) for every Wan layout: T2V, I2V with a CLIP image encoder, Wan 2.2 TI2V (text and image) and
Wan 2.2 A14B's two transformers, while the transformer computes half as many forwards, each a
batch of two. Forwards are counted where a forward's computation starts (a pre-hook on the patch
embedding), calls where the pipeline makes them (a pre-hook on the transformer). Calls it does
not recognise fall back to plain forwards and the same video. Last, the `batch_cfg` option
through the real loader (`families.create_backend` on a saved folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from diffusers.hooks import FirstBlockCacheConfig
from PIL import Image

from videoserve.models import families, random_weights
from videoserve.models.backends import cfg
from videoserve.models.backends.base import Cancelled, GenerationInputs
from videoserve.models.backends.diffusion import DiffusersBackend
from videoserve.models.backends.tiny import build_tiny_pipeline
from videoserve.models.options import DiffusersOptions, RuntimeOptions
from videoserve.models.params import DiffusersParams

PROMPT, NEGATIVE = "a cat walking in the forest", "blurry"
CALL = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "guidance_scale": 5}
# Frames in [0, 1]. A batch of two and two batches of one are float32 GEMMs that may round
# differently: with diffusers 0.42.1 the image-to-video layout differed by up to 1.3e-5 on 3 of
# 15,360 values. Changing the negative prompt moves frames by ~1e-2, 200 times this bound.
TOLERANCE = 5e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class Counter:
    """A transformer's calls from the pipeline, and the forwards computed (batch size of each)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.calls = 0
        self.forwards: list[int] = []
        transformer.register_forward_pre_hook(self._call)
        transformer.patch_embedding.register_forward_pre_hook(self._forward)

    def _call(self, module: Any, args: tuple) -> None:
        self.calls += 1

    def _forward(self, module: Any, args: tuple) -> None:
        self.forwards.append(args[0].shape[0])

    def take(self) -> tuple[int, list[int]]:
        taken = (self.calls, self.forwards)
        self.calls, self.forwards = 0, []
        return taken


def build(layout: str, seed: int = 1) -> Any:
    pipe = random_weights.build_pipeline(random_weights.TINY[layout], seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def generate(pipe: Any, batched: bool, **change: Any) -> tuple[np.ndarray, cfg.CFGRun | None]:
    """One video: the pipeline's own CFG, or the prompts encoded first and CFG batched."""
    call = {**CALL, "generator": torch.Generator().manual_seed(0), "output_type": "np", **change}
    with torch.inference_mode():
        if not batched:
            output = pipe(**{"prompt": PROMPT, "negative_prompt": NEGATIVE, **call})
            return output.frames[0], None
        embeds = cfg.encode_prompts(pipe, PROMPT, NEGATIVE)
        with cfg.batching(pipe, *embeds) as run:
            output = pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], **call)
        return output.frames[0], run


def assert_same_video(batched: np.ndarray, plain: np.ndarray) -> None:
    assert batched.shape == plain.shape
    np.testing.assert_allclose(batched, plain, rtol=0, atol=TOLERANCE)


# --- the hook on diffusers' own pipelines ------------------------------------------------------
@pytest.mark.parametrize(
    ("layout", "with_image"),
    [("wan2.1", False), ("wan2.1-i2v", True), ("wan2.2-ti2v", False), ("wan2.2-ti2v", True)],
    ids=["wan2.1-t2v", "wan2.1-i2v", "wan2.2-ti2v-text", "wan2.2-ti2v-image"],
)
def test_batched_cfg_same_video_with_half_the_forwards(layout: str, with_image: bool) -> None:
    pipe = build(layout)
    if with_image and not isinstance(pipe, WanImageToVideoPipeline):
        # TI2V: the image pipeline over the text pipeline's modules, as WanBackend builds it.
        pipe = WanImageToVideoPipeline(**pipe.components, expand_timesteps=True)
    change = {"image": image()} if with_image else {}
    counter = Counter(pipe.transformer)
    plain, _ = generate(pipe, batched=False, **change)
    assert counter.take() == (4, [1, 1, 1, 1])  # 2 steps x (cond, uncond)

    assert cfg.install(pipe) == 1
    batched, run = generate(pipe, batched=True, **change)
    assert counter.take() == (4, [2, 2])  # the same calls; one forward of two per step
    assert run is not None and (run.batched, run.served, run.plain, run.stopped) == (2, 2, 0, None)
    assert_same_video(batched, plain)
    # The uncond half really is the negative prompt's: changing it changes the video.
    other = generate(pipe, batched=False, negative_prompt="a dog", **change)[0]
    assert np.abs(other - plain).max() > 100 * TOLERANCE


def test_two_transformers_of_wan22_a14b() -> None:
    """Wan 2.2 A14B: the high-noise transformer above the boundary, the low-noise one below."""
    high = build("wan2.1")
    low = build("wan2.1", seed=2).transformer
    pipe = WanPipeline(**{**high.components, "transformer_2": low}, boundary_ratio=0.8)
    pipe.set_progress_bar_config(disable=True)
    counters = Counter(pipe.transformer), Counter(pipe.transformer_2)
    steps = {"num_inference_steps": 3}  # timesteps 999, 857 (high), 600 (low)
    plain, _ = generate(pipe, batched=False, **steps)
    assert [c.take() for c in counters] == [(4, [1, 1, 1, 1]), (2, [1, 1])]

    assert cfg.install(pipe) == 2
    batched, run = generate(pipe, batched=True, **steps)
    assert [c.take() for c in counters] == [(4, [2, 2]), (2, [2])]
    assert run is not None and (run.batched, run.served, run.plain) == (3, 3, 0)
    assert_same_video(batched, plain)


# --- what it does not recognise runs plain, with the same video --------------------------------
def test_no_cfg_at_guidance_one_falls_back_after_one_step() -> None:
    pipe = build("wan2.1")
    plain, _ = generate(pipe, batched=False, guidance_scale=1.0)
    cfg.install(pipe)
    counter = Counter(pipe.transformer)
    batched, run = generate(pipe, batched=True, guidance_scale=1.0)
    # Step 1 is batched for an uncond call that never comes; step 2 sees that and runs plain.
    assert counter.take() == (2, [2, 1])
    assert run is not None and (run.batched, run.served, run.plain) == (1, 0, 1)
    assert run.stopped == "the call after a batched forward did not ask for its other half"
    assert_same_video(batched, plain)


def test_embeddings_it_was_not_told_about_run_plain() -> None:
    pipe = build("wan2.1")
    plain, _ = generate(pipe, batched=False)
    cfg.install(pipe)
    counter = Counter(pipe.transformer)
    with torch.inference_mode():
        embeds = cfg.encode_prompts(pipe, PROMPT, NEGATIVE)
        with cfg.batching(pipe, embeds[0].clone(), embeds[1].clone()) as run:
            call = {**CALL, "generator": torch.Generator().manual_seed(0), "output_type": "np"}
            output = pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], **call)
    assert counter.take() == (4, [1, 1, 1, 1])
    assert (run.batched, run.plain) == (0, 4) and run.stopped is not None
    assert_same_video(output.frames[0], plain)


def test_not_armed_is_the_plain_forward() -> None:
    pipe = build("wan2.2-ti2v")
    plain, _ = generate(pipe, batched=False)
    cfg.install(pipe)
    counter = Counter(pipe.transformer)
    assert np.array_equal(generate(pipe, batched=False)[0], plain)
    assert counter.take() == (4, [1, 1, 1, 1])


def test_first_block_cache_keeps_batched_state_apart() -> None:
    """A fallback mid-video must not compare a batch-of-one call with batch-of-two cache state."""
    pipe = build("wan2.1")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    cfg.install(pipe)

    def new_negative_tensor(pipeline: Any, step: int, t: Any, tensors: dict) -> dict:
        # Equal values, another tensor: from step 2's uncond call on, the hook must run plain.
        return {"negative_prompt_embeds": tensors["negative_prompt_embeds"].clone()}

    video, run = generate(
        pipe,
        batched=True,
        num_inference_steps=4,
        callback_on_step_end=new_negative_tensor,
        callback_on_step_end_tensor_inputs=["negative_prompt_embeds"],
    )
    assert run is not None and (run.batched, run.served, run.plain) == (2, 1, 5)
    assert video.shape == (5, 32, 32, 3) and np.isfinite(video).all()


def test_first_block_cache_that_skips_nothing_gives_the_same_video() -> None:
    pipe = build("wan2.2-ti2v")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e-9))
    plain, _ = generate(pipe, batched=False)
    cfg.install(pipe)
    batched, run = generate(pipe, batched=True)
    assert run is not None and run.batched == 2
    assert_same_video(batched, plain)


# --- the `batch_cfg` option, through the loader ------------------------------------------------
def test_batch_cfg_default_is_a_gpu_without_offloading() -> None:
    assert RuntimeOptions().batches_cfg("cuda") and RuntimeOptions().batches_cfg("cuda:1")
    assert not RuntimeOptions().batches_cfg("cpu")
    assert not RuntimeOptions(cpu_offload=True).batches_cfg("cuda")
    assert not RuntimeOptions(group_offload=True).batches_cfg("cuda")
    assert RuntimeOptions(batch_cfg=True).batches_cfg("cpu")
    assert not RuntimeOptions(batch_cfg=False).batches_cfg("cuda")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "tiny-ti2v"
    build_tiny_pipeline(folder, seed=1)
    return folder


def backend(folder: Path, batch_cfg: bool) -> tuple[DiffusersBackend, Counter]:
    options = {"family": "tiny", "steps": 2, "batch_cfg": batch_cfg}
    model = families.create_backend("wan", str(folder), DiffusersOptions(**options), "cpu")
    model.load()
    return model, Counter(model._t2v.transformer)


def test_backend_option_same_video_half_the_forwards(tiny_folder: Path) -> None:
    plain, plain_count = backend(tiny_folder, batch_cfg=False)
    batched, batched_count = backend(tiny_folder, batch_cfg=True)
    assert not cfg.installed(plain._t2v) and cfg.installed(batched._i2v)
    for picture in (None, image()):
        params = DiffusersParams(prompt=PROMPT, duration=4, seed=5, guidance_scale=5.0)
        expected = plain.generate(
            params, GenerationInputs(image=picture), lambda s, t: None, lambda: False
        )
        video = batched.generate(
            params, GenerationInputs(image=picture), lambda s, t: None, lambda: False
        )
        assert video.frames.shape == expected.frames.shape
        # uint8 frames: rounding can move a value by one step
        assert np.abs(video.frames.astype(int) - expected.frames.astype(int)).max() <= 1
        assert plain_count.take() == (4, [1, 1, 1, 1])
        assert batched_count.take() == (4, [2, 2])


def test_backend_runs_again_after_a_cancel(tiny_folder: Path) -> None:
    model, counter = backend(tiny_folder, batch_cfg=True)
    params = DiffusersParams(prompt=PROMPT, duration=4, seed=5, num_inference_steps=3)
    first = model.generate(params, GenerationInputs(), lambda s, t: None, lambda: False)
    steps: list[int] = []
    with pytest.raises(Cancelled):
        model.generate(
            params, GenerationInputs(), lambda s, t: steps.append(s), lambda: len(steps) >= 1
        )
    counter.take()
    again = model.generate(params, GenerationInputs(), lambda s, t: None, lambda: False)
    assert np.array_equal(again.frames, first.frames)
    assert counter.take() == (6, [2, 2, 2])
