"""Model families without running a model: the size/duration rule of every family, the table
in docs/models.md, which family serves a folder, where weights are looked for (a folder or the
Hugging Face cache, never the network), the runtime options, and the LRU of loaded models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videoserve import errors
from videoserve.models import families, grid_table, weights
from videoserve.models.backends.ltx import LTXBackend
from videoserve.models.backends.ltx2 import COMPONENTS as LTX2_COMPONENTS
from videoserve.models.backends.ltx2 import LTX2Backend
from videoserve.models.backends.wan import WanBackend
from videoserve.models.grid import FAMILY_GRIDS, plan
from videoserve.models.options import DiffusersOptions, RuntimeOptions
from videoserve.models.params import DURATIONS, SIZES, VideoParams
from videoserve.models.pool import ModelPool
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# family: {size: generated size}, {duration: (delivered frames, generated frames) or refusal}
EXPECTED: dict[str, tuple[dict[str, str], dict[int, tuple[int, int] | str]]] = {
    "wan2.1": (
        {"720x1280": "480x832", "1280x720": "832x480", "1024x1792": "480x832",
         "1792x1024": "832x480"},
        {4: (64, 65), 8: "max 5.1s at 16 fps", 12: "max 5.1s at 16 fps"},
    ),
    "wan2.1-720p": (
        {"720x1280": "720x1280", "1280x720": "1280x720", "1024x1792": "720x1280",
         "1792x1024": "1280x720"},
        {4: (64, 65), 8: "max 5.1s at 16 fps", 12: "max 5.1s at 16 fps"},
    ),
    "wan2.2-ti2v": (
        {"720x1280": "704x1280", "1280x720": "1280x704", "1024x1792": "704x1280",
         "1792x1024": "1280x704"},
        {4: (96, 97), 8: "max 5.0s at 24 fps", 12: "max 5.0s at 24 fps"},
    ),
    "ltx-video": (
        {"720x1280": "512x768", "1280x720": "768x512", "1024x1792": "512x768",
         "1792x1024": "768x512"},
        {4: (96, 97), 8: (192, 193), 12: "max 10.7s at 24 fps"},
    ),
    # LTX-2: any size on its 32 grid (720 rounds up to 736 and is cropped back), 20 s a pass.
    "ltx-2": (
        {"720x1280": "736x1280", "1280x720": "1280x736", "1024x1792": "1024x1792",
         "1792x1024": "1792x1024"},
        {4: (96, 97), 8: (192, 193), 12: (288, 289)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", EXPECTED)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("duration", DURATIONS)
def test_every_size_and_duration_of_every_family(family: str, size: str, duration: int) -> None:
    grid = FAMILY_GRIDS[family]
    sizes, frames = EXPECTED[family]
    expected = frames[duration]
    if isinstance(expected, str):
        with pytest.raises(errors.InvalidRequest) as caught:
            plan(grid, size, duration)
        assert caught.value.param == "duration"
        assert caught.value.message == (
            f"duration: {duration}s is longer than this model generates in one pass ({expected})"
        )
        return
    shape = plan(grid, size, duration)
    assert f"{shape.gen_width}x{shape.gen_height}" == sizes[size]
    assert f"{shape.out_width}x{shape.out_height}" == size  # delivered at the requested size
    assert (shape.out_frames, shape.gen_frames, shape.fps) == (*expected, grid.fps)
    assert shape.gen_width % grid.multiple == 0 and shape.gen_height % grid.multiple == 0
    assert (shape.gen_frames - 1) % grid.frame_rule == 0
    assert shape.seconds == duration


def test_docs_table_is_the_rendered_one() -> None:
    docs = (ROOT / "docs" / "models.md").read_text()
    block = f"{grid_table.START}\n\n{grid_table.render()}\n{grid_table.END}"
    assert block in docs, "docs/models.md is stale: python -m videoserve.models.grid_table --write"


# --- which family serves a folder ------------------------------------------------------------
def pipeline_folder(path: Path, class_name: str, **config: object) -> Path:
    """A folder that passes the availability check (it reads only model_index.json), with an
    (empty) subfolder for each component a family requires."""
    path.mkdir(parents=True)
    parts: dict[str, object] = {}
    if class_name.startswith("LTX2"):
        for part in LTX2_COMPONENTS:
            (path / part).mkdir()
            parts[part] = ["diffusers", "Placeholder"]
    index = {"_class_name": class_name, **parts, **config}
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def registry_for(tmp_path: Path, toml: str) -> ModelRegistry:
    models = tmp_path / "models.toml"
    models.write_text(toml)
    return ModelRegistry.from_settings(Settings(data_dir=tmp_path / "data", models=models))


@pytest.mark.parametrize(
    ("class_name", "backend", "grid"),
    [
        ("WanPipeline", WanBackend, "wan2.1"),
        ("WanImageToVideoPipeline", WanBackend, "wan2.1"),
        ("WanVACEPipeline", WanBackend, "wan2.1"),
        ("LTXPipeline", LTXBackend, "ltx-video"),
        ("LTXImageToVideoPipeline", LTXBackend, "ltx-video"),
        ("LTXConditionPipeline", LTXBackend, "ltx-video"),
        ("LTX2Pipeline", LTX2Backend, "ltx-2"),
        ("LTX2ImageToVideoPipeline", LTX2Backend, "ltx-2"),
    ],
)
def test_family_read_from_model_index(
    tmp_path: Path, class_name: str, backend: type, grid: str
) -> None:
    pipeline_folder(tmp_path / "weights", class_name)
    registry = registry_for(tmp_path, '[models.x]\nbackend = "diffusers"\npath = "weights"\n')
    model = registry.backend("x")
    assert type(model) is backend
    assert model.grid == FAMILY_GRIDS[grid]  # type: ignore[attr-defined]
    assert registry.resolve("x").backend is model


def test_unknown_pipeline_class_is_refused_at_startup(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "sd", "StableDiffusionPipeline")
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, '[models.sd]\nbackend = "diffusers"\npath = "sd"\n')
    message = str(caught.value)
    assert message.startswith(f"model 'sd': {tmp_path / 'sd'} holds a 'StableDiffusionPipeline'")
    for supported in families.PIPELINE_FAMILIES:
        assert supported in message


@pytest.mark.parametrize("missing", ["vocoder", "audio_vae", "connectors"])
def test_ltx2_folder_without_a_component_is_refused_at_startup(
    tmp_path: Path, missing: str
) -> None:
    folder = pipeline_folder(tmp_path / "ltx2", "LTX2Pipeline")
    (folder / missing).rmdir()  # named in model_index.json, but its folder is gone
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, '[models.ltx2]\nbackend = "diffusers"\npath = "ltx2"\n')
    assert str(caught.value) == (
        f"model 'ltx2': {folder} holds a 'LTX2Pipeline' pipeline without its {missing} "
        "component (model_index.json must name each, with its subfolder)"
    )
    index = json.loads((folder / "model_index.json").read_text())
    del index[missing]  # and not named at all
    (folder / missing).mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"without its {missing} component"):
        registry_for(tmp_path, '[models.ltx2]\nbackend = "diffusers"\npath = "ltx2"\n')


def test_the_upsampler_option_is_checked_at_startup(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "ltx2", "LTX2Pipeline")
    pipeline_folder(tmp_path / "wan", "WanPipeline")
    good = tmp_path / "up" / "latent_upsampler"
    good.mkdir(parents=True)
    (good / "config.json").write_text(json.dumps({"_class_name": "LTX2LatentUpsamplerModel"}))
    wrong = tmp_path / "vae"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLLTX2Video"}))

    def entry(model: str, upsampler: str) -> str:
        return f'[models.m]\nbackend = "diffusers"\npath = "{model}"\nupsampler = "{upsampler}"\n'

    registry = registry_for(tmp_path, entry("ltx2", "up"))  # relative to the TOML, like path
    assert registry.backend("m").upsampler == tmp_path / "up"  # type: ignore[attr-defined]
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, entry("wan", "up"))
    assert str(caught.value) == (
        f"model 'm': upsampler is an LTX-2 option, but {tmp_path / 'wan'} holds a wan "
        "pipeline (WanPipeline)"
    )
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, entry("ltx2", "vae"))
    assert str(caught.value) == (
        f"model 'm': upsampler: {wrong / 'config.json'} names 'AutoencoderKLLTX2Video' "
        "(expected 'LTX2LatentUpsamplerModel')"
    )
    with pytest.raises(ValueError, match=r"upsampler: no LTX2LatentUpsamplerModel config\.json"):
        registry_for(tmp_path, entry("ltx2", "nowhere"))


def test_sora_prefers_an_available_model_with_sound(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "wan", "WanPipeline")
    pipeline_folder(tmp_path / "ltx2", "LTX2Pipeline")
    toml = (
        '[models.wan]\nbackend = "diffusers"\npath = "wan"\n'
        '[models.ltx2]\nbackend = "diffusers"\npath = "ltx2"\n'
    )
    registry = registry_for(tmp_path, toml)
    assert registry.served_by("sora-2-pro") == "ltx2"  # later in the file, but it makes sound
    listed = {m["id"]: m for m in registry.describe()}
    assert listed["ltx2"]["audio"] is True and listed["wan"]["audio"] is False
    assert listed["sora-2-pro"]["audio"] is True
    assert listed["ltx2"]["image_to_video"] and not listed["wan"]["image_to_video"]
    assert listed["ltx2"]["durations"] == [4, 8, 12] and listed["wan"]["durations"] == [4]
    assert listed["wan"]["sizes"] == list(SIZES)
    for name in ("wan", "ltx2", "sora-2-pro", "tiny-t2v"):
        assert {"text_to_video", "video_to_video", "reference_images"} <= set(listed[name])
    (tmp_path / "ltx2" / "model_index.json").unlink()  # now unavailable: the silent one serves
    assert registry_for(tmp_path, toml).served_by("sora-2-pro") == "wan"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('family = "wan2.1"', "family 'wan2.1' is a wan grid, but"),
        ('dtype = "int8"', "dtype must be one of bf16, fp16, fp32"),
        ("cpu_offload = true\ngroup_offload = true", "cpu_offload and group_offload"),
        ('cache = "mag"', 'cache "mag" (MagCache) needs magnitude ratios'),
        ('cache = "teacache"', "cache must be one of first_block"),
        ("cache_threshold = 2.0", "cache_threshold must be between 0 and 1"),
        ('vae_tiling = "yes"', "vae_tiling must be"),
    ],
)
def test_bad_runtime_options_fail_at_startup(tmp_path: Path, options: str, message: str) -> None:
    pipeline_folder(tmp_path / "ltx", "LTXPipeline")
    with pytest.raises(ValueError, match="model 'x'") as caught:
        registry_for(tmp_path, f'[models.x]\nbackend = "diffusers"\npath = "ltx"\n{options}\n')
    assert message in str(caught.value)


def test_runtime_options_reach_the_backend(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "ltx", "LTXPipeline")
    registry = registry_for(
        tmp_path,
        '[models.x]\nbackend = "diffusers"\npath = "ltx"\ndevice = "cpu"\ndtype = "bf16"\n'
        'cpu_offload = true\nvae_tiling = true\ncache = "first_block"\ncache_threshold = 0.1\n'
        'steps = 8\nguidance = 4\nnegative_prompt = "blur"\n',
    )
    model = registry.backend("x")
    assert isinstance(model, LTXBackend)
    assert model.runtime == RuntimeOptions(
        cpu_offload=True, vae_tiling=True, cache="first_block", cache_threshold=0.1
    )
    assert (model.device, model.dtype) == ("cpu", "bf16")
    assert (model.default_steps, model.default_guidance, model.default_negative_prompt) == (
        8,
        4.0,
        "blur",
    )


def test_family_defaults_when_the_entry_says_nothing(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "ltx", "LTXPipeline")
    pipeline_folder(tmp_path / "wan", "WanPipeline")
    registry = registry_for(
        tmp_path,
        '[models.l]\nbackend = "diffusers"\npath = "ltx"\n'
        '[models.w]\nbackend = "diffusers"\npath = "wan"\n',
    )
    ltx, wan = registry.backend("l"), registry.backend("w")
    assert (ltx.default_steps, ltx.default_guidance) == (50, 3.0)  # type: ignore[attr-defined]
    assert "jittery" in ltx.default_negative_prompt  # type: ignore[attr-defined]
    assert (wan.default_steps, wan.default_guidance) == (40, 5.0)  # type: ignore[attr-defined]


def test_image_rules_per_layout(tmp_path: Path) -> None:

    image = "https://x.test/a.png"
    pipeline_folder(tmp_path / "ltx", "LTXPipeline")
    ltx = families.create_backend("ltx", str(tmp_path / "ltx"), DiffusersOptions(), "cpu")
    ltx.check(VideoParams(prompt="a", duration=8))  # 8 s fits LTX-Video's 257 frames
    ltx.check(VideoParams(prompt="a", duration=4, input_reference=image))
    ltx.check(VideoParams(prompt="a", duration=12))  # over one pass: chained, 2 passes
    # Wan 2.1 text-to-video has no image pipeline to chain with: over one pass is refused.
    pipeline_folder(tmp_path / "wan", "WanPipeline")
    wan = families.create_backend("wan", str(tmp_path / "wan"), DiffusersOptions(), "cpu")
    with pytest.raises(errors.InvalidRequest, match=r"max 5\.1s at 16 fps"):
        wan.check(VideoParams(prompt="a", duration=8))


# --- where the weights are: a folder, or the Hugging Face cache ------------------------------
@pytest.mark.parametrize(
    ("text", "repo"),
    [
        ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", True),
        ("Lightricks/LTX-Video", True),
        ("/srv/models/wan", False),
        ("./wan/x", False),
        ("../wan", False),
        ("wan", False),
        ("a/b/c", False),
        ("~/models", False),
    ],
)
def test_repo_ids_are_told_from_paths(text: str, repo: bool) -> None:
    assert weights.is_repo_id(text) is repo


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME in tmp_path, offline: nothing may be downloaded."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read the environment when it was imported: point it here too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


def cache_repo(hub: Path, repo: str, class_name: str) -> Path:
    """Lay out a repo in the hub cache as `snapshot_download` leaves it."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return snapshot


