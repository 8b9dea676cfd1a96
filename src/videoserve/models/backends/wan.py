"""Wan 2.1 and Wan 2.2 through diffusers: text-to-video, and image-to-video where the weights can.

One family, several layouts, all told apart by their configs (no weights read):
- Wan 2.1 T2V 1.3B / 14B (`WanPipeline`): text only.
- Wan 2.1 I2V 14B (`WanImageToVideoPipeline`, with a CLIP image encoder): an image is required.
- Wan 2.2 TI2V 5B (`WanPipeline` with `expand_timesteps`): text, or an image as the first frame
  through `WanImageToVideoPipeline` over the same modules. The built-in `tiny-t2v` has this layout.
- Wan 2.2 A14B (`boundary_ratio`, two transformers): text only, at 720p.
- Wan 2.1 VACE 1.3B / 14B (`WanVACEPipeline`): one pipeline for text-to-video, image-to-video
  (the image as the first frame: frame 0 kept by the mask, the rest generated) and reference
  images (`GenerationInputs.reference_images`, e.g. characters), passed through as VACE's own
  `reference_images`.

Under classifier-free guidance the pipelines run the transformer twice per step; with the
`batch_cfg` option (by default on a GPU without offloading) the two run as one batch (`cfg.py`),
the prompts encoded here so that the batching knows both before the first step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from videoserve.models import grid as grids
from videoserve.models import previews
from videoserve.models.backends.base import Capabilities, GenerationInputs
from videoserve.models.backends.diffusion import DiffusersBackend, read_model_index, register_family

if TYPE_CHECKING:
    import torch

T2V_CLASS = "WanPipeline"
I2V_CLASS = "WanImageToVideoPipeline"
VACE_CLASS = "WanVACEPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS, VACE_CLASS)


def detect_grid(path: Path | None) -> grids.FamilyGrid:
    """Guess the Wan layout from the folder's configs; Wan 2.1 480p if unsure."""
    index = read_model_index(path) or {}
    if index.get("expand_timesteps"):
        return grids.WAN22_TI2V_GRID
    if index.get("boundary_ratio") is not None:
        return grids.WAN_720P_GRID
    try:
        config = json.loads((Path(str(path)) / "transformer" / "config.json").read_text())
        width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return grids.WAN21_GRID
    # The 14B models (5120 wide) were trained at 720p; the 1.3B only at 480p. (Wan 2.1 I2V
    # 14B-480P is 5120 wide too: its entry needs family = "wan2.1".)
    return grids.WAN_720P_GRID if width >= 5120 else grids.WAN21_GRID


