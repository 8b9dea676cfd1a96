"""HunyuanVideo 1.5 end to end: tiny random-weight folders, over HTTP, both databases.

The folders are built in code (`videoserve.models.random_weights_hunyuan15`: the real
checkpoints' 16x/4x VAE, 1x1x1 patches and RoPE at toy widths), saved with `save_pretrained`
once per module and named in a models TOML by their folder alone: a text-to-video folder, an
image-to-video folder (with SigLIP), and a text-to-video folder beside which the SigLIP parts
were copied. The entries say `family = "tiny"` (an eighth of the requested size, 8 fps) with
`max_frames = 33`, so one pass holds 4 s and 8 s needs two; the real grids are checked here
too, without a model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer
from tests.integration.test_families import generate_over_http, png_data_uri
from videoserve import errors
from videoserve.models import families, random_weights_hunyuan15
from videoserve.models.backends import continuation, hunyuan15
from videoserve.models.backends.base import Cancelled, GenerationInputs
from videoserve.models.backends.hunyuan15 import HunyuanVideo15Backend
from videoserve.models.grid import FAMILY_GRIDS, plan
from videoserve.models.options import DiffusersOptions
from videoserve.models.params import DiffusersParams
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TINY = DiffusersOptions(family="tiny", steps=2, max_frames=33)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    random_weights_hunyuan15.build_pipeline(seed=1).save_pretrained(root / "t2v")
    random_weights_hunyuan15.build_pipeline(seed=1, image_to_video=True).save_pretrained(
        root / "i2v"
    )
    shutil.copytree(root / "t2v", root / "t2v-siglip")
    for part in hunyuan15.IMAGE_PARTS:
        shutil.copytree(root / "i2v" / part, root / "t2v-siglip" / part)
    return {"t2v": root / "t2v", "i2v": root / "i2v", "t2v-siglip": root / "t2v-siglip"}


def models_toml(tmp_path: Path, name: str, folder: Path) -> Path:
    toml = tmp_path / "models.toml"
    toml.write_text(
        f'[models.{name}]\nbackend = "diffusers"\npath = "{folder}"\n'
        'family = "tiny"\nsteps = 2\nmax_frames = 33\n'
    )
    return toml


def backend(folder: Path) -> HunyuanVideo15Backend:
    families.check_entry("hy", str(folder), TINY, "cpu")
    made = families.create_backend("hy", str(folder), TINY, "cpu")
    assert isinstance(made, HunyuanVideo15Backend)
    return made


# --- the real grids, without a model -----------------------------------------------------------
@pytest.mark.parametrize(
    ("grid", "sizes"),
    [
        (
            "hunyuan-1.5-480p",
            {"1280x720": "848x480", "720x1280": "480x848", "1792x1024": "848x480"},
        ),
        (
            "hunyuan-1.5-720p",
            {"1280x720": "1280x720", "720x1280": "720x1264", "1792x1024": "1248x720"},
        ),
    ],
)
def test_the_real_grids(grid: str, sizes: dict[str, str]) -> None:
    for size, generated in sizes.items():
        shape = plan(FAMILY_GRIDS[grid], size, 4)
        assert f"{shape.gen_width}x{shape.gen_height}" == generated
        assert (shape.out_frames, shape.gen_frames, shape.fps) == (96, 97, 24)
    # 121 frames a pass (5.0 s): 8 s is refused by a text-only folder, chained by one with I2V.
    with pytest.raises(errors.InvalidRequest, match=r"max 5\.0s at 24 fps"):
        plan(FAMILY_GRIDS[grid], "1280x720", 8)
    chained = plan(FAMILY_GRIDS[grid], "1280x720", 12, chain=True)
    assert chained.segment_frames == (97, 97, 97) and chained.out_frames == 288


def test_grid_read_from_the_transformer_target_size(tmp_path: Path) -> None:
    for target, grid in ((640, "hunyuan-1.5-480p"), (960, "hunyuan-1.5-720p")):
        (tmp_path / "transformer").mkdir(exist_ok=True)
        (tmp_path / "transformer" / "config.json").write_text(json.dumps({"target_size": target}))
        assert hunyuan15.detect_grid(tmp_path) == FAMILY_GRIDS[grid]


# --- over HTTP, both databases ----------------------------------------------------------------
def test_text_to_video_over_http(
    folders: dict[str, Path], make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=models_toml(tmp_path, "hy", folders["t2v"]))
    listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    model = listed["hy"]
    assert model["available"] is True, model["reason"]
    assert (model["text_to_video"], model["image_to_video"], model["audio"]) == (True, False, False)
    assert model["durations"] == [4]  # one pass holds 33 frames, and no I2V to chain with
    assert model["default_steps"] == 2

    body = {"prompt": 'a sign that says "open"', "duration": 4, "size": "1280x720", "seed": 5}
    result = generate_over_http(server, "hy", body)
    assert result["mp4"] == {"width": 160, "height": 90, "fps": 8.0, "frames": 32}
    assert (result["frames"], result["seconds"], result["served_by"]) == (32, 4.0, "hy")
    assert result["has_audio"] is False

    headers = {"x-api-key": server.api_key}
    image = httpx.post(
        f"{server.url}/v2/hy", json={**body, "input_reference": png_data_uri()}, headers=headers
    )
    assert image.status_code == 400
    assert image.json()["error"] == (
        "input_reference: model 'hy' cannot start from an image: its folder has no "
        "image_encoder or feature_extractor (the SigLIP image encoder "
        "HunyuanVideo15ImageToVideoPipeline needs)"
    )
    longer = httpx.post(f"{server.url}/v2/hy", json={**body, "duration": 8}, headers=headers)
    assert longer.status_code == 400
    assert longer.json()["error"] == (
        "duration: 8s is longer than this model generates in one pass (max 4.1s at 8 fps)"
    )


def test_image_to_video_over_http(
    folders: dict[str, Path], make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=models_toml(tmp_path, "hy-i2v", folders["i2v"]))
    listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    model = listed["hy-i2v"]
    assert model["available"] is True, model["reason"]
    assert (model["text_to_video"], model["image_to_video"], model["audio"]) == (False, True, False)
    assert model["durations"] == [4, 8, 12]  # chained from the last frame

    body = {"prompt": "a red cat", "duration": 4, "size": "720x1280", "seed": 2}
    result = generate_over_http(server, "hy-i2v", {**body, "input_reference": png_data_uri()})
    # The pipeline's bucket for the fitted 96x160 image is 96x144: fitted back, then delivered.
    assert result["mp4"] == {"width": 90, "height": 160, "fps": 8.0, "frames": 32}
    assert (result["frames"], result["seconds"]) == (32, 4.0)

    text = httpx.post(f"{server.url}/v2/hy-i2v", json=body, headers={"x-api-key": server.api_key})
    assert text.status_code == 400
    assert text.json()["error"] == "input_reference: model 'hy-i2v' needs an input image"


# --- the backend directly: SigLIP beside a text folder, startup checks, steps ---------------
def test_siglip_parts_beside_a_text_folder_give_image_to_video_and_chaining(
    folders: dict[str, Path],
) -> None:
    model = backend(folders["t2v-siglip"])
    able = model.capabilities
    assert (able.text_to_video, able.image_to_video, able.extend) == (True, True, True)
    assert model.durations() == (4, 8, 12)
    progress: list[tuple[int, int]] = []
    params = DiffusersParams(prompt="a cat", duration=8, seed=4)
    image = Image.new("RGB", (64, 48), (20, 200, 30))
    video = model.generate(
        params, GenerationInputs(image=image), lambda s, t: progress.append((s, t)), lambda: False
    )
    # 64 frames: two passes of 33, the second starting from the first's last frame.
    assert video.frames.shape == (64, 90, 160, 3) and video.segments == 2
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert type(model._i2v).__name__ == hunyuan15.I2V_CLASS
    assert model._i2v.transformer is model._t2v.transformer  # one set of weights


def placeholder_folder(folder: Path, class_name: str, absent: str | None = None) -> Path:
    """A folder that passes the startup checks (they read configs only): every component of
    `class_name` but `absent`, each an empty subfolder named in `model_index.json`."""
    folder.mkdir()
    parts = {}
    for part in hunyuan15.CLASS_COMPONENTS[class_name]:
        if part != absent:
            (folder / part).mkdir()
            parts[part] = ["diffusers", "Placeholder"]
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, **parts}))
    return folder


def registry_for(tmp_path: Path, folder: str) -> ModelRegistry:
    models = tmp_path / "models.toml"
    models.write_text(f'[models.hy]\nbackend = "diffusers"\npath = "{folder}"\n')
    return ModelRegistry.from_settings(Settings(data_dir=tmp_path / "data", models=models))


@pytest.mark.parametrize("class_name", hunyuan15.SUPPORTED_CLASSES)
def test_the_family_is_read_from_model_index(tmp_path: Path, class_name: str) -> None:
    folder = placeholder_folder(tmp_path / "hy", class_name)
    (folder / "transformer" / "config.json").write_text(json.dumps({"target_size": 960}))
    model = registry_for(tmp_path, "hy").backend("hy")
    assert type(model) is HunyuanVideo15Backend
    assert model.grid == FAMILY_GRIDS["hunyuan-1.5-720p"]  # type: ignore[attr-defined]
    i2v = class_name == hunyuan15.I2V_CLASS
    able = model.capabilities
    assert (able.text_to_video, able.image_to_video, able.audio) == (not i2v, i2v, False)


def test_an_unknown_class_is_refused_naming_these_too(tmp_path: Path) -> None:
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "HunyuanVideoPipeline"}')
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, "sd")
    assert "holds a 'HunyuanVideoPipeline' pipeline, which videoserve does not serve" in str(
        caught.value
    )
    assert f"{hunyuan15.T2V_CLASS}, {hunyuan15.I2V_CLASS}" in str(caught.value)


@pytest.mark.parametrize(
    ("class_name", "absent"),
    [
        (hunyuan15.T2V_CLASS, "text_encoder_2"),
        (hunyuan15.T2V_CLASS, "guider"),
        (hunyuan15.I2V_CLASS, "image_encoder"),
    ],
)
def test_a_folder_lacking_a_component_fails_at_startup(
    tmp_path: Path, class_name: str, absent: str
) -> None:
    folder = placeholder_folder(tmp_path / "hy", class_name, absent)
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, "hy")
    assert str(caught.value) == (
        f"model 'hy': {folder} holds a {class_name!r} pipeline without its {absent} component "
        "(model_index.json must name each, with its subfolder)"
    )


def test_progress_per_step_cancellation_between_steps_and_guidance(
    folders: dict[str, Path],
) -> None:
    model = backend(folders["t2v"])
    progress: list[tuple[int, int]] = []
    params = DiffusersParams(prompt="a dog", duration=4, seed=7, num_inference_steps=4)
    with pytest.raises(Cancelled, match="cancelled after step 2"):
        model.generate(
            params,
            GenerationInputs(),
            lambda s, t: progress.append((s, t)),
            lambda: len(progress) >= 2,
        )
    assert progress == [(1, 4), (2, 4)]  # stopped between steps: no third step, no decode
    pipe = model._t2v
    assert "step" not in vars(pipe.scheduler)  # the per-call wrapper is gone
    assert pipe.guider.guidance_scale == 6.0

    def frames(**options: object) -> np.ndarray:
        steps: list[tuple[int, int]] = []
        run = DiffusersParams(prompt="a dog", duration=4, seed=7, **options)  # type: ignore[arg-type]
        video = model.generate(
            run, GenerationInputs(), lambda s, t: steps.append((s, t)), lambda: False
        )
        assert steps == [(1, 2), (2, 2)]
        return video.frames

    guided = frames()  # the backend's default CFG scale, 6
    unguided = frames(guidance_scale=1.0)  # the guider skips the unconditional pass
    assert guided.shape == unguided.shape == (32, 90, 160, 3)
    assert not np.array_equal(guided, unguided)
    assert pipe.guider.guidance_scale == 6.0  # the folder's own scale is kept between calls


class _Previews:
    """A preview sink, as the worker's: every step, frames kept as offered."""

    every, seconds = 1, 0.0

    def __init__(self) -> None:
        self.offered: list[tuple[int, int, np.ndarray]] = []

    def offer(self, step: int, total: int, frames: np.ndarray) -> None:
        self.offered.append((step, total, frames))


