"""The options of a model entry, one pydantic model per backend kind, parsed once at startup.

A models-file table becomes `TinyOptions` or `DiffusersOptions` here and nowhere else: the
registry, the family lookup and the backends read the typed record, never the raw table. A
wrong name, type or value is a `ValueError` naming the entry and the option, so a typo fails
when the server starts, not on the first request. Adding an option is one field (with its
`description`, which the error message quotes) on the model of its backend kind.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from videoserve.models.grid import FAMILY_GRIDS

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
CACHES = ("first_block",)
COMPILE_MODES = ("regional",)
# torchao configs by the name an entry gives (`quantize`); see `models/speed.py`.
QUANTIZE_MODES = ("fp8", "fp8_weight_only", "int8", "int8_weight_only")
DEFAULT_PRICE_PER_SECOND = 1.0


class ParallelOptions(BaseModel):
    """`parallel = { ulysses = N, ring = M, cfg = true }`: one video over a worker group's ranks
    (`models/backends/parallel.py`); the product (times 2 with `cfg`) is the ranks it needs."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ulysses: int = Field(1, ge=1, description="an integer >= 1 (Ulysses degree)")
    ring: int = Field(1, ge=1, description="an integer >= 1 (ring attention degree)")
    cfg: bool = Field(False, description="true or false (the two CFG branches on two ranks)")

    @property
    def ranks(self) -> int:
        """How many ranks (devices) one video of this entry runs on."""
        return self.ulysses * self.ring * (2 if self.cfg else 1)

    def describe(self) -> dict[str, int | bool]:
        """What `metrics.parallel` says: the ranks and each split that is on."""
        split: dict[str, int | bool] = {"ranks": self.ranks}
        if self.ulysses > 1:
            split["ulysses"] = self.ulysses
        if self.ring > 1:
            split["ring"] = self.ring
        if self.cfg:
            split["cfg"] = 2
        return split


class _Options(BaseModel):
    # strict: TOML already has types, so "24" for an integer is the operator's mistake;
    # frozen: one parsed record shared by the registry and the backends.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    price_per_second: float = Field(
        DEFAULT_PRICE_PER_SECOND, ge=0, description="a number >= 0 (credits per second of video)"
    )
    # Compute limits (docs/models.md): every backend kind takes them.
    price_per_step_second: float = Field(
        0.0, ge=0, description="a number >= 0 (credits per denoising step per second of video)"
    )
    max_steps: int | None = Field(
        None, ge=1, description="an integer >= 1 (the most denoising steps a request may ask)"
    )
    max_job_seconds: float | None = Field(
        None, gt=0, description="a number > 0 (seconds one job may run)"
    )
    # Previews while a job denoises (`models/previews.py`): every N steps; unset, one about
    # every 2 seconds of denoising; 0, none.
    preview_every: int | None = Field(
        None, ge=0, description="an integer >= 0 (denoising steps between previews; 0: none)"
    )
    # One video over a worker group (VIDEOSERVE_WORKER_DEVICES); checked against the group
    # and the family when the worker starts (`models/backends/parallel.py`).
    parallel: ParallelOptions | None = Field(
        None, description="a table { ulysses = N, ring = M, cfg = true }"
    )


class TinyOptions(_Options):
    """`backend = "tiny"`: a built-in random-weight pipeline (`tiny-t2v`, `tiny-t2av`), or
    another one like it."""

    device: str = Field("cpu", description="a device such as cpu or cuda")
    seed: int = Field(0, description="an integer")
    layout: Literal["wan", "ltx2"] = Field(
        "wan", description='"wan" (video, like tiny-t2v) or "ltx2" (video with sound)'
    )