def test_repo_not_in_the_cache_is_unavailable_with_the_fix(tmp_path: Path, empty_hub: Path) -> None:
    registry = registry_for(
        tmp_path, '[models.wan]\nbackend = "diffusers"\npath = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"\n'
    )
    listed = {m["id"]: m for m in registry.describe()}["wan"]
    assert listed["available"] is False
    assert listed["reason"] == (
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers is not a folder here, nor in the Hugging Face cache "
        f"at {empty_hub} (HF_HOME / HF_HUB_CACHE); download it with `videoserve pull wan`"
    )
    with pytest.raises(errors.ModelUnavailable, match="videoserve pull wan"):
        registry.resolve("wan")
    assert registry.served_by("sora-2-pro") == "tiny-t2v"  # the fallback, with a warning
    with pytest.raises(weights.PullFailed, match="HF_HUB_OFFLINE is set") as caught:
        registry.backend("wan").pull()  # type: ignore[attr-defined]
    assert str(empty_hub) in str(caught.value)
    assert not empty_hub.exists()  # nothing was attempted


def test_repo_in_the_cache_is_served_from_its_snapshot(tmp_path: Path, empty_hub: Path) -> None:
    snapshot = cache_repo(empty_hub, "Lightricks/LTX-Video", "LTXPipeline")
    registry = registry_for(
        tmp_path, '[models.ltx]\nbackend = "diffusers"\npath = "Lightricks/LTX-Video"\n'
    )
    model = registry.backend("ltx")
    assert isinstance(model, LTXBackend)
    assert model.path == snapshot
    assert registry.resolve("ltx").served_by == "ltx"
    assert registry.served_by("sora-2-pro") == "ltx"
    assert model.pull() == snapshot  # offline, already cached: nothing to do


