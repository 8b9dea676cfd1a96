"""LTX-2 through diffusers: video with synchronized sound, from text or from a first frame.

`LTX2Pipeline` returns frames and a waveform together: its transformer denoises video and audio
latents side by side, the audio VAE decodes a mel spectrogram and the vocoder turns it into a
waveform (24 kHz stereo for LTX-2.0). Image-to-video is `LTX2ImageToVideoPipeline` built over
the same modules (its components are the same eight), so one set of weights does both.

With `upsampler` (an `LTX2LatentUpsamplerModel` folder, e.g. the checkpoint's
`latent_upsampler/`), generation is two-stage as in diffusers' LTX-2 example: the denoising runs
at half the planned size (rounded up to the 32 grid), and `LTX2LatentUpsamplePipeline` doubles
the frames in latent space; the result is fitted to the delivered size like any other.

The pipeline always decodes both streams (diffusers 0.42 has no switch to skip the audio VAE
and vocoder), so `audio: false` drops the waveform after the call rather than saving its decode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from videoserve.models import grid as grids
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.backends.diffusion import DiffusersBackend, to_uint8
from videoserve.models.params import AudioDiffusersParams

if TYPE_CHECKING:
    import torch

T2V_CLASS = "LTX2Pipeline"
I2V_CLASS = "LTX2ImageToVideoPipeline"
SUPPORTED_CLASSES = (T2V_CLASS, I2V_CLASS)
MAX_SEQUENCE_LENGTH = 1024  # the pipeline's default prompt length in tokens
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

    def __init__(self, *args: Any, upsampler: Path | str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upsampler = None if upsampler is None else Path(upsampler)
        self._upsample: Any = None  # LTX2LatentUpsamplePipeline over our VAE, once loaded

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
        self._upsample = None
        super().unload()

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
        return kwargs

    def _waveform(self, output: Any) -> np.ndarray | None:
        audio = getattr(output, "audio", None)
        if audio is None:
            return None
        first = audio[0]
        waveform = first.float().cpu().numpy() if hasattr(first, "cpu") else np.asarray(first)
        return np.asarray(waveform, dtype=np.float32).reshape(waveform.shape[0], -1)
