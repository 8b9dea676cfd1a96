"""LTX-2 through diffusers: video with synchronized sound, from text or from a first frame.

`LTX2Pipeline` returns frames and a waveform together: its transformer denoises video and audio
latents side by side, the audio VAE decodes a mel spectrogram and the vocoder turns it into a
waveform (24 kHz stereo for LTX-2.0). Image-to-video is `LTX2ImageToVideoPipeline` built over
the same modules (its components are the same eight), so one set of weights does both.

With `upsampler` (an `LTX2LatentUpsamplerModel` folder, e.g. the checkpoint's
`latent_upsampler/`), generation is two-stage as in diffusers' LTX-2 example: the denoising runs
at half the planned size (rounded up to the 32 grid), and `LTX2LatentUpsamplePipeline` doubles
the frames in latent space; the result is fitted to the delivered size like any other.

An extension continues a source by frame conditioning (`LTX2ConditionPipeline`, over the same
modules again): the source's last `CONDITION_FRAMES` frames, at the model's rate, are the first
frames of the new pass, which the model continues; those re-rendered frames are dropped but the
last of them (so the result starts like an image-to-video pass, with the source's last frame
re-rendered: `continuation.extend` crossfades the sound over it). The pipeline conditions the
pictures only (its `audio_latents` are starting noise, not a condition), so the sound is
continued by that crossfade, not by the model.

`audio: false` skips the sound's decode: the pipeline has no switch for it, but with
`output_type="latent"` it stops after denoising, and `_VideoOnly` then decodes the video
latents alone, exactly as the pipeline would (the audio VAE and the vocoder never run). The
transformer still denoises the audio latents beside the video's: they are one joint model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from videoserve.models import grid as grids
from videoserve.models import previews
from videoserve.models.backends.base import (
    GenerationInputs,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.backends.diffusion import (
    DiffusersBackend,
    PerCall,
    fit_image,
    register_family,
    to_uint8,
)
from videoserve.models.backends.ltx import ltx_decoder, unpacked
from videoserve.models.params import AudioDiffusersParams

if TYPE_CHECKING:
    import torch

T2V_CLASS = "LTX2Pipeline"
I2V_CLASS = "LTX2ImageToVideoPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS)
MAX_SEQUENCE_LENGTH = 1024  # the pipeline's default prompt length in tokens
TEMPORAL_RATIO = 8  # the video VAE's: a pass holds 8k+1 frames
# Frames of the source an extension conditions on: two latent frames of the causal VAE (its
# first frame alone, then eight), enough to carry the motion, not only the last picture.
CONDITION_FRAMES = TEMPORAL_RATIO + 1
# What `model_index.json` of an LTX-2 folder must name, each a subfolder (or the scheduler's).
COMPONENTS = (
    "scheduler",
    "vae",
    "audio_vae",
    "text_encoder",
    "tokenizer",
    "connectors",
    "transformer",
    "vocoder",
)


UPSAMPLER_CLASS = "LTX2LatentUpsamplerModel"


def upsampler_folder(path: Path) -> Path:
    """The folder holding the upsampler's config.json (itself or `latent_upsampler/`);
    ValueError saying what is missing."""
    for folder in (path, path / "latent_upsampler"):
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("_class_name") == UPSAMPLER_CLASS:
            return folder
        raise ValueError(
            f"upsampler: {folder / 'config.json'} names {config.get('_class_name')!r} "
            f"(expected {UPSAMPLER_CLASS!r})"
            if isinstance(config, dict)
            else f"upsampler: {folder / 'config.json'} is not a JSON object"
        )
    raise ValueError(
        f"upsampler: no {UPSAMPLER_CLASS} config.json in {path} or {path / 'latent_upsampler'}"
    )


@register_family
class LTX2Backend(DiffusersBackend):
    """An LTX-2 pipeline folder: T2V and I2V with sound over one set of weights."""

    family = "ltx2"
    pipeline_classes = SUPPORTED_CLASSES
    default_grid = grids.LTX2_GRID
    makes_audio = True
    required_components = COMPONENTS
    # The pipeline's own defaults (30 steps, guidance 3) and the negative prompt of the
    # LTX-Video examples, which LTX-2's model card reuses in spirit (artifacts, not content).
    DEFAULT_STEPS = 30
    DEFAULT_GUIDANCE = 3.0
    DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"

    schema = AudioDiffusersParams

    # `continuation.extend` hands this many of the source's last frames (`GenerationInputs.video`)
    continuation_frames = CONDITION_FRAMES

    def __init__(self, *args: Any, upsampler: Path | str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upsampler = None if upsampler is None else Path(upsampler)
        self._upsample: Any = None  # LTX2LatentUpsamplePipeline over our VAE, once loaded
        self._condition: Any = None  # LTX2ConditionPipeline over the same modules, when used

    @property
    def audio_sample_rate(self) -> int | None:
        pipe = self._t2v or self._i2v
        if pipe is None:
            return None
        return int(pipe.vocoder.config.output_sampling_rate)

    def _from_pretrained(self, folder: Path, class_name: str, dtype: torch.dtype) -> Any:
        import diffusers

        cls = getattr(diffusers, class_name)
        return cls.from_pretrained(folder, dtype=dtype, local_files_only=True)

    def _pipelines(self, primary: Any, class_name: str) -> tuple[Any, Any]:
        from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline

        self._upsample = self._load_upsampler(primary) if self.upsampler else None
        # Same components, so the sibling is built over them: no copy, no dtype cast.
        if class_name == I2V_CLASS:
            return LTX2Pipeline(**primary.components), primary
        return primary, LTX2ImageToVideoPipeline(**primary.components)

    def _load_upsampler(self, primary: Any) -> Any:
        from diffusers import LTX2LatentUpsamplePipeline
        from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

        assert self.upsampler is not None
        model = LTX2LatentUpsamplerModel.from_pretrained(
            upsampler_folder(self.upsampler), dtype=primary.vae.dtype, local_files_only=True
        )
        model.to(primary.vae.device)
        pipe = LTX2LatentUpsamplePipeline(vae=primary.vae, latent_upsampler=model)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def unload(self) -> None:
        self._upsample = self._condition = None
        super().unload()

    def _pipeline_for(self, inputs: GenerationInputs, this_call: PerCall) -> Any:
        pipe = super()._pipeline_for(inputs, this_call)
        if inputs.image is None and inputs.video is not None and pipe is not None:
            if self._condition is None:
                from diffusers import LTX2ConditionPipeline

                self._condition = LTX2ConditionPipeline(**pipe.components)
                self._condition.set_progress_bar_config(disable=True)
            pipe = self._condition
        if pipe is not None and not this_call.audio:
            return _VideoOnly(pipe)
        return pipe

    def _run_segments(
        self,
        call: dict[str, Any],
        shape: grids.GenerationPlan,
        seed: int,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
        this_call: PerCall,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A continuation of `inputs.video`: its frames, then `shape.out_frames` more (over one
        pass: chained by image-to-video as usual), returned from the re-rendering of its last
        frame on, with the sound of that frame on."""
        if inputs.video is None or inputs.image is not None:
            return super()._run_segments(
                call, shape, seed, inputs, on_progress, should_stop, this_call
            )
        lead = len(inputs.video)
        rule = math.lcm(self.grid.frame_rule, TEMPORAL_RATIO)
        longest = (self.grid.max_frames - 1) // rule * rule + 1
        counts = grids.chain_frames(lead + shape.out_frames, longest, rule)
        planned = dataclasses.replace(
            shape,
            gen_frames=counts[0],
            later_frames=tuple(counts[1:]),
            out_frames=lead + shape.out_frames,
        )
        this_call.passes = len(counts)  # a continuation plans its own passes
        video, wave = super()._run_segments(
            call, planned, seed, inputs, on_progress, should_stop, this_call
        )
        video = video[lead - 1 :]
        if wave is not None:
            rate = self.audio_sample_rate
            assert rate is not None  # a pipeline that made sound says its rate
            wave = wave[:, round((lead - 1) * rate / shape.fps) :]
        return video, wave

    def preview_decoder(self, pipe: Any) -> previews.Decoder | None:
        return ltx_decoder(pipe.vae)

    def preview_latents(self, pipe: Any, latents: Any, call: Mapping[str, Any]) -> Any:
        return unpacked(pipe, latents, call)

    def _stage_size(self, shape: grids.GenerationPlan) -> tuple[int, int]:
        if self.upsampler is None:
            return super()._stage_size(shape)
        multiple = self.grid.multiple
        half = [
            max(multiple, -(-side // (2 * multiple)) * multiple)
            for side in (shape.gen_width, shape.gen_height)
        ]
        return half[0], half[1]

    def _finish(self, frames: np.ndarray, width: int, height: int) -> np.ndarray:
        if self._upsample is None:
            return frames
        import torch

        pictures = [Image.fromarray(to_uint8(frame)) for frame in frames]
        with torch.inference_mode():
            output = self._upsample(
                video=pictures,
                width=width,
                height=height,
                num_frames=len(pictures),
                output_type="np",
            )
        return np.asarray(output.frames[0])

    def _call_kwargs(
        self, pipe: Any, shape: grids.GenerationPlan, frames: int, inputs: GenerationInputs
    ) -> dict[str, Any]:
        # `frame_rate` scales the temporal RoPE and sets the audio's length: the delivered rate.
        kwargs: dict[str, Any] = {
            "frame_rate": float(shape.fps),
            # Prompts are padded to this many tokens: the pipeline's 1024, unless the tokenizer
            # holds fewer (a small test tokenizer), where padding further only costs time.
            "max_sequence_length": min(MAX_SEQUENCE_LENGTH, int(pipe.tokenizer.model_max_length)),
        }
        if inputs.image is not None:
            kwargs["image"] = inputs.image
        elif inputs.video is not None:
            from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

            width, height = self._stage_size(shape)
            pictures = [fit_image(Image.fromarray(f), width, height) for f in inputs.video]
            # Latent index 0: the source's last frames open the new pass, fully kept.
            kwargs["conditions"] = [LTX2VideoCondition(frames=pictures, index=0, strength=1.0)]
        return kwargs

    def _waveform(self, output: Any) -> np.ndarray | None:
        audio = getattr(output, "audio", None)
        if audio is None:
            return None
        first = audio[0]
        waveform = first.float().cpu().numpy() if hasattr(first, "cpu") else np.asarray(first)
        return np.asarray(waveform, dtype=np.float32).reshape(waveform.shape[0], -1)


class _VideoOnly:
    """An LTX-2 pipeline called for its pictures alone: denoised to latents, then only the
    video VAE decodes them (the audio VAE and vocoder never run). Anything else is the
    pipeline's own (`maybe_free_model_hooks`, offload hooks)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        output_type = kwargs.pop("output_type", "np")
        latents = self.pipe(**kwargs, output_type="latent").frames
        return SimpleNamespace(frames=decode_video_latents(self.pipe, latents, output_type))


def decode_video_latents(pipe: Any, latents: Any, output_type: str = "np") -> Any:
    """The pipeline's own video decode of its (denormalized) `output_type="latent"` latents.

    With the decode timestep at its default of 0 (we never change it) the pipeline mixes no
    noise into the latents, so this is its decode step exactly, minus the audio.
    """
    import torch

    vae = pipe.vae
    timestep = None
    if vae.config.timestep_conditioning:
        timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=latents.dtype)
    video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type=output_type)
