"""The weights' JSON configs, read through a cache keyed on each file's stamp.

Why a module of its own: submits (`check`), the registry and every family read configs
without loading a model; none of that needs the loading and calling in `diffusion.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
