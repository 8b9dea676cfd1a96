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
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models import previews, speed
from videoserve.models.backends import seams
from videoserve.models.backends.base import (
    Cancelled,
    GeneratedVideo,
    GenerationInputs,
    ProgressCallback,
    StopCheck,
)
from videoserve.models.backends.configs import read_model_index
from videoserve.models.backends.diffusers_family import (
    PIPELINE_FAMILIES,
    DiffusersFamily,
    register_family,
)
from videoserve.models.backends.frames import fit_image, to_uint8
from videoserve.models.backends.lora import LoadedAdapters, Profile
from videoserve.models.options import DTYPES, RuntimeOptions
from videoserve.models.params import VideoParams
from videoserve.models.weights import Weights

if TYPE_CHECKING:
    import torch

    from videoserve.models.pool import ModelPool

# The backend and its per-call value; the rest is re-exported for callers of the module
# before it was split (configs, frames and the family half live in their own modules).
__all__ = [
    "PIPELINE_FAMILIES",
    "DiffusersBackend",
    "DiffusersFamily",
    "PerCall",
    "fit_image",
    "read_model_index",
    "register_family",
    "resolve_device",
    "to_uint8",
]

log = logging.getLogger("videoserve.models")


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class PerCall:
    """One generation's own choices and findings, handed down the family hooks
    (`_run_segments`, `_run`, `_pipeline_for`): a backend serves calls from several threads,
    so nothing of one call is kept on the backend."""

    audio: bool = True  # whether the request wants sound (`audio: false` skips its decode)
    passes: int | None = None  # the passes run, where a family plans its own (else the plan's)


