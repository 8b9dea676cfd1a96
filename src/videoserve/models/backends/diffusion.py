"""What every diffusers family shares: finding the weights, runtime options, the step loop.

A family module (`wan.py`, `ltx.py`) says which pipeline classes it loads, how its image
pipeline shares the text pipeline's weights and which extra arguments its pipelines take. This
base finds the weights (a local folder or the Hugging Face cache, never the network), places
them on the device with the operator's runtime options, reports progress per denoising step,
stops between steps, chains image-to-video passes for a duration over one pass (where the
family has an image pipeline), and delivers frames at the planned size. torch and diffusers are
imported only when a model loads, so an API process that never generates does not pay for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models import speed
from videoserve.models.backends import seams
from videoserve.models.backends.base import (
    Availability,
    Cancelled,
    Capabilities,
    GeneratedVideo,
    GenerationInputs,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.backends.lora import LoadedAdapters, Profile
from videoserve.models.options import DTYPES, DiffusersOptions
from videoserve.models.params import DURATIONS, DiffusersParams, VideoParams
from videoserve.models.weights import Weights

if TYPE_CHECKING:
    import torch

    from videoserve.models.pool import ModelPool

log = logging.getLogger("videoserve.models")


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs on this host, from its TOML entry (parsed and checked in `options.py`)."""

    cpu_offload: bool = False  # enable_model_cpu_offload: one whole component on the GPU at a time
    group_offload: bool = False  # group offloading: layers streamed to the GPU as they run
    vae_tiling: bool = False  # decode in tiles: far less memory for large frames
    cache: str | None = None  # "first_block": skip the remaining blocks while outputs barely move
    cache_threshold: float = 0.05  # First Block Cache: higher skips more (faster, rougher)
    batch_cfg: bool | None = None  # CFG's two forwards as one batch (Wan); None: `batches_cfg`
    attention_backend: str | None = None  # diffusers `set_attention_backend` (`speed.py`)
    compile: str | None = None  # "regional": `compile_repeated_blocks`, warmed up at load
    quantize: str | None = None  # a torchao config of the transformer(s): "fp8", "int8"...

    @classmethod
    def from_entry(cls, options: DiffusersOptions) -> RuntimeOptions:
        """The runtime part of an entry's parsed options."""
        return cls(
            **{field.name: getattr(options, field.name) for field in dataclasses.fields(cls)}
        )

    def batches_cfg(self, device: str) -> bool:
        """Whether CFG runs as one batch on `device`: by default on a GPU, unless offloading.

        A batch of two is faster on a GPU and the same video up to float rounding, but holds
        twice the activations: an operator who offloads is short of memory, so it stays off
        there unless `batch_cfg` says otherwise. On a CPU it gains little.
        """
        if self.batch_cfg is not None:
            return self.batch_cfg
        return device.startswith("cuda") and not (self.cpu_offload or self.group_offload)


# A file's identity for the config cache: it changed if any of these did.
Stamp = tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)

# Weights' JSON configs by file, with the stamp they were read at. Why a cache: `check` runs
# on every submit and read `model_index.json` (open, read, parse) twice per call, a third of
# the submit service's time; a stat is a tenth of that. Keyed on the stamp rather than loaded
# once at startup, because weights can arrive or change while serving (`videoserve pull`, the
# tiny model's first build) and every reader must see the folder as it is now.
# Keyed by the path's string (building `Path` children cost more than the stat).
_configs: dict[str, tuple[Stamp, dict[str, Any] | None]] = {}


def stamp(file: str | Path) -> Stamp | None:
    """The file's (mtime, size, inode), or None when it is absent or unreadable."""
    try:
        found = os.stat(file)
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


