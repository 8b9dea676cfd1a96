"""What a diffusers family says, from its configs alone: which pipelines it loads, its grid,
whether given weights are usable, what a request may ask of them, and the hooks through which
a family shapes the calls (`DiffusersBackend` in `diffusion.py` loads and calls).

Why apart from `diffusion.py`: none of this loads a model or needs torch; a submit's `check`,
the registry and `/v1/models` read only this half.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models.backends.base import Availability, Capabilities, GenerationInputs
from videoserve.models.backends.configs import read_json_config, read_model_index, stamp
from videoserve.models.backends.lora import Profile
from videoserve.models.params import DURATIONS, DiffusersParams, VideoParams
from videoserve.models.weights import Weights

if TYPE_CHECKING:
    import torch

# `_class_name` in model_index.json -> the family that loads it. Each family's backend
# registers itself where it is defined (`register_family`), so this base, which reads it,
# never imports the families that import it.
PIPELINE_FAMILIES: dict[str, str] = {}

B = TypeVar("B", bound="type[DiffusersFamily]")


def register_family(backend: B) -> B:
    """Class decorator of a family's backend: its pipeline classes map to its family."""
    for class_name in backend.pipeline_classes:
        PIPELINE_FAMILIES[class_name] = backend.family
    return backend


class DiffusersFamily:
    """The configs-only half of a diffusers backend; a family overrides the hooks below."""

    # Set by the backend's constructor (`DiffusersBackend.__init__`).
    name: str
    weights: Weights
    default_steps: int
    default_guidance: float
    default_negative_prompt: str
    _grid: grids.FamilyGrid | None
    _grid_overrides: dict[str, Any]
    _grid_seen: tuple[tuple[Any, ...], grids.FamilyGrid] | None

    family: ClassVar[str] = ""  # "wan", "ltx": what `PIPELINE_FAMILIES` maps classes to
    pipeline_classes: ClassVar[tuple[str, ...]] = ()  # the `_class_name`s this family loads
    takes_loras: ClassVar[bool] = True  # its pipelines have diffusers' `load_lora_weights`
    required_components: ClassVar[tuple[str, ...]] = ()  # checked at startup, named if absent
    default_grid: ClassVar[grids.FamilyGrid]
    DEFAULT_STEPS: ClassVar[int] = 40
    DEFAULT_GUIDANCE: ClassVar[float] = 5.0
    DEFAULT_NEGATIVE_PROMPT: ClassVar[str] = ""

    schema: type[VideoParams] = DiffusersParams

    # --- what the weights are ----------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The folder holding `model_index.json` now; None for a repo not in the cache."""
        return self.weights.folder()

    @property
    def grid(self) -> grids.FamilyGrid:
        base = self._grid or self._detected_grid()
        return dataclasses.replace(base, **self._grid_overrides) if self._grid_overrides else base

    def availability(self) -> Availability:
        folder = self.path
        if folder is None:
            return Availability(False, self.weights.missing_reason(self.name))
        if not folder.is_dir():
            return Availability(False, f"no model folder at {folder}")
        index = read_model_index(folder)
        if index is None:
            return Availability(
                False, f"{folder} has no readable model_index.json (a diffusers pipeline folder)"
            )
        class_name = index.get("_class_name")
        if class_name not in self.pipeline_classes:
            where = folder / "model_index.json"
            other = PIPELINE_FAMILIES.get(str(class_name))
            if other is not None:
                # The weights changed family after startup (e.g. pulled while serving).
                return Availability(
                    False,
                    f"{where} names {class_name!r}, a {other} pipeline, but '{self.name}' was "
                    f"set up as {self.family} when its weights were absent: restart videoserve",
                )
            return Availability(
                False,
                f"{where} names {class_name!r}, not a supported pipeline "
                f"({', '.join(PIPELINE_FAMILIES)})",
            )
        return Availability(True)

    @property
    def profile(self) -> Profile:
        """This entry's own generations: its defaults, no adapters."""
        return Profile(
            self.name, self.default_steps, self.default_guidance, self.default_negative_prompt
        )

    def check(self, params: VideoParams, *, model: str | None = None) -> None:
        """Refuse at submit time (400) what `generate` would refuse later; reads no weights.

        `model`: the public model the message names (an adapter entry over this base).
        """
        name = model or self.name
        index = read_model_index(self.path)
        # No index yet (the tiny model before its first build): `generate` decides.
        grids.plan(self.grid, params.size, params.duration, chain=self._chains(index or {}))
        if not index:
            return
        if params.input_reference is not None and not self._accepts_image(index):
            raise errors.InvalidRequest(
                f"input_reference: model '{name}' does not accept an input image",
                param="input_reference",
            )
        if params.input_reference is None and self._requires_image(index):
            raise errors.InvalidRequest(
                f"input_reference: model '{name}' needs an input image",
                param="input_reference",
            )

    def sequence_lengths(self, params: VideoParams) -> tuple[int, ...] | None:
        """The transformer's video tokens in each pass of `params` (what context parallelism
        splits over ranks), from the VAE's and the transformer's configs; None when they do
        not say (the run decides)."""
        index = read_model_index(self.path)
        ratios = latent_ratios(self.path) if index and self.path is not None else None
        if not index or ratios is None:
            return None
        shape = grids.plan(self.grid, params.size, params.duration, chain=self._chains(index))
        temporal, spatial, patch_t, patch_h, patch_w = ratios
        height = shape.gen_height // spatial // patch_h
        width = shape.gen_width // spatial // patch_w
        return tuple(
            ((frames - 1) // temporal + 1) // patch_t * height * width
            for frames in shape.segment_frames
        )

    def durations(self) -> tuple[int, ...]:
        """The public durations this model makes with its defaults (sound on where it has it)."""
        index = read_model_index(self.path) or {}
        chain = self._chains(index)
        able = []
        for duration in DURATIONS:
            try:
                grids.plan(self.grid, "1280x720", duration, chain=chain)
            except errors.InvalidRequest:
                continue
            able.append(duration)
        return tuple(able)

    def pull(self) -> Path:
        """Download the weights into the Hugging Face cache; `weights.PullFailed` if it cannot."""
        return self.weights.pull(self.name)

    # --- edits: video-to-video over the same weights ------------------------------------
    def edit_refusal(self) -> str | None:
        """Why this model cannot edit a video, or None when it can; reads configs only."""
        index = read_model_index(self.path) or {}
        if index and not self._edits(index):
            return (
                f"model '{self.name}' has no video-to-video pipeline over its weights "
                f"({index.get('_class_name')}); edits need a Wan text-to-video model"
            )
        return None

    def _edits(self, index: Mapping[str, Any]) -> bool:
        """Whether the family builds a video-to-video pipeline over these weights."""
        return False

    def _video_pipeline(self, t2v: Any) -> Any:
        """A video-to-video pipeline over the text pipeline's modules; None if none."""
        return None

    # --- what a family says --------------------------------------------------------------
    makes_audio: ClassVar[bool] = False  # the pipeline returns a waveform with the frames

    @property
    def audio_sample_rate(self) -> int | None:
        """The waveform's sample rate (a loaded pipeline's vocoder says), else None."""
        return None

    @property
    def capabilities(self) -> Capabilities:
        """What these weights can do, from their configs (no weights read)."""
        index = read_model_index(self.path) or {}
        image_to_video = bool(index) and self._accepts_image(index)
        return Capabilities(
            text_to_video=not index or not self._requires_image(index),
            image_to_video=image_to_video,
            audio=self.makes_audio,
            video_to_video=bool(index) and self._edits(index),
            extend=image_to_video,  # an extension starts image-to-video from the last frame
        )

    def _stage_size(self, shape: grids.GenerationPlan) -> tuple[int, int]:
        """(width, height) the denoising runs at: the plan's, unless a family upsamples after."""
        return shape.gen_width, shape.gen_height

    def _finish(self, frames: np.ndarray, width: int, height: int) -> np.ndarray:
        """One pass's float frames after denoising (a family may upsample them here)."""
        return frames

    def _waveform(self, output: Any) -> np.ndarray | None:
        """The (channels, samples) float waveform of one pipeline output, if it has one."""
        return None

    def _detect_grid(self, folder: Path | None) -> grids.FamilyGrid:
        """The family's grid for these weights (configs only, no weights read)."""
        return self.default_grid

    def _detected_grid(self) -> grids.FamilyGrid:
        """`_detect_grid` of the weights now, kept while the configs it reads are unchanged
        (`model_index.json` and the transformer's `config.json`: two stats per call instead
        of reading and parsing them on every submit's `check`)."""
        folder = self.path
        key = (
            folder,
            None if folder is None else stamp(os.path.join(folder, "model_index.json")),
            None if folder is None else stamp(os.path.join(folder, "transformer", "config.json")),
        )
        cached = self._grid_seen
        if cached is not None and cached[0] == key:
            return cached[1]
        detected = self._detect_grid(folder)
        self._grid_seen = (key, detected)
        return detected

    def _from_pretrained(self, folder: Path, class_name: str, dtype: torch.dtype) -> Any:
        """Load the folder's own pipeline class on the CPU."""
        raise NotImplementedError

    def _pipelines(self, primary: Any, class_name: str) -> tuple[Any, Any]:
        """(text-to-video, image-to-video) over the loaded modules; None where it cannot."""
        raise NotImplementedError

    def _accepts_image(self, index: Mapping[str, Any]) -> bool:
        return True

    def _chains(self, index: Mapping[str, Any]) -> bool:
        """Whether a duration over one pass is chained: image-to-video with the same weights.

        An empty index (weights not there yet) passes here; `generate` checks the pipelines.
        """
        return not index or self._accepts_image(index)

    def _requires_image(self, index: Mapping[str, Any]) -> bool:
        return False

    def _call_kwargs(
        self, pipe: Any, shape: grids.GenerationPlan, frames: int, inputs: GenerationInputs
    ) -> dict[str, Any]:
        """The family's own pipeline arguments (the input image among them, fitted to the
        generated size, as are the reference images)."""
        return {"image": inputs.image} if inputs.image is not None else {}

    @contextlib.contextmanager
    def _pipeline_call(self, pipe: Any, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The prompt arguments of one pipeline call, and what must hold while it runs.

        A family may swap the prompts for embeddings it made (Wan's batched CFG).
        """
        yield call


def latent_ratios(folder: Path | str) -> tuple[int, int, int, int, int] | None:
    """(temporal, spatial) compression of the folder's VAE and the (t, h, w) patch of its
    transformer, from their configs (Wan's `scale_factor_*`, LTX's and HunyuanVideo 1.5's
    `*_compression_ratio`; a `patch_size` list, or an int beside `patch_size_t`); None when a
    config is missing or leaves one out."""
    base = os.fspath(folder)
    vae = read_json_config(os.path.join(base, "vae", "config.json")) or {}
    transformer = read_json_config(os.path.join(base, "transformer", "config.json")) or {}
    temporal = vae.get("scale_factor_temporal", vae.get("temporal_compression_ratio"))
    spatial = vae.get("scale_factor_spatial", vae.get("spatial_compression_ratio"))
    patch = transformer.get("patch_size")
    if isinstance(patch, list) and len(patch) == 3:
        patch_t, patch_h, patch_w = patch
    elif isinstance(patch, int):
        patch_t, patch_h, patch_w = transformer.get("patch_size_t") or 1, patch, patch
    else:
        return None
    found = (temporal, spatial, patch_t, patch_h, patch_w)
    if not all(isinstance(value, int) and value > 0 for value in found):
        return None
    return found  # type: ignore[return-value]