class DiffusersBackend(DiffusersFamily):
    """A diffusers video pipeline from a folder or the hub cache: T2V, and I2V where it can.

    Loads, places and calls; what the family says from its configs is `DiffusersFamily`'s."""

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
        # Latents -> RGB for previews, fitted from the loaded VAE on first use; None: not yet.
        self._projection: previews.LatentProjection | None = None

    @property
    def loaded(self) -> bool:
        return self._t2v is not None or self._i2v is not None

    def loaded_pipelines(self) -> tuple[Any, ...]:
        """The loaded pipelines (sharing modules): what a worker group's rank splits."""
        return tuple(pipe for pipe in (self._t2v, self._i2v) if pipe is not None)

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
                self._projection = None
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
        this_call = PerCall(audio=bool(getattr(params, "audio", True)))
        with_audio = self.makes_audio and this_call.audio
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
                    call, shape, seed, inputs, on_progress, should_stop, this_call
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
            segments=shape.segments if this_call.passes is None else this_call.passes,
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
        this_call: PerCall,
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
            output = self._run(
                {**call, **size}, shape, seed + k, inputs, progress, should_stop, this_call
            )
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
        this_call: PerCall,
    ) -> Any:
        """One pipeline call under the lock, with progress and cancellation between steps."""
        image = inputs.image
        pipe = self._pipeline_for(inputs, this_call)
        if pipe is None:
            needs = "does not accept" if image is not None else "needs"
            raise errors.InvalidRequest(
                f"input_reference: model '{self.name}' {needs} an input image",
                param="input_reference",
            )
        if should_stop():
            raise Cancelled(f"{self.name}: cancelled before the first step")
        fitted = dataclasses.replace(
            inputs,
            image=None if image is None else fit_image(image, shape.gen_width, shape.gen_height),
            reference_images=tuple(
                fit_image(picture, shape.gen_width, shape.gen_height)
                for picture in inputs.reference_images
            ),
        )
        return self._step_loop(
            pipe,
            call,
            seed,
            on_progress,
            should_stop,
            preview=inputs.preview,
            family_kwargs=lambda: self._call_kwargs(pipe, shape, call["num_frames"], fitted),
        )

    def _step_loop(
        self,
        pipe: Any,
        call: dict[str, Any],
        seed: int,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
        *,
        preview: Any = None,
        family_kwargs: Callable[[], dict[str, Any]] | None = None,
        batched_prompts: bool = True,
    ) -> Any:
        """The one step loop of every pipeline call (text-, image- and video-to-video): the
        call's output, with progress after each step, cancellation between steps (skipping
        the rest and the VAE decode) and previews to `preview`, a sink, where it has one.

        `family_kwargs` (the family's own arguments) is read inside inference mode, as are
        the prompts, which go through the family's `_pipeline_call` where `batched_prompts`."""
        import torch

        previewer = previews.StepPreviews(
            preview, lambda pipeline, latents: self.preview_frames(pipeline, latents, call)
        )

        def on_step_end(
            pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            on_progress(step + 1, pipeline.num_timesteps)
            # Raising here skips the remaining steps and the VAE decode.
            if should_stop():
                raise Cancelled(f"{self.name}: cancelled after step {step + 1}")
            previewer.after_step(pipeline, step + 1, tensors.get("latents"))
            return {}

        prompts = (
            self._pipeline_call(pipe, call) if batched_prompts else contextlib.nullcontext(call)
        )
        self._hook_offload(pipe)
        try:
            with torch.inference_mode(), prompts as arguments:
                return pipe(
                    **arguments,
                    generator=torch.Generator(self._device).manual_seed(seed),
                    output_type="np",
                    callback_on_step_end=on_step_end,
                    **(family_kwargs() if family_kwargs is not None else {}),
                )
        except Cancelled:
            # A stopped call skips the pipeline's own cleanup: reset step caches and offload
            # hooks, or the next video would start from this one's cached residuals.
            pipe.maybe_free_model_hooks()
            raise

    # --- previews ------------------------------------------------------------------------
    def preview_decoder(self, pipe: Any) -> previews.Decoder | None:
        """How this family's VAE decodes the denoiser's latents, for fitting the preview
        projection; None: the family shows no previews (its latents are not (C, T, H, W))."""
        return None

    def preview_latents(self, pipe: Any, latents: Any, call: Mapping[str, Any]) -> Any:
        """The denoiser's latents of this `call` as (1, C, T, H, W), or None where they are
        in a layout the family does not know (packed layouts unpack here: LTX)."""
        return latents if getattr(latents, "ndim", 0) == 5 else None

    def preview_frames(self, pipe: Any, latents: Any, call: Mapping[str, Any] | None = None) -> Any:
        """The latents as float RGB frames (T, H, W, 3), or None."""
        latents = self.preview_latents(pipe, latents, call or {})
        if latents is None:
            return None
        if self._projection is None:
            self._projection = previews.load(self.path)
        if self._projection is None:
            decoder = self.preview_decoder(pipe)
            if decoder is None:
                return None
            self._projection = previews.fit_projection(
                decoder.decode,
                decoder.channels,
                spatial=decoder.spatial,
                temporal=decoder.temporal,
            )
        return self._projection.rgb(latents[0].float().cpu().numpy())

    # --- edits: video-to-video over the same weights ------------------------------------
    def run_video_to_video(
        self,
        call: dict[str, Any],
        seed: int,
        video: list[Image.Image],
        strength: float,
        on_progress: ProgressCallback,
        should_stop: StopCheck,
        preview: Any = None,
    ) -> np.ndarray:
        """One video-to-video call over the loaded modules: float frames in [0, 1], through
        the same step loop as `_run` (the prompts as given: no batched CFG here, as before),
        previews to `preview` as a generation's."""
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
                output = self._step_loop(
                    pipe,
                    {**call, "video": video, "strength": strength},
                    seed,
                    on_progress,
                    should_stop,
                    preview=preview,
                    batched_prompts=False,
                )
        return np.asarray(output.frames[0])

    def _pipeline_for(self, inputs: GenerationInputs, this_call: PerCall) -> Any:
        """The loaded pipeline one pass runs on (None where there is none for these inputs):
        image-to-video for an input image, else text-to-video. A family may choose others
        (LTX-2's frame conditioning for a source's last frames)."""
        return self._i2v if inputs.image is not None else self._t2v

    def _chains_now(self) -> bool:
        """Whether this generation may chain passes: where there is an image pipeline (the
        passes' sound, if any, is joined at the seams)."""
        return self._i2v is not None


def _warm_shape(width: int, height: int, frames: int, fps: int) -> grids.GenerationPlan:
    return grids.GenerationPlan(width, height, width, height, frames, frames, fps)
