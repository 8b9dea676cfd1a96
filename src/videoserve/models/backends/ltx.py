"""LTX-Video through diffusers: text-to-video and image-to-video from the same weights.

- `LTXPipeline` folders (LTX-Video 0.9.0-0.9.1): text with `LTXPipeline`, an image as the first
  frame with `LTXImageToVideoPipeline` built over the same modules (the components are the same).
- `LTXImageToVideoPipeline` folders: the other way round.
- `LTXConditionPipeline` folders (0.9.5 and later): one pipeline does both; an image conditions
  frame 0.
Decoding follows diffusers' recommended settings for the timestep-aware VAE of 0.9.1 and later
(`decode_timestep=0.05`, `decode_noise_scale=0.025`); `frame_rate` is the delivered rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoserve.models import grid as grids
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.backends.diffusion import DiffusersBackend

if TYPE_CHECKING:
    import torch

T2V_CLASS = "LTXPipeline"
I2V_CLASS = "LTXImageToVideoPipeline"
CONDITION_CLASS = "LTXConditionPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS, CONDITION_CLASS)

DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025


class LTXBackend(DiffusersBackend):
    """An LTX-Video pipeline folder: T2V and I2V over one set of weights."""

    family = "ltx"
    pipeline_classes = SUPPORTED_CLASSES
    default_grid = grids.LTX_VIDEO_GRID
    # The pipeline's own defaults (50 steps, guidance 3; the LTX-Video README recommends 3-3.5)
    # and the negative prompt of diffusers' LTX-Video examples.
    DEFAULT_STEPS = 50
    DEFAULT_GUIDANCE = 3.0
    DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"

    def _from_pretrained(self, folder: Path, class_name: str, dtype: torch.dtype) -> Any:
        import diffusers

        cls = getattr(diffusers, class_name)
        return cls.from_pretrained(folder, dtype=dtype, local_files_only=True)

    def _pipelines(self, primary: Any, class_name: str) -> tuple[Any, Any]:
        from diffusers import LTXImageToVideoPipeline, LTXPipeline

        if class_name == CONDITION_CLASS:
            return primary, primary
        # Same five components, so the sibling is built over them: no copy, no dtype cast.
        if class_name == I2V_CLASS:
            return LTXPipeline(**primary.components), primary
        return primary, LTXImageToVideoPipeline(**primary.components)

    def _call_kwargs(
        self, pipe: Any, shape: grids.GenerationPlan, frames: int, inputs: GenerationInputs
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"frame_rate": shape.fps}
        if pipe.vae.config.timestep_conditioning:
            kwargs |= {"decode_timestep": DECODE_TIMESTEP, "decode_noise_scale": DECODE_NOISE_SCALE}
        if inputs.image is not None:
            kwargs["image"] = inputs.image  # the condition pipeline puts it at frame_index 0
        return kwargs