@register_family
class WanBackend(DiffusersBackend):
    """A Wan pipeline folder: T2V, and I2V from the same weights where the layout allows."""

    family = "wan"
    pipeline_classes = SUPPORTED_CLASSES
    default_grid = grids.WAN21_GRID
    DEFAULT_STEPS = 40
    DEFAULT_GUIDANCE = 5.0

    def _detect_grid(self, folder: Path | None) -> grids.FamilyGrid:
        return detect_grid(folder)

    @property
    def capabilities(self) -> Capabilities:
        able = super().capabilities
        vace = (read_model_index(self.path) or {}).get("_class_name") == VACE_CLASS
        return dataclasses.replace(able, reference_images=vace)

    def _accepts_image(self, index: Mapping[str, Any]) -> bool:
        return index.get("_class_name") in (I2V_CLASS, VACE_CLASS) or bool(
            index.get("expand_timesteps")
        )

    def _requires_image(self, index: Mapping[str, Any]) -> bool:
        return index.get("_class_name") == I2V_CLASS

    def _from_pretrained(self, folder: Path, class_name: str, dtype: torch.dtype) -> Any:
        import torch
        from diffusers import WanImageToVideoPipeline, WanPipeline

        # Wan's VAE decodes noticeably better in fp32, and it is small.
        dtypes = {"default": dtype, "vae": torch.float32}
        if class_name == VACE_CLASS:
            from diffusers import WanVACEPipeline

            return WanVACEPipeline.from_pretrained(folder, dtype=dtypes, local_files_only=True)
        cls = WanImageToVideoPipeline if class_name == I2V_CLASS else WanPipeline
        return cls.from_pretrained(folder, dtype=dtypes, local_files_only=True)

    def _pipelines(self, primary: Any, class_name: str) -> tuple[Any, Any]:
        if class_name == VACE_CLASS:
            return primary, primary  # one pipeline: the inputs say what it does
        if class_name == I2V_CLASS:
            return None, primary
        shares = primary.config.expand_timesteps
        return primary, _image_pipeline_sharing(primary) if shares else None

    def _call_kwargs(
        self, pipe: Any, shape: grids.GenerationPlan, frames: int, inputs: GenerationInputs
    ) -> dict[str, Any]:
        if type(pipe).__name__ != VACE_CLASS:
            return super()._call_kwargs(pipe, shape, frames, inputs)
        kwargs: dict[str, Any] = {}
        if inputs.reference_images:
            kwargs["reference_images"] = list(inputs.reference_images)
        if inputs.image is not None:
            kwargs |= first_frame_conditions(inputs.image, frames)
        return kwargs

    def _place(self, pipe: Any, device: str) -> None:
        super()._place(pipe, device)
        # VACE's transformer takes its control states beside the batch: not batched here.
        if self.runtime.batches_cfg(device) and type(pipe).__name__ != VACE_CLASS:
            from videoserve.models.backends import cfg

            # Here, before any CPU-offload hooks (installed per call) wrap the forward.
            cfg.install(pipe)

    @contextlib.contextmanager
    def _pipeline_call(self, pipe: Any, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from videoserve.models.backends import cfg

        # The pipelines skip the unconditional call at guidance <= 1: nothing to batch.
        if call["guidance_scale"] <= 1 or not cfg.installed(pipe):
            yield call
            return
        embeds = cfg.encode_prompts(pipe, call["prompt"], call["negative_prompt"])
        rest = {k: v for k, v in call.items() if k not in ("prompt", "negative_prompt")}
        with cfg.batching(pipe, *embeds):
            yield {**rest, "prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}

    def preview_decoder(self, pipe: Any) -> previews.Decoder | None:
        return wan_decoder(pipe.vae)

    def _edits(self, index: Mapping[str, Any]) -> bool:
        return index.get("_class_name") == T2V_CLASS and index.get("boundary_ratio") is None

    def _video_pipeline(self, t2v: Any) -> Any:
        return _video_pipeline_sharing(t2v)


def wan_decoder(vae: Any) -> previews.Decoder:
    """Wan's VAE as its pipelines decode: the denoiser's latents are normalised per channel
    (`latents_mean`, `latents_std` of the VAE's config), undone before the decode."""
    import torch

    config = vae.config
    channels = int(config.z_dim)
    mean = torch.tensor(config.latents_mean).view(1, channels, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, channels, 1, 1, 1)
    parameter = next(vae.parameters())

    def decode(latents: Any) -> Any:
        with torch.inference_mode():
            raw = (latents * std + mean).to(parameter.device, parameter.dtype)
            video = vae.decode(raw, return_dict=False)[0][0].float().cpu()
        # (3, T, H, W) in [-1, 1] -> (T, H, W, 3) in [0, 1]
        return ((video.permute(1, 2, 3, 0).numpy() + 1.0) / 2.0).clip(0.0, 1.0)

    spatial = int(getattr(config, "scale_factor_spatial", 8) or 8)
    temporal = int(getattr(config, "scale_factor_temporal", 4) or 4)
    return previews.Decoder(decode, channels, spatial, temporal)


def first_frame_conditions(image: Image.Image, frames: int) -> dict[str, Any]:
    """VACE's `video` and `mask` for image-to-video: frame 0 is the image and is kept (mask
    black), every later frame is neutral gray and generated (mask white), as VACE's own
    first-frame task builds them."""
    gray = Image.new("RGB", image.size, (127, 127, 127))
    keep, make = Image.new("L", image.size, 0), Image.new("L", image.size, 255)
    return {
        "video": [image] + [gray] * (frames - 1),
        "mask": [keep] + [make] * (frames - 1),
    }


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


def _video_pipeline_sharing(t2v: Any) -> Any:
    """`WanVideoToVideoPipeline` over the text pipeline's modules (no copy, no dtype cast).

    diffusers 0.42's video-to-video pipeline derives its VAE scale factors from the layer
    count, which is right for Wan 2.1's VAE and wrong for Wan 2.2's (16x spatial): they are
    taken from the text pipeline, which reads them from the VAE's config.
    """
    from diffusers import WanVideoToVideoPipeline
    from diffusers.video_processor import VideoProcessor

    parts = t2v.components
    pipe = WanVideoToVideoPipeline(
        tokenizer=parts["tokenizer"],
        text_encoder=parts["text_encoder"],
        transformer=parts["transformer"],
        vae=parts["vae"],
        scheduler=parts["scheduler"],
    )
    pipe.vae_scale_factor_spatial = t2v.vae_scale_factor_spatial
    pipe.vae_scale_factor_temporal = t2v.vae_scale_factor_temporal
    pipe.video_processor = VideoProcessor(vae_scale_factor=t2v.vae_scale_factor_spatial)
    return pipe
