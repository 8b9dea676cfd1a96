"""Which public model names exist, what serves each, and with which parameter schema.

Operators describe models in one TOML file (`VIDEOSERVE_MODELS`):

    [models."wan-2.1-t2v-1.3b"]
    backend = "diffusers"                       # or "tiny"
    path = "/srv/models/Wan2.1-T2V-1.3B-Diffusers"  # relative paths: from the TOML's folder;
                                                # or a Hugging Face repo id (owner/name)
    family = "wan2.1"                           # optional; detected from the folder if absent
    # optional: device, steps, guidance, negative_prompt, fps, max_frames, dtype,
    # cpu_offload, group_offload, vae_tiling, cache, cache_threshold, batch_cfg,
    # attention_backend, compile, quantize (docs/models.md; parsed by `options.py`)
    price_per_second = 2.5                      # credits per second of video (default 1)
    # optional compute limits (docs/models.md): max_steps, price_per_step_second,
    # max_job_seconds

    [models."wan-fast"]                         # LoRA adapters over the entry above: one
    backend = "diffusers"                       # pipeline in memory for both
    base = "wan-2.1-t2v-1.3b"
    loras = [{ path = "/srv/loras/4step", scale = 1.0 }]
    steps = 4

    [aliases]
    sora-2-pro = "wan-2.1-t2v-1.3b"

`VIDEOSERVE_ALIASES` is applied after the file's `[aliases]`, so the environment wins. The
built-in `tiny-t2v` always exists; so does `tiny-t2av` (a tiny LTX-2: video with sound) unless
the file gives that name to a model of its own. `sora-2-pro`, unless aliased or configured, is
served by the first available `diffusers` entry with its own weights that makes sound (LTX-2),
else the first available one with its own weights, in file order (list the family you prefer
first; adapter entries are skipped), else by `tiny-t2v` with a warning. Whatever serves it,
`sora-2-pro` accepts exactly the seed's four parameters; every other name takes its backend's
schema. A request costs the `price_per_second` of the model that serves it (an alias has no
price of its own) times its duration, plus `price_per_step_second` (default 0) times its
denoising steps times its duration.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videoserve import errors
from videoserve.models import families, lora_files
from videoserve.models import options as options_
from videoserve.models.backends import parallel
from videoserve.models.backends.adapters import AdapterBackend
from videoserve.models.backends.base import Capabilities, SplitsSequences, VideoBackend
from videoserve.models.backends.diffusion import DiffusersBackend
from videoserve.models.backends.tiny import (
    TINY_AUDIO_NAME,
    TINY_NAME,
    TinyBackend,
    TinySoundBackend,
)
from videoserve.models.params import DURATIONS, SIZES, VideoParams, schema_json
from videoserve.models.pool import DEFAULT_MAX_LOADED, ModelPool
from videoserve.models.weights import Weights, is_repo_id
from videoserve.settings import Settings

log = logging.getLogger("videoserve.models")

SORA = "sora-2-pro"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # `\Z`: no final newline
DEFAULT_PRICE_PER_SECOND = options_.DEFAULT_PRICE_PER_SECOND


@dataclass(frozen=True)
class ModelEntry:
    """One configured model: its public name, its backend kind and where its weights are."""

    name: str
    backend: str  # "tiny" or "diffusers"
    path: str | None  # None for an adapter entry (`base` in its options)
    options: Mapping[str, Any] = field(default_factory=dict)  # the rest of the TOML table


@dataclass(frozen=True)
class BackendSpec:
    """What a backend factory builds one entry from: the entry, its parsed options, its base."""

    entry: ModelEntry
    options: options_.EntryOptions
    device: str  # the registry's default device (`VIDEOSERVE_DEVICE`)
    base: VideoBackend | None = None  # adapter entries: the backend of their `base` entry


BackendFactory = Callable[[BackendSpec], VideoBackend]


@dataclass(frozen=True)
class ComputeLimits:
    """What a model's compute may cost and how far it may run (see docs/models.md)."""

    max_steps: int | None  # a request asking more denoising steps is a 400
    default_steps: int | None  # the steps a request that names none runs
    price_per_step_second: float  # credits per step per second of video, beside the flat price
    max_job_seconds: float | None  # overrides VIDEOSERVE_MAX_JOB_SECONDS for this model

    def steps(self, requested: int | None) -> int:
        return requested or self.default_steps or 0


