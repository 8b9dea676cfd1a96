"""Wan 2.x text-to-video and image-to-video through diffusers, from a local folder.

One loader for every Wan folder, the tiny test model's included: `WanPipeline.from_pretrained`
with `local_files_only=True`. torch and diffusers are imported only when a model loads, so an
API process that never generates does not pay for them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models.backends.base import (
    Availability,
    Cancelled,
    GeneratedVideo,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.params import DiffusersParams, VideoParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger("videoserve.models")

T2V_CLASS = "WanPipeline"
I2V_CLASS = "WanImageToVideoPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS)


def read_model_index(path: Path) -> dict[str, Any] | None:
    """The folder's `model_index.json`, or None when it is missing or unreadable."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def detect_grid(path: Path) -> grids.FamilyGrid:
    """Guess the Wan family from the folder's configs (no weights read); Wan 2.1 480p if unsure."""
    index = read_model_index(path) or {}
    if index.get("expand_timesteps"):
        return grids.WAN22_TI2V_GRID
    if index.get("boundary_ratio") is not None:
        return grids.WAN_720P_GRID
    try:
        config = json.loads((path / "transformer" / "config.json").read_text())
        width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return grids.WAN21_GRID
    # The 14B models (5120 wide) were trained at 720p; the 1.3B only at 480p.
    return grids.WAN_720P_GRID if width >= 5120 else grids.WAN21_GRID


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width`x`height`, center-cropping what sticks out, so nothing is stretched."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = width / scale, height / scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h)
    )


class WanBackend:
    """A Wan pipeline in a local diffusers folder: T2V, and I2V from the same weights."""

    schema: type[VideoParams] = DiffusersParams

    def __init__(
        self,
        name: str,
        path: Path,
        grid: grids.FamilyGrid | None = None,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        default_steps: int = 40,
        default_guidance: float = 5.0,
        default_negative_prompt: str = "",
        grid_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """`grid` None: detected from the folder's configs; `dtype` None: bf16 on GPU, else fp32.

        `grid_overrides` replaces fields of the grid (`fps`, `max_frames`...) for operators who
        want longer videos than the family was trained for.
        """
        self.name = name
        self.path = Path(path)
        self.device = device
        self.dtype = dtype
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.default_negative_prompt = default_negative_prompt
        self._grid = grid
        self._grid_overrides = dict(grid_overrides or {})
        # One lock for load, unload and generate: a pipeline's scheduler keeps per-call state,
        # so two generations on one backend run one after the other.
        self._lock = threading.RLock()
        self._device: str | None = None
        self._t2v: Any = None
        self._i2v: Any = None

    @property
    def grid(self) -> grids.FamilyGrid:
        base = self._grid or detect_grid(self.path)
        return dataclasses.replace(base, **self._grid_overrides) if self._grid_overrides else base

    @property
    def loaded(self) -> bool:
        return self._t2v is not None or self._i2v is not None

    def availability(self) -> Availability:
        if not self.path.is_dir():
            return Availability(False, f"no model folder at {self.path}")
        index = read_model_index(self.path)
        if index is None:
            return Availability(
                False, f"{self.path} has no readable model_index.json (a diffusers Wan folder)"
            )
        class_name = index.get("_class_name")
        if class_name not in SUPPORTED_CLASSES:
            return Availability(
                False,
                f"{self.path / 'model_index.json'} names {class_name!r}, not a supported Wan "
                f"pipeline ({', '.join(SUPPORTED_CLASSES)})",
            )
        return Availability(True)

    def check(self, params: VideoParams) -> None:
        """Refuse at submit time (400) what `generate` would refuse later; reads no weights.

        Not part of `VideoBackend`: callers use it when a backend has it.
        """
        grids.plan(self.grid, params.size, params.duration)
        index = read_model_index(self.path) or {}
        requires = index.get("_class_name") == I2V_CLASS
        accepts = requires or bool(index.get("expand_timesteps"))
        if params.input_reference is not None and not accepts and index:
            raise errors.InvalidRequest(
                f"input_reference: model '{self.name}' does not accept an input image",
                param="input_reference",
            )
        if params.input_reference is None and requires:
            raise errors.InvalidRequest(
                f"input_reference: model '{self.name}' needs an input image",
                param="input_reference",
            )

    def load(self) -> None:
        with self._lock:
            if self.loaded:
                return
            state = self.availability()
            if not state.available:
                raise errors.ModelUnavailable(f"model '{self.name}' is unavailable: {state.reason}")
            import torch
            from diffusers import WanImageToVideoPipeline, WanPipeline

            device = resolve_device(self.device)
            default = self.dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
            # Wan's VAE decodes noticeably better in fp32, and it is small.
            dtypes = {"default": default, "vae": torch.float32}
            index = read_model_index(self.path) or {}
            log.info("loading %s from %s on %s (%s)", self.name, self.path, device, default)
            try:
                if index.get("_class_name") == I2V_CLASS:
                    t2v = None
                    i2v = WanImageToVideoPipeline.from_pretrained(
                        self.path, dtype=dtypes, local_files_only=True
                    ).to(device)
                else:
                    t2v = WanPipeline.from_pretrained(
                        self.path, dtype=dtypes, local_files_only=True
                    ).to(device)
                    i2v = _image_pipeline_sharing(t2v) if t2v.config.expand_timesteps else None
            except (OSError, ValueError) as exc:
                raise errors.ModelUnavailable(
                    f"model '{self.name}' failed to load from {self.path}: {exc}"
                ) from exc
            for pipe in (t2v, i2v):
                if pipe is not None:
                    pipe.set_progress_bar_config(disable=True)
            self._device, self._t2v, self._i2v = device, t2v, i2v

    def unload(self) -> None:
        with self._lock:
            if not self.loaded:
                return
            self._t2v = self._i2v = None
            gc.collect()
            if self._device and self._device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            self._device = None

    def generate(
        self,
        params: VideoParams,
        image: Image.Image | None,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        shape = grids.plan(self.grid, params.size, params.duration)
        steps = getattr(params, "num_inference_steps", None) or self.default_steps
        guidance = getattr(params, "guidance_scale", None)
        guidance = self.default_guidance if guidance is None else guidance
        negative = getattr(params, "negative_prompt", None) or self.default_negative_prompt
        seed = getattr(params, "seed", None)
        seed = secrets.randbits(32) if seed is None else seed
        with self._lock:
            self.load()
            pipe = self._i2v if image is not None else self._t2v
            if pipe is None:
                needs = "does not accept" if image is not None else "needs"
                raise errors.InvalidRequest(
                    f"input_reference: model '{self.name}' {needs} an input image",
                    param="input_reference",
                )
            if should_stop():
                raise Cancelled(f"{self.name}: cancelled before the first step")
            import torch

            def on_step_end(
                pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
            ) -> dict[str, Any]:
                on_progress(step + 1, pipeline.num_timesteps)
                # Raising here skips the remaining steps and the VAE decode.
                if should_stop():
                    raise Cancelled(f"{self.name}: cancelled after step {step + 1}")
                return {}

            kwargs: dict[str, Any] = {}
            if image is not None:
                kwargs["image"] = fit_image(image, shape.gen_width, shape.gen_height)
            with torch.inference_mode():
                output = pipe(
                    prompt=params.prompt,
                    negative_prompt=negative,
                    height=shape.gen_height,
                    width=shape.gen_width,
                    num_frames=shape.gen_frames,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=torch.Generator(self._device).manual_seed(seed),
                    output_type="np",
                    callback_on_step_end=on_step_end,
                    **kwargs,
                )
        frames = _to_uint8(np.asarray(output.frames[0][: shape.out_frames]))
        if (shape.out_width, shape.out_height) != (shape.gen_width, shape.gen_height):
            frames = np.stack(
                [
                    np.asarray(fit_image(Image.fromarray(f), shape.out_width, shape.out_height))
                    for f in frames
                ]
            )
        return GeneratedVideo(frames=frames, fps=float(shape.fps), model=self.name, seed=seed)


def _image_pipeline_sharing(t2v: Any) -> Any:
    """An image-to-video pipeline over the text-to-video pipeline's modules (no copy).

    Built directly rather than with `from_pipe`, because `from_pipe` casts every shared module
    with `.to(dtype)` (fp32 by default): on a GPU that upcasts the bf16 transformer for both
    pipelines, or undoes the fp32 modules diffusers keeps inside it.
    """
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(
        **t2v.components,
        boundary_ratio=t2v.config.boundary_ratio,
        expand_timesteps=t2v.config.expand_timesteps,
    )


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline frames in [0, 1] floats -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