def test_unknown_class_in_the_cache_is_refused_at_startup(tmp_path: Path, empty_hub: Path) -> None:
    cache_repo(empty_hub, "someone/flux", "FluxPipeline")
    with pytest.raises(ValueError, match="holds a 'FluxPipeline' pipeline"):
        registry_for(tmp_path, '[models.f]\nbackend = "diffusers"\npath = "someone/flux"\n')


def test_an_existing_relative_folder_wins_over_a_repo_id(tmp_path: Path, empty_hub: Path) -> None:
    pipeline_folder(tmp_path / "Lightricks" / "LTX-Video", "LTXPipeline")
    registry = registry_for(
        tmp_path, '[models.ltx]\nbackend = "diffusers"\npath = "Lightricks/LTX-Video"\n'
    )
    assert registry.backend("ltx").path == tmp_path / "Lightricks" / "LTX-Video"  # type: ignore[attr-defined]


def test_local_folder_is_not_pulled(tmp_path: Path) -> None:
    backend = families.create_backend("w", str(tmp_path / "absent"), DiffusersOptions(), "cpu")
    assert backend.availability().reason == f"no model folder at {tmp_path / 'absent'}"
    with pytest.raises(weights.PullFailed, match="loads the local folder"):
        backend.pull()


def test_cli_models_and_pull_offline(tmp_path: Path) -> None:
    """The real environment variables, in a real process: nothing leaves the machine."""
    (tmp_path / "models.toml").write_text(
        '[models.ltx]\nbackend = "diffusers"\npath = "Lightricks/LTX-Video"\n'
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "VIDEOSERVE_MODELS": str(tmp_path / "models.toml"),
        "VIDEOSERVE_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "400",
    }
    env.pop("HF_HUB_CACHE", None)

    def videoserve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "videoserve.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listing = videoserve("models")
    assert listing.returncode == 0, listing.stderr
    flat = " ".join(listing.stdout.split())
    assert "videoserve pull ltx" in flat and str(tmp_path / "hf-home" / "hub") in flat
    pulled = videoserve("pull", "ltx")
    assert pulled.returncode == 1
    message = " ".join(pulled.stderr.split())
    assert "cannot download Lightricks/LTX-Video: HF_HUB_OFFLINE is set" in message
    assert not (tmp_path / "hf-home" / "hub").exists()