@dataclass(frozen=True)
class ResolvedModel:
    """A public name bound to the model that serves it and the schema its requests follow."""

    public_name: str
    served_by: str
    backend: VideoBackend
    schema: type[VideoParams]


class ModelRegistry:
    """Public names -> configured models -> backends, built once per process and kept warm."""

    def __init__(
        self,
        entries: Iterable[ModelEntry],
        aliases: Mapping[str, str] | None = None,
        *,
        device: str = "auto",
        max_loaded_models: int = DEFAULT_MAX_LOADED,
        factories: Mapping[str, BackendFactory] | None = None,
    ) -> None:
        """Check the configuration and settle what serves `sora-2-pro`; ValueError if invalid.

        `device` is the default for `diffusers` models; `tiny` models run on the CPU unless
        their entry says otherwise. At most `max_loaded_models` bases stay loaded at once:
        loading another unloads the least recently used (`ModelPool`); adapter entries share
        their base's pipeline and count as it. `factories` builds the backend of each kind
        (`DEFAULT_FACTORIES` for the kinds it leaves out).
        """
        self._factories = {**DEFAULT_FACTORIES, **(factories or {})}
        self._entries: dict[str, ModelEntry] = {}
        self._options: dict[str, options_.EntryOptions] = {}
        for entry in entries:
            self._options[entry.name] = _check_entry(entry, self._factories, device)
            if entry.name in self._entries and entry.name != TINY_NAME:
                raise ValueError(f"model '{entry.name}' is configured twice")
            self._entries[entry.name] = entry
        if TINY_NAME not in self._entries:
            raise ValueError(f"the built-in model '{TINY_NAME}' is missing")
        self._check_bases()
        self._device = device
        self._backends: dict[str, VideoBackend] = {}
        self._pool = ModelPool(max_loaded_models)
        self._lock = threading.RLock()  # an adapter entry creates its base's backend inside it
        self._created = int(time.time())

        self._aliases: dict[str, str] = {}
        for alias, target in (aliases or {}).items():
            if alias in self._entries:
                raise ValueError(f"alias '{alias}' has the name of a configured model")
            if target not in self._entries:
                known = ", ".join(self._entries)
                raise ValueError(
                    f"alias '{alias}' points to unknown model '{target}' (models: {known})"
                )
            self._aliases[alias] = target

        self.warnings: list[str] = []
        self._sora_fallback = False
        if SORA not in self._entries and SORA not in self._aliases:
            self._aliases[SORA] = self._best_for_sora()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The built-in `tiny-t2v` and `tiny-t2av`, then `settings.models` (TOML), then the
        aliases."""
        builtin = ModelEntry(TINY_NAME, "tiny", str(settings.tiny_model_dir()), {})
        sound = ModelEntry(
            TINY_AUDIO_NAME,
            "tiny",
            str(settings.tiny_model_dir().parent / TINY_AUDIO_NAME),
            {"layout": "ltx2"},
        )
        entries: dict[str, ModelEntry] = {TINY_NAME: builtin, TINY_AUDIO_NAME: sound}
        aliases: dict[str, str] = {}
        if settings.models is not None:
            file_entries, aliases = load_models_file(settings.models)
            for entry in file_entries:
                if entry.name == TINY_NAME:
                    if entry.backend != "tiny":
                        raise ValueError(
                            f"model '{TINY_NAME}' is built in; give your model another name"
                        )
                    entry = ModelEntry(TINY_NAME, "tiny", entry.path or builtin.path, entry.options)
                elif entry.backend == "tiny" and not entry.path:
                    folder = str(settings.tiny_model_dir().parent / entry.name)
                    entry = ModelEntry(entry.name, "tiny", folder, entry.options)
                entries[entry.name] = entry
        aliases.update(settings.aliases)
        return cls(
            entries.values(),
            aliases,
            device=settings.device,
            max_loaded_models=settings.max_loaded_models,
        )

    # --- lookups -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every public name: configured models in order, then aliases (`sora-2-pro` among them)."""
        return [*self._entries, *(a for a in self._aliases if a not in self._entries)]

    def served_by(self, name: str) -> str:
        """The configured model a public name runs on; NotFound for an unknown name."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise errors.NotFound(f"model '{name}' not found")

    def names_served_by(self, name: str) -> list[str]:
        """The public names whose jobs run on the model `name` runs on, that model's own first.

        A worker configured for `tiny-t2v` (or for an alias of it) claims jobs submitted under
        any of these names, e.g. `sora-2-pro` when it falls back to `tiny-t2v`.
        """
        target = self.served_by(name)
        return [target, *(a for a, t in self._aliases.items() if t == target)]

    def served_models(self, names: Iterable[str] | None = None) -> list[str]:
        """The configured models a worker runs jobs for (jobs record these as `served_by`).

        `names` (public names, aliases allowed) None or empty: every available model. An
        unknown name is a ValueError, so a mistyped `VIDEOSERVE_WORKER_MODELS` fails at startup.
        """
        if not names:
            return [n for n in self._entries if self.backend(n).availability().available]
        served = []
        for name in names:
            if name not in self._entries and name not in self._aliases:
                raise ValueError(
                    f"worker model '{name}' is not configured ({', '.join(self.names())})"
                )
            target = self.served_by(name)
            if target not in served:
                served.append(target)
        return served

    def backend(self, name: str) -> VideoBackend:
        """The one backend instance of the model `name` runs on, created on first use."""
        target = self.served_by(name)
        with self._lock:
            backend = self._backends.get(target)
            if backend is None:
                entry, options = self._entries[target], self._options[target]
                base_name = getattr(options, "base", None)
                base = self.backend(base_name) if base_name else None
                spec = BackendSpec(entry, options, self._device, base)
                backend = self._backends[target] = self._factories[entry.backend](spec)
                if base is None:  # the pool counts loaded pipelines: bases, not adapters
                    self._pool.track(backend)
            return backend

    def is_loaded(self, name: str) -> bool:
        """Whether the model `name` runs on has its weights in memory now: False before its
        first load and after the pool unloaded it to make room. A backend that does not say
        (no `loaded`) counts as loaded once it exists: nothing unloads it."""
        with self._lock:
            backend = self._backends.get(self.served_by(name))
        return backend is not None and bool(getattr(backend, "loaded", True))

    def resolve(self, name: str) -> ResolvedModel:
        """Bind a public name to its backend and schema; NotFound or ModelUnavailable."""
        target = self.served_by(name)
        backend = self.backend(target)
        state = backend.availability()
        if not state.available:
            raise errors.ModelUnavailable(f"model '{name}' is unavailable: {state.reason}")
        return ResolvedModel(name, target, backend, self.schema(name))

    def price_per_second(self, name: str) -> float:
        """Credits per second of video for `name`: the price of the model that serves it."""
        return self._options[self.served_by(name)].price_per_second

    def compute_limits(self, name: str) -> ComputeLimits:
        """The step bound, step price and time limit of the model that serves `name`."""
        options = self._options[self.served_by(name)]
        default_steps = getattr(options, "steps", None) or getattr(
            self.backend(name), "default_steps", None
        )
        return ComputeLimits(
            max_steps=options.max_steps,
            default_steps=default_steps,
            price_per_step_second=options.price_per_step_second,
            max_job_seconds=options.max_job_seconds,
        )

    def preview_every(self, name: str) -> int | None:
        """Steps between previews of the model that serves `name` (None: by time; 0: none)."""
        return self._options[self.served_by(name)].preview_every

    def parallel(self, name: str) -> options_.ParallelOptions | None:
        """How the model that serves `name` splits over a worker group; None: one device."""
        return self._options[self.served_by(name)].parallel

    def check_split(self, resolved: ResolvedModel, params: VideoParams) -> None:
        """`InvalidRequest` (400, at submit) when the entry splits each step over a worker
        group's ranks and this request's token sequence does not divide over them."""
        plan = self.parallel(resolved.served_by)
        if plan is None or not isinstance(resolved.backend, SplitsSequences):
            return
        lengths = resolved.backend.sequence_lengths(params)
        refusal = parallel.sequence_refusal(
            resolved.public_name, plan, params.size, params.duration, lengths or ()
        )
        if refusal is not None:
            raise errors.InvalidRequest(refusal, param="size")

    def parallel_entries(self) -> dict[str, options_.ParallelOptions]:
        """Every configured entry with a `parallel` table, by name."""
        return {
            name: options.parallel
            for name, options in self._options.items()
            if options.parallel is not None
        }

    def schema(self, name: str) -> type[VideoParams]:
        """`VideoParams` for `sora-2-pro` whatever serves it, else the backend's own schema."""
        return VideoParams if name == SORA else self.backend(name).schema

    def describe(self) -> list[dict[str, Any]]:
        """Every public name as `GET /v1/models` lists it, unavailable ones with the reason."""
        listed = []
        for name in self.names():
            target = self.served_by(name)
            state = self.backend(target).availability()
            listed.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "videoserve",
                    "backend": self._entries[target].backend,
                    "alias_of": None if name == target else target,
                    "served_by": target,
                    "base": getattr(self._options[target], "base", None),
                    "adapters": [
                        {"path": lora.path, "scale": lora.scale}
                        for lora in getattr(self._options[target], "loras", ())
                    ],
                    "available": state.available,
                    "reason": state.reason,
                    "warning": self.warnings[0] if name == SORA and self._sora_fallback else None,
                    **self._abilities(target),
                    "parameters": schema_json(self.schema(name)),
                    **self._pricing(name),
                }
            )
        return listed

    # --- internals -----------------------------------------------------------------------
    def _abilities(self, target: str) -> dict[str, Any]:
        """What the model serving a name can do, as the catalog lists it (configs only)."""
        backend = self.backend(target)
        able = getattr(backend, "capabilities", None) or Capabilities()
        durations = getattr(backend, "durations", None)
        return {
            **dataclasses.asdict(able),
            "durations": list(durations() if durations is not None else DURATIONS),
            "sizes": list(SIZES),
        }

    def _pricing(self, name: str) -> dict[str, Any]:
        limits = self.compute_limits(name)
        return {
            "price_per_second": self.price_per_second(name),
            "price_per_step_second": limits.price_per_step_second,
            "default_steps": limits.default_steps,
            "max_steps": limits.max_steps,
            "max_job_seconds": limits.max_job_seconds,
        }

    def _best_for_sora(self) -> str:
        """The first available diffusers model with its own weights that makes sound, else the
        first available one, in file order; else tiny-t2v with a warning. Sora 2 Pro makes
        sound: so should its stand-in when one here can."""
        missing = []
        available = []
        for entry in self._entries.values():
            # An adapter entry is a variant of its base (a few-step draft, a style), never
            # the default for the seed's model; its base is a candidate itself.
            if entry.backend != "diffusers" or getattr(self._options[entry.name], "base", None):
                continue
            backend = self.backend(entry.name)
            state = backend.availability()
            if state.available:
                available.append(entry.name)
                if backend.capabilities.audio:
                    return entry.name
            else:
                missing.append(f"{entry.name}: {state.reason}")
        if available:
            return available[0]
        self._sora_fallback = True
        warning = (
            f"{SORA} is served by {TINY_NAME}, a random-weight test model: configure real weights "
            f"(a diffusers model in VIDEOSERVE_MODELS) or alias {SORA} to a model "
            f"(VIDEOSERVE_ALIASES={SORA}=NAME)"
        )
        if missing:
            warning += f"; unavailable: {'; '.join(missing)}"
        self.warnings.append(warning)
        log.warning(warning)
        return TINY_NAME

    def _check_bases(self) -> None:
        """Every adapter entry names a loaded-pipeline entry that exists; ValueError if not."""
        for name, options in self._options.items():
            base = getattr(options, "base", None)
            if base is None:
                continue
            if base not in self._entries:
                raise ValueError(
                    f"model '{name}': base '{base}' is not a configured model "
                    f"(models: {', '.join(self._entries)})"
                )
            if getattr(self._options[base], "base", None) is not None:
                raise ValueError(
                    f"model '{name}': base '{base}' is itself an adapter entry; name the model "
                    "that holds the weights"
                )
            base_path = self._entries[base].path
            folder = Weights(base_path).folder() if base_path else None
            refusal = families.lora_refusal(Weights(base_path)) if base_path else None
            if refusal and options.loras:  # type: ignore[union-attr]
                raise ValueError(
                    f"model '{name}': base '{base}' takes no LoRA adapters ({refusal})"
                )
            for lora in options.loras:  # type: ignore[union-attr]
                try:
                    located = lora_files.locate(lora.path)
                except lora_files.LoraMissing:
                    continue  # a repo not in the cache yet: listed unavailable, like weights
                except ValueError as exc:
                    raise ValueError(f"model '{name}': {exc}") from None
                try:
                    lora_files.check_fits(located, folder)
                except ValueError as exc:
                    raise ValueError(f"model '{name}': {exc} (base '{base}')") from None


