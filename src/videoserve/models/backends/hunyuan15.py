"""HunyuanVideo 1.5 through diffusers: text-to-video, and image-to-video where the folder can.

Two layouts, told apart by `model_index.json`:
- `HunyuanVideo15Pipeline` (the `*_t2v` checkpoints): text-to-video. When the folder also holds
  a SigLIP `image_encoder/` and its `feature_extractor/` (e.g. copied from an I2V checkpoint),
  `HunyuanVideo15ImageToVideoPipeline` is built over the same modules plus those two, so
  `input_reference` and chained durations work; without them `input_reference` is a 400
  naming what is missing.
- `HunyuanVideo15ImageToVideoPipeline` (the `*_i2v` checkpoints): an image is required.

The image pipeline picks its own size from the image and the transformer's `target_size` (a
bucket of about target_size^2 pixels); the image is fitted to the planned size first, whose
buckets the grid lists, and a pass the pipeline makes at another bucket is resized back.

diffusers 0.42's HunyuanVideo 1.5 pipelines take neither `callback_on_step_end` nor
`guidance_scale` (guidance lives in the `guider` component). `steps_and_guidance` subclasses
them to take both, as every other family's pipeline does: the scheduler's `step` is wrapped for
the call (it runs exactly once per denoising step, after the guider has combined both
predictions), so progress is reported per step and raising `Cancelled` there stops between
steps, skipping the rest and the VAE decode; the guider's scale is set for the call and put
back after it.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models import previews
from videoserve.models.backends.diffusion import (
    DiffusersBackend,
    fit_image,
    read_model_index,
    register_family,
    to_uint8,
)
from videoserve.models.params import VideoParams

if TYPE_CHECKING:
    import torch

T2V_CLASS = "HunyuanVideo15Pipeline"
I2V_CLASS = "HunyuanVideo15ImageToVideoPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS)
# What `model_index.json` of a text-to-video folder must name, each a subfolder.
COMPONENTS = (
    "scheduler",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "transformer",
    "guider",
)
IMAGE_PARTS = ("image_encoder", "feature_extractor")  # SigLIP, for image-to-video
CLASS_COMPONENTS = {T2V_CLASS: COMPONENTS, I2V_CLASS: COMPONENTS + IMAGE_PARTS}
TARGET_SIZE_720P = 960  # the 720p checkpoints' transformer `target_size` (480p: 640)


def missing_image_parts(folder: Path | None) -> list[str]:
    """The SigLIP subfolders image-to-video needs that `folder` lacks (each holds a config)."""
    if folder is None:
        return list(IMAGE_PARTS)
    configs = {"image_encoder": "config.json", "feature_extractor": "preprocessor_config.json"}
    return [part for part in IMAGE_PARTS if not (folder / part / configs[part]).is_file()]


def detect_grid(folder: Path | None) -> grids.FamilyGrid:
    """480p or 720p, from the transformer's `target_size`; 480p if unsure."""
    try:
        config = json.loads((Path(str(folder)) / "transformer" / "config.json").read_text())
        target = int(config["target_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return grids.HUNYUAN15_480P_GRID
    return grids.HUNYUAN15_720P_GRID if target >= TARGET_SIZE_720P else grids.HUNYUAN15_480P_GRID


@functools.cache
def steps_and_guidance(class_name: str) -> Any:
    """The diffusers pipeline class `class_name`, taking `callback_on_step_end` (called after
    each scheduler step) and `guidance_scale` (the guider's, for this call) like the others."""
    import diffusers

    base: type = getattr(diffusers, class_name)

    def __call__(
        self: Any,
        *args: Any,
        guidance_scale: float | None = None,
        callback_on_step_end: Any = None,
        **kwargs: Any,
    ) -> Any:
        scheduler, guider = self.scheduler, self.guider
        step_of, scale = scheduler.step, guider.guidance_scale
        done = 0

        def step(*step_args: Any, **step_kwargs: Any) -> Any:
            nonlocal done
            result = step_of(*step_args, **step_kwargs)
            done += 1
            if callback_on_step_end is not None:
                timestep = step_args[1] if len(step_args) > 1 else step_kwargs.get("timestep")
                latents = result[0] if isinstance(result, tuple) else result.prev_sample
                callback_on_step_end(self, done - 1, timestep, {"latents": latents})
            return result

        scheduler.step = step  # an instance attribute: shadows the method for this call
        if guidance_scale is not None:
            guider.guidance_scale = float(guidance_scale)
        try:
            return base.__call__(self, *args, **kwargs)
        finally:
            del scheduler.step
            guider.guidance_scale = scale

    return type(base.__name__, (base,), {"__call__": __call__, "__module__": __name__})


@register_family
class HunyuanVideo15Backend(DiffusersBackend):
    """A HunyuanVideo 1.5 folder: T2V, I2V where its SigLIP parts are there."""

    family = "hunyuan15"
    pipeline_classes = SUPPORTED_CLASSES
    default_grid = grids.HUNYUAN15_480P_GRID
    required_components = COMPONENTS
    class_components = CLASS_COMPONENTS  # the I2V class needs its SigLIP parts too
    takes_loras = False  # diffusers 0.42.1 gives these pipelines no LoRA loader
    # The README's "Optimal Inference Configurations" for the 480p/720p T2V and I2V models:
    # 50 steps, CFG scale 6; its `--negative_prompt` default is empty.
    DEFAULT_STEPS = 50
    DEFAULT_GUIDANCE = 6.0
    DEFAULT_NEGATIVE_PROMPT = ""

    def _detect_grid(self, folder: Path | None) -> grids.FamilyGrid:
        return detect_grid(folder)

    def check(self, params: VideoParams, *, model: str | None = None) -> None:
        index = read_model_index(self.path) or {}
        if params.input_reference is not None and index.get("_class_name") == T2V_CLASS:
            missing = missing_image_parts(self.path)
            if missing:
                raise errors.InvalidRequest(
                    f"input_reference: model '{model or self.name}' cannot start from an image: "
                    f"its folder has no {' or '.join(missing)} (the SigLIP image encoder "
                    f"{I2V_CLASS} needs)",
                    param="input_reference",
                )
        super().check(params, model=model)

    def _accepts_image(self, index: Mapping[str, Any]) -> bool:
        return index.get("_class_name") == I2V_CLASS or not missing_image_parts(self.path)

    def _requires_image(self, index: Mapping[str, Any]) -> bool:
        return index.get("_class_name") == I2V_CLASS

    def _from_pretrained(self, folder: Path, class_name: str, dtype: torch.dtype) -> Any:
        pipe = steps_and_guidance(class_name).from_pretrained(
            folder, dtype=dtype, local_files_only=True
        )
        if class_name == I2V_CLASS or missing_image_parts(folder):
            return pipe
        from transformers import SiglipImageProcessor, SiglipVisionModel

        # One pipeline holding every module, so that placing it places the SigLIP parts too.
        return steps_and_guidance(I2V_CLASS)(
            **pipe.components,
            image_encoder=SiglipVisionModel.from_pretrained(
                folder / "image_encoder", dtype=dtype, local_files_only=True
            ).eval(),
            feature_extractor=SiglipImageProcessor.from_pretrained(
                folder / "feature_extractor", local_files_only=True
            ),
        )

    def _pipelines(self, primary: Any, class_name: str) -> tuple[Any, Any]:
        if "image_encoder" not in primary.components:
            return primary, None
        if class_name == I2V_CLASS:
            return None, primary  # an image-to-video checkpoint: an image is required
        text_parts = {k: v for k, v in primary.components.items() if k not in IMAGE_PARTS}
        return steps_and_guidance(T2V_CLASS)(**text_parts), primary

    def preview_decoder(self, pipe: Any) -> previews.Decoder | None:
        return hunyuan15_decoder(pipe.vae)

    def _finish(self, frames: np.ndarray, width: int, height: int) -> np.ndarray:
        if frames.shape[1:3] == (height, width):
            return frames
        # The image pipeline's own bucket: back to the planned size, so passes join.
        fitted = [fit_image(Image.fromarray(to_uint8(f)), width, height) for f in frames]
        return np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in fitted])

    @contextlib.contextmanager
    def _pipeline_call(self, pipe: Any, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if type(pipe).__name__ != I2V_CLASS:
            yield call
            return
        # The image pipeline sizes itself from the image (fitted to the plan) and its
        # `target_size`: it takes no height or width.
        yield {k: v for k, v in call.items() if k not in ("height", "width")}


def hunyuan15_decoder(vae: Any) -> previews.Decoder:
    """HunyuanVideo 1.5's VAE as its pipelines decode: the denoiser's latents are the VAE's
    scaled by `scaling_factor`, undone before the decode (32 channels, 16x spatial, 4x time)."""
    import torch

    config = vae.config
    scale = float(config.scaling_factor)
    parameter = next(vae.parameters())

    def decode(latents: Any) -> Any:
        with torch.inference_mode():
            raw = (latents / scale).to(parameter.device, parameter.dtype)
            video = vae.decode(raw, return_dict=False)[0][0].float().cpu()
        # (3, T, H, W) in [-1, 1] -> (T, H, W, 3) in [0, 1]
        return ((video.permute(1, 2, 3, 0).numpy() + 1.0) / 2.0).clip(0.0, 1.0)

    return previews.Decoder(
        decode,
        int(config.latent_channels),
        int(config.spatial_compression_ratio),
        int(config.temporal_compression_ratio),
    )