def test_previews_while_it_denoises(folders: dict[str, Path]) -> None:
    """HunyuanVideo 1.5 previews like Wan's: after every step but the last, the clean-latent
    estimate projected to RGB by a fit from its own VAE (32 channels, 16x, 4x), one frame
    per latent frame at the latent grid, in [0, 1]."""
    model = backend(folders["t2v"])
    sink = _Previews()
    params = DiffusersParams(prompt="a dog", duration=4, seed=7, num_inference_steps=3)
    model.generate(params, GenerationInputs(preview=sink), lambda s, t: None, lambda: False)
    assert [(step, total) for step, total, _ in sink.offered] == [(1, 3), (2, 3)]
    frames = sink.offered[-1][2]
    # 33 frames of 160x96 (the plan's 160x90 on the 16-pixel grid) -> 9 x 6 x 10 latents.
    assert frames.shape == (9, 6, 10, 3), frames.shape
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    assert not np.array_equal(frames, sink.offered[0][2])  # it moves as the video forms


@pytest.mark.parametrize(("name", "extends"), [("t2v", False), ("i2v", True), ("t2v-siglip", True)])
def test_extensions_where_image_to_video_exists_and_no_edits(
    folders: dict[str, Path], name: str, extends: bool
) -> None:
    """An extension continues from the last frame by image-to-video, where the folder has it;
    no HunyuanVideo 1.5 pipeline edits a video, and both refusals name the model."""
    model = backend(folders[name])
    frames = np.random.default_rng(4).integers(0, 255, (16, 48, 64, 3), dtype=np.uint8)
    source = continuation.SourceVideo(frames, 8.0)
    if extends:
        params = DiffusersParams(prompt="a cat", duration=4, num_inference_steps=2, seed=3)
        video = continuation.extend(model, params, source, lambda s, t: None, lambda: False)
        assert video.frames.shape == (16 + 32, 48, 64, 3)
        assert np.array_equal(video.frames[:16], frames)
    else:
        assert "model 'hy' cannot continue a video" in str(continuation.extend_refusal(model))
    assert "model 'hy' has no video-to-video pipeline" in str(continuation.edit_refusal(model))