def load_models_file(path: Path) -> tuple[list[ModelEntry], dict[str, str]]:
    """Read the models TOML: entries in file order and `[aliases]`; ValueError if malformed."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the models file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the models file {path} is not valid TOML: {exc}") from exc
    extra = sorted(set(document) - {"models", "aliases"})
    if extra:
        sections = ", ".join(extra)
        raise ValueError(f"{path}: unknown section(s) {sections} (expected: models, aliases)")
    entries = []
    for name, table in document.get("models", {}).items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: models.{name} must be a table")
        options = dict(table)
        backend = options.pop("backend", None)
        if not isinstance(backend, str):
            raise ValueError(f'{path}: model \'{name}\' needs backend = "diffusers" or "tiny"')
        raw_path = options.pop("path", None)
        if raw_path is not None and not isinstance(raw_path, str):
            raise ValueError(f"{path}: model '{name}': path must be a string")
        if raw_path is not None:
            raw_path = _anchor(raw_path, Path(path).parent)
        loras = options.get("loras")
        if isinstance(loras, list):
            options["loras"] = [_anchor_lora(lora, Path(path).parent) for lora in loras]
        upsampler = options.get("upsampler")
        if isinstance(upsampler, str):  # a folder, relative to the TOML's like `path`
            options["upsampler"] = _anchor_folder(upsampler, Path(path).parent)
        entries.append(ModelEntry(name, backend, raw_path, options))
    aliases = document.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(t, str) for t in aliases.values()):
        raise ValueError(f'{path}: [aliases] must map names to model names: name = "model"')
    return entries, dict(aliases)


def _anchor(source: str, folder: Path) -> str:
    """A relative path from the models file's folder; `owner/name` with no such folder: a repo."""
    path = Path(source).expanduser()
    anchored = path if path.is_absolute() else folder / path
    return source if is_repo_id(source) and not anchored.exists() else str(anchored)


