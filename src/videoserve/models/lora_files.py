"""Where an adapter's LoRA weights are, and whether they fit the base, read without loading them.

A LoRA is a `.safetensors` file, a folder holding one (diffusers' `save_lora_weights` writes
`pytorch_lora_weights.safetensors`), or a Hugging Face repo id looked up in the local cache only,
as model weights are (`weights.py`). At startup we read the safetensors headers (a JSON table
of tensor names and shapes, a few kB) of the LoRA and of the base's transformer, so a missing
file, a file that is no LoRA, or one made for another architecture fails then, naming the file
and the reason, instead of on the first request. The header is parsed here rather than with
`safetensors.safe_open` so that this check runs on hosts without torch.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from videoserve.models.weights import is_repo_id

DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"
_LORA_KEY = re.compile(r"\.(lora_A|lora_B|lora_down|lora_up)(\.[^.]+)?\.weight\Z")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header


class LoraMissing(Exception):
    """A LoRA given as a repo id is not in the local cache (the entry is unavailable)."""


@dataclass(frozen=True)
class LoraFile:
    """A located LoRA: the file to load, and how `load_lora_weights` is told about it."""

    source: str  # as the entry wrote it (after anchoring relative paths)
    file: Path

    @property
    def folder(self) -> str:
        return str(self.file.parent)

    @property
    def weight_name(self) -> str:
        return self.file.name


def locate(source: str, *, cache_dir: str | Path | None = None) -> LoraFile:
    """The `.safetensors` file of a LoRA; ValueError if none can be, LoraMissing if uncached."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"LoRA {source}: not a .safetensors file")
        return LoraFile(source, path)
    if path.is_dir():
        return LoraFile(source, _single_safetensors(path, source))
    if is_repo_id(source):
        from huggingface_hub import constants, try_to_load_from_cache

        cache = cache_dir or constants.HF_HUB_CACHE
        found = try_to_load_from_cache(source, DIFFUSERS_LORA_NAME, cache_dir=cache)
        if isinstance(found, str):
            return LoraFile(source, Path(found))
        raise LoraMissing(
            f"LoRA {source} is not a file or folder here, nor in the Hugging Face cache at "
            f"{cache} (looked for {DIFFUSERS_LORA_NAME}); download it on a host with network "
            f"access (`hf download {source}`) or give the path of the file"
        )
    raise ValueError(f"LoRA {source}: no such file or folder")


def _single_safetensors(folder: Path, source: str) -> Path:
    if (folder / DIFFUSERS_LORA_NAME).is_file():
        return folder / DIFFUSERS_LORA_NAME
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        what = "no .safetensors file" if not found else f"{len(found)} .safetensors files"
        raise ValueError(
            f"LoRA {source}: the folder holds {what} (expected {DIFFUSERS_LORA_NAME} or one "
            "other .safetensors file)"
        )
    return found[0]


def read_header(file: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header; ValueError if the file is not one."""
    try:
        with file.open("rb") as stream:
            (size,) = struct.unpack("<Q", stream.read(8))
            if not 0 < size <= _MAX_HEADER:
                raise ValueError("bad header size")
            header = json.loads(stream.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: not a readable safetensors file (header is not a table)")
    return {
        name: list(entry.get("shape", []))
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    }


def check_fits(lora: LoraFile, base_folder: Path | None) -> None:
    """ValueError naming the file when it is no LoRA, or when its layers do not fit the base.

    Shapes are compared for LoRAs in diffusers' format (`transformer.<module>.lora_A.weight`)
    when the base's transformer is here; other formats (kohya, original Wan keys) are converted
    by diffusers at load, so only their being a LoRA is checked now.
    """
    tensors = read_header(lora.file)
    lora_keys = [key for key in tensors if _LORA_KEY.search(key)]
    if not lora_keys:
        raise ValueError(
            f"LoRA {lora.file}: holds no LoRA tensors (no lora_A/lora_B or lora_down/lora_up "
            "weights): is it a full model rather than an adapter?"
        )
    base = _transformer_shapes(base_folder) if base_folder is not None else None
    if base is None:
        return
    for key in lora_keys:
        if not key.startswith("transformer.") or ".lora_A." not in key:
            continue
        module = key.removeprefix("transformer.").split(".lora_A.")[0]
        target = base.get(f"{module}.weight")
        if target is None:
            raise ValueError(
                f"LoRA {lora.file}: adapts '{module}', which the base's transformer does not "
                "have: it was made for another model"
            )
        down, up = tensors[key], tensors.get(key.replace(".lora_A.", ".lora_B."))
        if len(target) != 2 or len(down) != 2 or up is None or len(up) != 2:
            continue  # not a linear layer's LoRA: diffusers decides at load
        if down[1] != target[1] or up[0] != target[0]:
            raise ValueError(
                f"LoRA {lora.file}: '{module}' is {up[0]}x{down[1]} in the LoRA but "
                f"{target[0]}x{target[1]} in the base: it was made for another model"
            )


def _transformer_shapes(folder: Path) -> dict[str, list[int]] | None:
    """The base transformer's parameter shapes from its safetensors headers; None if absent."""
    transformer = folder / "transformer"
    index = transformer / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        files = [transformer / shard for shard in shards]
    else:
        files = [transformer / "diffusion_pytorch_model.safetensors"]
    if not all(file.is_file() for file in files):
        return None
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes |= read_header(file)
    return shapes