def read_json_config(file: str) -> dict[str, Any] | None:
    """The JSON object in `file`, or None when it is missing, unreadable or not an object.

    Read again only when the file's stamp changed; the caller gets its own shallow copy."""
    now = stamp(file)
    if now is None:
        _configs.pop(file, None)
        return None
    cached = _configs.get(file)
    if cached is not None and cached[0] == now:
        return dict(cached[1]) if cached[1] is not None else None
    try:
        with open(file, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except (OSError, ValueError):
        loaded = None
    config = loaded if isinstance(loaded, dict) else None
    _configs[file] = (now, config)
    return dict(config) if config is not None else None


def read_model_index(path: Path | None) -> dict[str, Any] | None:
    """The folder's `model_index.json`, or None when it is missing or unreadable."""
    if path is None:
        return None
    return read_json_config(os.path.join(path, "model_index.json"))


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


class DiffusersBackend:
    """A diffusers video pipeline from a folder or the hub cache: T2V, and I2V where it can."""

    family: ClassVar[str] = ""  # "wan", "ltx": what `families.family_of` maps classes to
    pipeline_classes: ClassVar[tuple[str, ...]] = ()  # the `_class_name`s this family loads
    takes_loras: ClassVar[bool] = True  # its pipelines have diffusers' `load_lora_weights`
    required_components: ClassVar[tuple[str, ...]] = ()  # checked at startup, named if absent
    default_grid: ClassVar[grids.FamilyGrid]
    DEFAULT_STEPS: ClassVar[int] = 40
    DEFAULT_GUIDANCE: ClassVar[float] = 5.0
    DEFAULT_NEGATIVE_PROMPT: ClassVar[str] = ""

    schema: type[VideoParams] = DiffusersParams

    def __init__(
        self,
        name: str,
        path: Path | str,
        grid: grids.FamilyGrid | None = None,
        *,
        device: str = "auto",
        dtype: torch.dtype | str | None = None,
        default_steps: int | None = None,
        default_guidance: float | None = None,
        default_negative_prompt: str | None = None,
        grid_overrides: Mapping[str, Any] | None = None,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        """`path`: a folder, or (as a str) a Hugging Face repo id looked up in the local cache.

        `grid` None: detected from the folder's configs. `dtype` None: bf16 on a GPU, else fp32
        (a str: bf16, fp16 or fp32). `grid_overrides` replaces fields of the grid (`fps`,
        `max_frames`...) for operators who want other videos than the family was trained for.
        """
        self.name = name
        self.weights = Weights(path)
        self.device = device
        self.dtype = dtype
        self.default_steps = default_steps or self.DEFAULT_STEPS
        self.default_guidance = (
            self.DEFAULT_GUIDANCE if default_guidance is None else float(default_guidance)
        )
        self.default_negative_prompt = (
            self.DEFAULT_NEGATIVE_PROMPT
            if default_negative_prompt is None
            else default_negative_prompt
        )
        self.runtime = runtime or RuntimeOptions()
        self.pool: ModelPool | None = None  # set by the registry: keeps few models in memory
        self._grid = grid
        self._grid_overrides = dict(grid_overrides or {})
        # (folder, its configs' stamps) -> the grid detected from them (`_detected_grid`).
        self._grid_seen: tuple[tuple[Any, ...], grids.FamilyGrid] | None = None
        # One lock for load, unload and generate: a pipeline's scheduler keeps per-call state,
        # so two generations on one backend run one after the other.
        self._lock = threading.RLock()
        self._device: str | None = None
        self._t2v: Any = None
        self._i2v: Any = None
        self._offload_hooked: Any = None  # the pipeline whose CPU-offload hooks are installed
        self._adapters = LoadedAdapters()  # LoRAs of adapter entries over this pipeline

    # --- what the weights are ----------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The folder holding `model_index.json` now; None for a repo not in the cache."""
        return self.weights.folder()

    @property
    def grid(self) -> grids.FamilyGrid:
        base = self._grid or self._detected_grid()
        return dataclasses.replace(base, **self._grid_overrides) if self._grid_overrides else base

    @property
    def loaded(self) -> bool:
        return self._t2v is not None or self._i2v is not None

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
            from videoserve.models import families

            where = folder / "model_index.json"
            other = families.PIPELINE_FAMILIES.get(str(class_name))
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
                f"({', '.join(families.PIPELINE_FAMILIES)})",
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

    # --- loading -------------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if not self.loaded:
                self._load()
        if self.pool is not None:
            self.pool.loaded(self)  # outside our lock: it may unload other models

    def unload(self) -> None:
        with self._lock:
            if self.loaded:
                self._t2v = self._i2v = self._offload_hooked = None
                self._adapters = LoadedAdapters()
                gc.collect()
                if self._device and self._device.startswith("cuda"):
                    import torch

                    torch.cuda.empty_cache()
                self._device = None
                log.info("unloaded %s", self.name)
        if self.pool is not None:
            self.pool.unloaded(self)

    def _load(self) -> None:
        state = self.availability()
        if not state.available:
            raise errors.ModelUnavailable(f"model '{self.name}' is unavailable: {state.reason}")
        folder = self.path
        assert folder is not None  # available
        class_name = str((read_model_index(folder) or {}).get("_class_name"))
        device = resolve_device(self.device)
        dtype = self._torch_dtype(device)
        log.info("loading %s from %s on %s (%s)", self.name, folder, device, dtype)
        try:
            primary = self._from_pretrained(folder, class_name, dtype)
        except (OSError, ValueError) as exc:
            raise errors.ModelUnavailable(
                f"model '{self.name}' failed to load from {folder}: {exc}"
            ) from exc
        self._place(primary, device)
        t2v, i2v = self._pipelines(primary, class_name)
        for pipe in (t2v, i2v):
            if pipe is not None:
                pipe.set_progress_bar_config(disable=True)
        self._device, self._t2v, self._i2v = device, t2v, i2v
        if self.runtime.compile is not None:
            self._warm_up()

    def _warm_up(self) -> None:
        """One short call at the family's first size, so compiling happens now, not in a job.

        With `dynamic=True` the compiled blocks take other sizes and frame counts without
        recompiling; the call runs under CFG (guidance > 1) and batched CFG where installed,
        as jobs do, and stops before the VAE.
        """
        grid = self.grid
        width, height = grid.trained[0] if grid.trained else (grid.multiple * 2,) * 2
        frames = grid.frame_rule + 1
        pipe = self._t2v or self._i2v
        if pipe is self._i2v:
            log.info("%s: compiled, warmed up by the first job (an image model)", self.name)
            return
        import torch

        begun = time.perf_counter()
        with torch.inference_mode():
            arguments = {"prompt": "warm-up", "negative_prompt": "", "guidance_scale": 2.0}
            with self._pipeline_call(pipe, arguments) as call:
                pipe(
                    **call,
                    height=height,
                    width=width,
                    num_frames=frames,
                    num_inference_steps=2,
                    output_type="latent",
                    **self._call_kwargs(
                        pipe,
                        _warm_shape(width, height, frames, grid.fps),
                        frames,
                        GenerationInputs(),
                    ),
                )
        log.info("%s: compiled and warmed up in %.1f s", self.name, time.perf_counter() - begun)

    def _torch_dtype(self, device: str) -> torch.dtype:
        import torch

        if self.dtype is None:
            return torch.bfloat16 if device.startswith("cuda") else torch.float32
        if isinstance(self.dtype, str):
            return getattr(torch, DTYPES[self.dtype])
        return self.dtype

    def _place(self, pipe: Any, device: str) -> None:
        """Put the weights where they run: on the device, or offloaded as configured."""
        import torch

        offload = self.runtime.cpu_offload or self.runtime.group_offload
        if offload and not device.startswith("cuda"):
            log.warning("%s: offloading needs a GPU; running on %s without it", self.name, device)
            offload = False
        if not offload:
            pipe.to(device)
        if self.runtime.quantize is not None:
            speed.quantize(pipe, self.runtime.quantize)
        if self.runtime.attention_backend is not None:
            speed.set_attention(pipe, self.runtime.attention_backend)
        elif self.runtime.group_offload:
            # Leaf-level groups on a side stream: the documented low-memory setting that keeps
            # most of the speed, since transfers overlap the computation.
            pipe.enable_group_offload(
                onload_device=torch.device(device),
                offload_device=torch.device("cpu"),
                offload_type="leaf_level",
                use_stream=True,
            )
        # cpu_offload hooks are installed per call (`_hook_offload`): the text and image
        # pipelines share modules, and each pipeline chains its own hooks over them.
        if self.runtime.vae_tiling:
            pipe.vae.enable_tiling()
        if self.runtime.cache == "first_block":
            from diffusers.hooks import FirstBlockCacheConfig

            for part in ("transformer", "transformer_2"):
                module = getattr(pipe, part, None)
                if module is not None:
                    module.enable_cache(
                        FirstBlockCacheConfig(threshold=self.runtime.cache_threshold)
                    )
        if self.runtime.compile == "regional":
            # After the cache hooks, so the compiled blocks include them.
            speed.compile_regions(pipe, cached=self.runtime.cache is not None)

    def _hook_offload(self, pipe: Any) -> None:
        if not self.runtime.cpu_offload or not str(self._device).startswith("cuda"):
            return
        if self._offload_hooked is not pipe:
            pipe.enable_model_cpu_offload(device=self._device)
            self._offload_hooked = pipe

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        if self.pool is None:
            yield
        else:
            with self.pool.in_use(self):
                yield

    # --- generating ----------------------------------------------------------------------
    def generate(
        self,
        params: VideoParams,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        return self.generate_for(self.profile, params, inputs, on_progress, should_stop)

    def generate_for(
        self,
        profile: Profile,
        params: VideoParams,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> GeneratedVideo:
        """`generate` for `profile`: its defaults, and only its adapters active."""
        guidance = getattr(params, "guidance_scale", None)
        seed = getattr(params, "seed", None)
        seed = secrets.randbits(32) if seed is None else seed
        call = {
            "prompt": params.prompt,
            "negative_prompt": getattr(params, "negative_prompt", None) or profile.negative_prompt,
            "num_inference_steps": getattr(params, "num_inference_steps", None) or profile.steps,
            "guidance_scale": profile.guidance if guidance is None else guidance,
        }
        with_audio = self.makes_audio and getattr(params, "audio", True)
        with self._in_use():
            self.load()
            with self._lock:
                if not self.loaded:  # unloaded by hand between the two lines above
                    self._load()
                shape = grids.plan(
                    self.grid,
                    params.size,
                    params.duration,
                    chain=self._chains_now(),
                )
                pipe = self._t2v if self._t2v is not None else self._i2v
                self._adapters.activate(pipe, profile.adapters, self.name)
                frames, waveform = self._run_segments(
                    call, shape, seed, inputs, on_progress, should_stop
                )
        frames = to_uint8(frames[: shape.out_frames + int(inputs.continues)])
        if frames.shape[1:3] != (shape.out_height, shape.out_width):
            frames = np.stack(
                [
                    np.asarray(fit_image(Image.fromarray(f), shape.out_width, shape.out_height))
                    for f in frames
                ]
            )
        rate = self.audio_sample_rate if with_audio and waveform is not None else None
        return GeneratedVideo(
            frames=frames,
            fps=float(shape.fps),
            model=profile.model,
            seed=seed,
            segments=shape.segments,
            audio=waveform if rate else None,  # the encoder fits it to the frames' length
            audio_sample_rate=rate,
        )

    def drop_adapters(self, names: set[str]) -> None:
        """Unload these LoRAs from the pipeline (their entry lets go of its memory)."""
        with self._lock:
            if self.loaded:
                self._adapters.drop(self._t2v if self._t2v is not None else self._i2v, names)

    def _run_segments(
        self,
        call: dict[str, Any],
        shape: grids.GenerationPlan,
        seed: int,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every pass of the plan, joined: float frames in [0, 1] at the generated size, and the
        waveform (channels, samples) where the passes made sound, else None.

        A later pass is image-to-video from the last frame so far, with seed + k so that one
        seed still gives one video; its first frame re-renders that image and is dropped, and
        its sound is crossfaded with the previous pass's over that frame (`seams`).
        Progress runs once from 0 to the steps of all passes.
        """
        count = shape.segments
        parts: list[np.ndarray] = []
        waves: list[np.ndarray | None] = []
        for k, frames in enumerate(shape.segment_frames):

            def progress(step: int, total: int, k: int = k) -> None:
                on_progress(k * total + step, count * total)

            if k:
                last = Image.fromarray(to_uint8(parts[-1][-1]))
                inputs = dataclasses.replace(inputs, image=last)
            width, height = self._stage_size(shape)
            size = {"height": height, "width": width, "num_frames": frames}
            output = self._run({**call, **size}, shape, seed + k, inputs, progress, should_stop)
            segment = self._finish(np.asarray(output.frames[0]), width, height)
            parts.append(segment[1:] if k else segment)
            waves.append(self._waveform(output))
        video = np.concatenate(parts) if count > 1 else parts[0]
        sounds = [wave for wave in waves if wave is not None]
        if len(sounds) != count:
            return video, None
        if count == 1:
            return video, sounds[0]
        rate = self.audio_sample_rate
        assert rate is not None  # a pipeline that made sound says its rate
        return video, seams.join_passes(sounds, shape.segment_frames, shape.fps, rate)

    def _run(
        self,
        call: dict[str, Any],
        shape: grids.GenerationPlan,
        seed: int,
        inputs: GenerationInputs,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> Any:
        """One pipeline call under the lock, with progress and cancellation between steps."""
        image = inputs.image
        pipe = self._pipeline_for(inputs)
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

        fitted = dataclasses.replace(
            inputs,
            image=None if image is None else fit_image(image, shape.gen_width, shape.gen_height),
            reference_images=tuple(
                fit_image(picture, shape.gen_width, shape.gen_height)
                for picture in inputs.reference_images
            ),
        )
        self._hook_offload(pipe)
        try:
            with torch.inference_mode(), self._pipeline_call(pipe, call) as arguments:
                return pipe(
                    **arguments,
                    generator=torch.Generator(self._device).manual_seed(seed),
                    output_type="np",
                    callback_on_step_end=on_step_end,
                    **self._call_kwargs(pipe, shape, call["num_frames"], fitted),
                )
        except Cancelled:
            # A stopped call skips the pipeline's own cleanup: reset step caches and offload
            # hooks, or the next video would start from this one's cached residuals.
            pipe.maybe_free_model_hooks()
            raise

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

    def run_video_to_video(
        self,
        call: dict[str, Any],
        seed: int,
        video: list[Image.Image],
        strength: float,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> np.ndarray:
        """One video-to-video call over the loaded modules: float frames in [0, 1].

        Its own small copy of `_run`'s step loop, so `_run` (whose inputs are changing with
        the backend protocol) stays untouched; fold the two together once that has landed.
        """
        with self._in_use():
            self.load()
            with self._lock:
                if not self.loaded:
                    self._load()
                pipe = self._video_pipeline(self._t2v) if self._t2v is not None else None
                if pipe is None:
                    raise errors.InvalidRequest(self.edit_refusal() or f"{self.name}: no edits")
                pipe.set_progress_bar_config(disable=True)
                if should_stop():
                    raise Cancelled(f"{self.name}: cancelled before the first step")
                import torch

                def on_step_end(
                    pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
                ) -> dict[str, Any]:
                    on_progress(step + 1, pipeline.num_timesteps)
                    if should_stop():
                        raise Cancelled(f"{self.name}: cancelled after step {step + 1}")
                    return {}

                self._hook_offload(pipe)
                try:
                    with torch.inference_mode():
                        output = pipe(
                            **call,
                            video=video,
                            strength=strength,
                            generator=torch.Generator(self._device).manual_seed(seed),
                            output_type="np",
                            callback_on_step_end=on_step_end,
                        )
                except Cancelled:
                    pipe.maybe_free_model_hooks()
                    raise
        return np.asarray(output.frames[0])

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

    def _pipeline_for(self, inputs: GenerationInputs) -> Any:
        """The loaded pipeline one pass runs on (None where there is none for these inputs):
        image-to-video for an input image, else text-to-video. A family may choose others
        (LTX-2's frame conditioning for a source's last frames)."""
        return self._i2v if inputs.image is not None else self._t2v

    def _chains_now(self) -> bool:
        """Whether this generation may chain passes: where there is an image pipeline (the
        passes' sound, if any, is joined at the seams)."""
        return self._i2v is not None

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


def _warm_shape(width: int, height: int, frames: int, fps: int) -> grids.GenerationPlan:
    return grids.GenerationPlan(width, height, width, height, frames, frames, fps)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline frames in [0, 1] floats -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