def _anchor_folder(source: str, folder: Path) -> str:
    """A folder relative to the models file's folder (never a repo id), like `path`."""
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _anchor_lora(lora: object, folder: Path) -> object:
    if isinstance(lora, dict) and isinstance(lora.get("path"), str):
        return {**lora, "path": _anchor(lora["path"], folder)}
    return lora  # the options model says what is wrong with it


def _check_entry(
    entry: ModelEntry, factories: Mapping[str, BackendFactory], device: str
) -> options_.EntryOptions:
    """Parse the entry's options and refuse at startup what would fail on the first request."""
    if not _NAME.match(entry.name):
        raise ValueError(
            f"model name {entry.name!r} must be letters, digits, '.', '_' or '-' (max 128)"
        )
    if entry.backend not in factories:
        raise ValueError(
            f"model '{entry.name}': unknown backend '{entry.backend}' "
            f"(expected one of: {', '.join(sorted(factories))})"
        )
    options = options_.parse_options(entry.name, entry.backend, entry.options)
    base = getattr(options, "base", None)
    if base is not None and entry.path:
        raise ValueError(
            f"model '{entry.name}': give path (its own weights) or base (another entry's), not both"
        )
    if not entry.path and base is None:
        what = "the folder holding model_index.json" if entry.backend == "diffusers" else "a folder"
        raise ValueError(f"model '{entry.name}': backend '{entry.backend}' needs path = {what}")
    if isinstance(options, options_.DiffusersOptions) and entry.path:
        families.check_entry(entry.name, entry.path, options, device)
    return options


