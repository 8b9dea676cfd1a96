"""Weights' configs are read once and again only when their file changes.

`check` runs on every submit; it reads `model_index.json` (and a family's grid reads the
transformer's `config.json`) through a cache keyed on each file's (mtime, size, inode). These
tests change the files on disk under a live backend and check that it sees every change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from videoserve import errors
from videoserve.models import grid as grids
from videoserve.models.backends import diffusion
from videoserve.models.backends.wan import WanBackend
from videoserve.models.params import VideoParams


def write(file: Path, config: dict[str, object], *, mtime_ns: int | None = None) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(config))
    if mtime_ns is not None:  # the same mtime as before: only the size (or inode) differs
        os.utime(file, ns=(mtime_ns, mtime_ns))


def test_a_changed_index_is_read_again(tmp_path: Path) -> None:
    index = tmp_path / "model_index.json"
    write(index, {"_class_name": "WanPipeline"})
    assert diffusion.read_model_index(tmp_path) == {"_class_name": "WanPipeline"}
    before = index.stat().st_mtime_ns
    write(index, {"_class_name": "WanImageToVideoPipeline"}, mtime_ns=before)
    assert diffusion.read_model_index(tmp_path) == {"_class_name": "WanImageToVideoPipeline"}
    index.write_text("not json")
    assert diffusion.read_model_index(tmp_path) is None
    index.unlink()
    assert diffusion.read_model_index(tmp_path) is None
    write(index, {"_class_name": "WanPipeline"})
    assert diffusion.read_model_index(tmp_path) == {"_class_name": "WanPipeline"}


def test_a_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    # Same size and the same mtime: only the inode tells the new file from the old one.
    index = tmp_path / "model_index.json"
    write(index, {"_class_name": "AAAAAAAAAA"})
    assert diffusion.read_model_index(tmp_path) == {"_class_name": "AAAAAAAAAA"}
    staged = tmp_path / "staged.json"
    write(staged, {"_class_name": "BBBBBBBBBB"}, mtime_ns=index.stat().st_mtime_ns)
    os.replace(staged, index)
    assert diffusion.read_model_index(tmp_path) == {"_class_name": "BBBBBBBBBB"}


def test_callers_cannot_change_the_cached_config(tmp_path: Path) -> None:
    write(tmp_path / "model_index.json", {"_class_name": "WanPipeline"})
    first = diffusion.read_model_index(tmp_path)
    assert first is not None
    first["_class_name"] = "changed by a caller"
    assert diffusion.read_model_index(tmp_path) == {"_class_name": "WanPipeline"}


def test_check_and_grid_follow_the_weights_as_they_change(tmp_path: Path) -> None:
    backend = WanBackend("wan", tmp_path)
    image = "https://x.test/a.png"
    # No weights yet: `generate` decides later, so the check lets an image through.
    backend.check(VideoParams(prompt="a", duration=4, input_reference=image))
    write(tmp_path / "model_index.json", {"_class_name": "WanPipeline"})
    write(tmp_path / "transformer" / "config.json", {"num_attention_heads": 12})
    assert backend.grid == grids.WAN21_GRID
    with pytest.raises(errors.InvalidRequest, match="does not accept an input image"):
        backend.check(VideoParams(prompt="a", duration=4, input_reference=image))
    # The 14B transformer (5120 wide) arrives: the grid follows the new config.
    write(
        tmp_path / "transformer" / "config.json",
        {"num_attention_heads": 40, "attention_head_dim": 128},
    )
    assert backend.grid == grids.WAN_720P_GRID
    # Image-to-video weights replace the text ones: the check now needs an image.
    write(tmp_path / "model_index.json", {"_class_name": "WanImageToVideoPipeline"})
    with pytest.raises(errors.InvalidRequest, match="needs an input image"):
        backend.check(VideoParams(prompt="a", duration=4))
    backend.check(VideoParams(prompt="a", duration=4, input_reference=image))
