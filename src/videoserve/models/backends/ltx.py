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

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videoserve.models import grid as grids
from videoserve.models import previews
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.backends.diffusion import DiffusersBackend, register_family

if TYPE_CHECKING:
    import torch

T2V_CLASS = "LTXPipeline"
I2V_CLASS = "LTXImageToVideoPipeline"
CONDITION_CLASS = "LTXConditionPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS, CONDITION_CLASS)

DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025


@register_family
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

    def preview_decoder(self, pipe: Any) -> previews.Decoder | None:
        return ltx_decoder(pipe.vae)

    def preview_latents(self, pipe: Any, latents: Any, call: Mapping[str, Any]) -> Any:
        return unpacked(pipe, latents, call)

    def _call_kwargs(
        self, pipe: Any, shape: grids.GenerationPlan, frames: int, inputs: GenerationInputs
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"frame_rate": shape.fps}
        if pipe.vae.config.timestep_conditioning:
            kwargs |= {"decode_timestep": DECODE_TIMESTEP, "decode_noise_scale": DECODE_NOISE_SCALE}
        if inputs.image is not None:
            kwargs["image"] = inputs.image  # the condition pipeline puts it at frame_index 0
        return kwargs


def unpacked(pipe: Any, latents: Any, call: Mapping[str, Any]) -> Any:
    """LTX's (and LTX-2's) packed video latents (1, tokens, C x patch) of a call as (1, C, T,
    H, W), by the pipeline's own `_unpack_latents` over the call's latent grid; None where the
    tokens are not exactly that grid (a conditioned call that adds tokens of its own)."""
    if getattr(latents, "ndim", 0) == 5:
        return latents
    try:
        frames = (int(call["num_frames"]) - 1) // pipe.vae_temporal_compression_ratio + 1
        height = int(call["height"]) // pipe.vae_spatial_compression_ratio
        width = int(call["width"]) // pipe.vae_spatial_compression_ratio
        spatial = pipe.transformer_spatial_patch_size
        temporal = pipe.transformer_temporal_patch_size
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    # As the pipeline unpacks its own (its patch sizes are 1 in every LTX release so far).
    if getattr(latents, "ndim", 0) != 3 or tuple(latents.shape[:2]) != (1, frames * height * width):
        return None
    return pipe._unpack_latents(latents, frames, height, width, spatial, temporal)


def ltx_decoder(vae: Any) -> previews.Decoder:
    """An LTX-family VAE as its pipelines decode: the denoiser's latents are normalised per
    channel (`latents_mean`, `latents_std`, `scaling_factor`; the pipelines'
    `_denormalize_latents`), undone before the decode; a timestep-aware VAE decodes at
    timestep 0 (no noise mixed in: a preview needs no grain)."""
    import torch

    parameter = next(vae.parameters())
    channels = int(vae.latents_mean.numel())
    mean = vae.latents_mean.view(1, channels, 1, 1, 1).float().cpu()
    std = vae.latents_std.view(1, channels, 1, 1, 1).float().cpu()
    scale = float(vae.config.scaling_factor)

    def decode(latents: Any) -> Any:
        with torch.inference_mode():
            raw = (latents.float() * std / scale + mean).to(parameter.device, parameter.dtype)
            timestep = None
            if vae.config.timestep_conditioning:
                timestep = torch.zeros(1, device=parameter.device, dtype=parameter.dtype)
            video = vae.decode(raw, timestep, return_dict=False)[0][0].float().cpu()
        # (3, T, H, W) in [-1, 1] -> (T, H, W, 3) in [0, 1]
        return ((video.permute(1, 2, 3, 0).numpy() + 1.0) / 2.0).clip(0.0, 1.0)

    return previews.Decoder(
        decode, channels, int(vae.spatial_compression_ratio), int(vae.temporal_compression_ratio)
    )