def tiny_backend(spec: BackendSpec) -> VideoBackend:
    """The `tiny` kind: a random-weight Wan pipeline (or LTX-2, with sound) built on first use."""
    options = spec.options
    assert isinstance(options, options_.TinyOptions)
    path = Path(str(spec.entry.path))
    if options.layout == "ltx2":
        # Typed as its base, as `families.create_backend` returns LTX-2 backends.
        sound: DiffusersBackend = TinySoundBackend(
            path, name=spec.entry.name, device=options.device, seed=options.seed
        )
        return sound
    return TinyBackend(path, name=spec.entry.name, device=options.device, seed=options.seed)


def diffusers_backend(spec: BackendSpec) -> VideoBackend:
    """The `diffusers` kind: the family read from the weights, or LoRAs over a base entry."""
    options = spec.options
    assert isinstance(options, options_.DiffusersOptions)
    if spec.base is not None:
        if not isinstance(spec.base, DiffusersBackend):
            raise ValueError(
                f"model '{spec.entry.name}': base '{options.base}' is not a diffusers pipeline"
            )
        return AdapterBackend(spec.entry.name, spec.base, options)
    return families.create_backend(spec.entry.name, str(spec.entry.path), options, spec.device)


DEFAULT_FACTORIES: Mapping[str, BackendFactory] = {
    "tiny": tiny_backend,
    "diffusers": diffusers_backend,
}