class LoraAdapter(BaseModel):
    """One LoRA of an adapter entry: where its weights are and how strongly it applies."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    path: str = Field(
        description="a .safetensors file, a folder holding one, or a Hugging Face repo id"
    )
    scale: float = Field(1.0, description="a number (0 gives the base's output)")


class DiffusersOptions(_Options):
    """`backend = "diffusers"`: a Wan, LTX-Video or LTX-2 pipeline, or LoRAs over another entry."""

    family: str | None = Field(None, description="the name of a grid (docs/models.md)")
    device: str | None = Field(None, description="auto, cpu, cuda or cuda:N")
    steps: int | None = Field(None, ge=1, description="an integer >= 1")
    guidance: float | None = Field(None, description="a number")
    negative_prompt: str | None = Field(None, description="a string")
    fps: int | None = Field(None, ge=1, description="an integer >= 1")
    max_frames: int | None = Field(None, ge=1, description="an integer >= 1")
    dtype: Literal["bf16", "fp16", "fp32"] | None = Field(
        None, description=f"one of {', '.join(DTYPES)}"
    )
    cpu_offload: bool = Field(False, description="true or false")
    group_offload: bool = Field(False, description="true or false")
    vae_tiling: bool = Field(False, description="true or false")
    cache: str | None = Field(None, description=f"one of {', '.join(CACHES)}")
    cache_threshold: float = Field(0.05, gt=0, lt=1, description="between 0 and 1, exclusive")
    batch_cfg: bool | None = Field(None, description="true or false")
    # Speed options (`models/speed.py`): off unless set, checked against this host at startup.
    attention_backend: str | None = Field(
        None, description="a diffusers attention backend such as native, flash, _flash_3, sage"
    )
    compile: Literal["regional"] | None = Field(None, description='"regional"')
    quantize: Literal["fp8", "fp8_weight_only", "int8", "int8_weight_only"] | None = Field(
        None, description=f"one of {', '.join(QUANTIZE_MODES)}"
    )
    # LTX-2 only (`families.check_entry` checks the family and the folder's config).
    upsampler: str | None = Field(
        None, description="the folder of an LTX-2 latent upsampler (LTX-2 only)"
    )
    # Adapter entries: `base` (another entry) in place of `path`, plus their LoRAs.
    base: str | None = Field(None, description="the name of another configured entry")
    # strict=False: TOML gives a list, the record keeps a tuple; each table is still strict.
    loras: tuple[LoraAdapter, ...] = Field(
        (), strict=False, description="a list of { path, scale } tables"
    )

    @pydantic.model_validator(mode="after")
    def _coherent(self) -> DiffusersOptions:
        if self.family is not None and self.family not in FAMILY_GRIDS:
            raise ValueError(f"unknown family '{self.family}' (known: {', '.join(FAMILY_GRIDS)})")
        if self.cpu_offload and self.group_offload:
            raise ValueError("cpu_offload and group_offload are alternatives: set one of them")
        if self.cache == "mag":
            # MagCache skips steps by a per-checkpoint table of magnitude ratios; diffusers 0.42
            # ships that table only for Flux, so a video model would need a calibration run first.
            raise ValueError(
                'cache "mag" (MagCache) needs magnitude ratios calibrated for the checkpoint, '
                'which diffusers ships only for Flux; use cache = "first_block"'
            )
        if self.cache is not None and self.cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)} (got {self.cache!r})")
        if self.base is None and self.loras:
            raise ValueError('loras need base = "<entry>", the model they adapt')
        if self.base is not None and not self.loras:
            raise ValueError("base needs loras = [{ path = ..., scale = 1.0 }]")
        if any(not math.isfinite(lora.scale) for lora in self.loras):
            raise ValueError("every LoRA scale must be a finite number")
        return self


class ForeignOptions(_Options):
    """A backend kind the registry's caller brings (`factories=`): its factory reads the rest."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


EntryOptions = TinyOptions | DiffusersOptions | ForeignOptions
OPTION_MODELS: dict[str, type[EntryOptions]] = {"tiny": TinyOptions, "diffusers": DiffusersOptions}

# What an adapter entry may set beside base and loras; the base owns everything else.
ADAPTER_OWN = frozenset(
    {
        "base",
        "loras",
        "steps",
        "guidance",
        "negative_prompt",
        "price_per_second",
        "price_per_step_second",
        "max_steps",
        "max_job_seconds",
        "preview_every",
    }
)


def parse_options(name: str, backend: str, table: Mapping[str, Any]) -> EntryOptions:
    """The typed options of entry `name`; ValueError naming the entry and every bad option."""
    model = OPTION_MODELS.get(backend, ForeignOptions)
    try:
        options = model.model_validate(dict(table))
    except pydantic.ValidationError as exc:
        raise ValueError(f"model '{name}': {_explain(model, exc)}") from None
    if isinstance(options, DiffusersOptions) and options.base is not None:
        foreign = sorted(set(table) - ADAPTER_OWN)
        if foreign:
            raise ValueError(
                f"model '{name}': {', '.join(foreign)} belong(s) to the base entry "
                f"'{options.base}'; an adapter entry sets only {', '.join(sorted(ADAPTER_OWN))}"
            )
    return options


def _explain(model: type[BaseModel], exc: pydantic.ValidationError) -> str:
    """pydantic's errors as an operator reads them: the option, what it must be, what it got."""
    unknown = [
        str(e["loc"][0])
        for e in exc.errors()
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
    ]
    if unknown:
        allowed = ", ".join(["path", *model.model_fields])
        return f"unknown option(s) {', '.join(unknown)} (allowed: {allowed})"
    first = exc.errors()[0]
    if not first["loc"]:  # a model_validator: its message is the explanation
        return str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
    option = str(first["loc"][0])
    field = model.model_fields.get(option)
    if option == "loras" and len(first["loc"]) > 2:
        sub = str(first["loc"][2])
        described = LoraAdapter.model_fields.get(sub)
        expected = described.description if described else first["msg"]
        where = f"loras[{first['loc'][1]}].{sub}"
        if first["type"] == "extra_forbidden":
            return f"{where}: unknown key (a LoRA has path and scale)"
        return f"{where} must be {expected} (got {first.get('input')!r})"
    if option == "parallel" and len(first["loc"]) > 1:
        sub = str(first["loc"][1])
        if first["type"] == "extra_forbidden":
            return f"parallel.{sub}: unknown key (parallel has ulysses, ring and cfg)"
        described = ParallelOptions.model_fields.get(sub)
        expected = described.description if described else first["msg"]
        return f"parallel.{sub} must be {expected} (got {first.get('input')!r})"
    expected = field.description if field is not None and field.description else first["msg"]
    return f"{option} must be {expected} (got {first.get('input')!r})"


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs on this host: the runtime part of its entry (`DiffusersOptions`)."""

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