# --- the LRU of loaded models ----------------------------------------------------------------
class FakeBackend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pool: ModelPool | None = None
        self.unloads = 0

    def unload(self) -> None:
        self.unloads += 1
        assert self.pool is not None
        self.pool.unloaded(self)


def test_pool_unloads_the_least_recently_used() -> None:
    pool = ModelPool(max_loaded=2)
    a, b, c = (FakeBackend(n) for n in "abc")
    for backend in (a, b, c):
        pool.track(backend)
    pool.loaded(a)
    pool.loaded(b)
    pool.loaded(a)  # used again: b is now the oldest
    pool.loaded(c)
    assert (a.unloads, b.unloads, c.unloads) == (0, 1, 0)
    assert pool.resident() == ["a", "c"]


def test_pool_never_unloads_a_model_that_is_generating() -> None:
    pool = ModelPool(max_loaded=1)
    a, b = FakeBackend("a"), FakeBackend("b")
    pool.track(a)
    pool.track(b)
    pool.loaded(a)
    with pool.in_use(a):
        pool.loaded(b)  # over the limit for now
        assert a.unloads == 0 and pool.resident() == ["a", "b"]
    pool.loaded(b)
    assert a.unloads == 1 and pool.resident() == ["b"]
    with pytest.raises(ValueError):
        ModelPool(max_loaded=0)


def test_an_adapter_entry_refuses_in_its_own_name(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "wan", "WanPipeline")  # Wan 2.1 T2V: no input image
    header = json.dumps(
        {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": {
                "dtype": "F32",
                "shape": [1, 1],
                "data_offsets": [0, 4],
            }
        }
    ).encode()
    (tmp_path / "fast.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + bytes(4)
    )
    registry = registry_for(
        tmp_path,
        '[models.w]\nbackend = "diffusers"\npath = "wan"\n'
        '[models.fast]\nbackend = "diffusers"\nbase = "w"\n'
        'loras = [{ path = "fast.safetensors" }]\n',
    )
    fast = registry.backend("fast")
    assert fast.availability().available
    with pytest.raises(errors.InvalidRequest, match="model 'fast' does not accept an input image"):
        fast.check(VideoParams(prompt="a", duration=4, input_reference="https://x.test/a.png"))
