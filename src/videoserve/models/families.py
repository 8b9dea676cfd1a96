"""Which family serves a diffusers model: read from its `model_index.json`, checked at startup.

A model entry names only its weights (`path`: a folder or a Hugging Face repo id); the
pipeline class in the weights' `model_index.json` decides the backend module (`wan`, `ltx`).
A class no family serves is refused when the registry is built, naming the classes we serve,
so a wrong download fails at startup rather than on the first request. Weights that are not
here yet cannot be read: such a model is built for the family its `family` option names (Wan
otherwise) and listed as unavailable until they are.
"""

from __future__ import annotations

from pathlib import Path

from videoserve.models import grid as grids
from videoserve.models import speed
from videoserve.models.backends import ltx2
from videoserve.models.backends.diffusion import (
    PIPELINE_FAMILIES,
    DiffusersBackend,
    read_model_index,
)
from videoserve.models.backends.hunyuan15 import HunyuanVideo15Backend
from videoserve.models.backends.ltx import LTXBackend
from videoserve.models.backends.ltx2 import LTX2Backend
from videoserve.models.backends.wan import WanBackend
from videoserve.models.options import DiffusersOptions, RuntimeOptions
from videoserve.models.weights import Weights

BACKENDS: dict[str, type[DiffusersBackend]] = {
    "wan": WanBackend,
    "ltx": LTXBackend,
    "ltx2": LTX2Backend,
    "hunyuan15": HunyuanVideo15Backend,
}

# `PIPELINE_FAMILIES` (`_class_name` in model_index.json -> family) is filled by each family
# module above as it is imported (`diffusion.register_family`).
assert set(PIPELINE_FAMILIES.values()) == set(BACKENDS), "every family registers its classes"

# The `family` option names a grid; each grid belongs to one family ("tiny" fits any).
GRID_FAMILIES: dict[str, str | None] = {
    "tiny": None,
    "wan2.1": "wan",
    "wan2.1-720p": "wan",
    "wan2.2-a14b": "wan",
    "wan2.2-ti2v": "wan",
    "ltx-video": "ltx",
    "ltx-2": "ltx2",
    "hunyuan-1.5-480p": "hunyuan15",
    "hunyuan-1.5-720p": "hunyuan15",
}
assert set(GRID_FAMILIES) == set(grids.FAMILY_GRIDS), "every grid needs its family"


def family_of(class_name: object) -> str:
    """The family of a pipeline class; ValueError naming the supported classes otherwise."""
    family = PIPELINE_FAMILIES.get(str(class_name))
    if family is None:
        raise ValueError(
            f"pipeline {class_name!r} is not supported (supported: {', '.join(PIPELINE_FAMILIES)})"
        )
    return family


def pipeline_class(weights: Weights) -> str | None:
    """The `_class_name` of weights that are here (folder or cache), else None. No network."""
    index = read_model_index(weights.folder())
    return None if index is None else str(index.get("_class_name"))


def lora_refusal(weights: Weights) -> str | None:
    """Why LoRA adapters cannot go over these weights (their pipeline has no LoRA loader);
    None when they can, or when the weights are not here to tell."""
    class_name = pipeline_class(weights)
    family = PIPELINE_FAMILIES.get(class_name or "")
    if family is None or BACKENDS[family].takes_loras:
        return None
    return f"{class_name} has no LoRA loader in diffusers"


def missing_components(folder: Path, required: tuple[str, ...]) -> list[str]:
    """The components of `required` that `model_index.json` does not name or has no folder for."""
    index = read_model_index(folder) or {}
    missing = []
    for name in required:
        entry = index.get(name)
        named = isinstance(entry, list) and len(entry) == 2 and entry[1] is not None
        if not named or not (folder / name).is_dir():
            missing.append(name)
    return missing


def check_entry(name: str, path: str, options: DiffusersOptions, device: str) -> None:
    """Refuse at startup a diffusers entry that cannot work here: ValueError saying why.

    The options themselves were parsed before (`options.py`); this checks them against the
    weights (family) and this host (the speed options, `speed.py`).
    """
    prefix = f"model '{name}'"
    class_name = pipeline_class(Weights(path))
    family = None
    if class_name is not None:
        if class_name not in PIPELINE_FAMILIES:
            raise ValueError(
                f"{prefix}: {path} holds a {class_name!r} pipeline, which videoserve does not "
                f"serve (supported: {', '.join(PIPELINE_FAMILIES)})"
            )
        family = PIPELINE_FAMILIES[class_name]
        folder = Weights(path).folder()
        assert folder is not None  # its model_index.json was read
        backend = BACKENDS[family]
        # A family whose classes need different parts says so per class (HunyuanVideo 1.5).
        required = getattr(backend, "class_components", {}).get(class_name)
        missing = missing_components(folder, required or backend.required_components)
        if missing:
            raise ValueError(
                f"{prefix}: {path} holds a {class_name!r} pipeline without its "
                f"{', '.join(missing)} component{'s' if len(missing) > 1 else ''} "
                f"(model_index.json must name each, with its subfolder)"
            )
    grid = options.family
    if grid is not None and family is not None and GRID_FAMILIES.get(grid) not in (None, family):
        raise ValueError(
            f"{prefix}: family '{grid}' is a {GRID_FAMILIES[grid]} grid, but {path} holds a "
            f"{family} pipeline ({class_name})"
        )
    upsampler = options.upsampler
    if upsampler is not None:
        if family is not None and family != "ltx2":
            raise ValueError(
                f"{prefix}: upsampler is an LTX-2 option, but {path} holds a {family} pipeline "
                f"({class_name})"
            )
        try:
            ltx2.upsampler_folder(Path(upsampler))
        except ValueError as exc:
            raise ValueError(f"{prefix}: {exc}") from None
    try:
        speed.check_host(RuntimeOptions.from_entry(options), options.device or device)
    except ValueError as exc:
        raise ValueError(f"{prefix}: {exc}") from None


def create_backend(
    name: str, path: str, options: DiffusersOptions, device: str
) -> DiffusersBackend:
    """The backend of the entry's family, configured from its options (checked before)."""
    class_name = pipeline_class(Weights(path))
    grid = options.family
    if class_name is not None:
        family = family_of(class_name)
    else:
        family = GRID_FAMILIES.get(grid or "") or "wan"
    overrides = {
        key: value
        for key, value in (("fps", options.fps), ("max_frames", options.max_frames))
        if value is not None
    }
    # Family-specific options: only LTX-2 has one (checked in `check_entry`).
    extra = {"upsampler": options.upsampler} if options.upsampler else {}
    return BACKENDS[family](
        name,
        path,
        grids.FAMILY_GRIDS[grid] if grid else None,
        device=options.device or device,
        dtype=options.dtype,
        default_steps=options.steps,
        default_guidance=options.guidance,
        default_negative_prompt=options.negative_prompt,
        grid_overrides=overrides,
        runtime=RuntimeOptions.from_entry(options),
        **extra,
    )
