"""The model registry: configuration, aliases, `sora-2-pro` routing, availability."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from videoserve import errors
from videoserve.models.backends.tiny import TinyBackend, TinySoundBackend
from videoserve.models.backends.wan import WanBackend
from videoserve.models.grid import WAN21_GRID, WAN22_TI2V_GRID
from videoserve.models.params import (
    SIZES,
    AudioDiffusersParams,
    DiffusersParams,
    VideoParams,
    schema_json,
)
from videoserve.models.registry import BackendSpec, ModelEntry, ModelRegistry, load_models_file
from videoserve.settings import Settings


def fake_wan_folder(path: Path, class_name: str = "WanPipeline", **config: object) -> Path:
    """A folder that passes the availability check (it reads only model_index.json)."""
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name, **config}))
    return path


def registry_for(tmp_path: Path, toml: str | None = None, **settings: object) -> ModelRegistry:
    models = None
    if toml is not None:
        models = tmp_path / "models.toml"
        models.write_text(toml)
    return ModelRegistry.from_settings(
        Settings(data_dir=tmp_path / "data", models=models, **settings)  # type: ignore[arg-type]
    )


def by_id(registry: ModelRegistry) -> dict[str, dict]:
    return {m["id"]: m for m in registry.describe()}


def test_builtin_tiny_and_sora_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="videoserve.models"):
        registry = registry_for(tmp_path)
    assert registry.names() == ["tiny-t2v", "tiny-t2av", "sora-2-pro"]

    tiny = registry.resolve("tiny-t2v")
    assert isinstance(tiny.backend, TinyBackend)
    assert (tiny.public_name, tiny.served_by, tiny.schema) == (
        "tiny-t2v",
        "tiny-t2v",
        DiffusersParams,
    )
    assert tiny.backend.path == tmp_path / "data" / "models" / "tiny-t2v"

    sora = registry.resolve("sora-2-pro")
    assert (sora.served_by, sora.schema) == ("tiny-t2v", VideoParams)
    assert sora.backend is tiny.backend  # one backend per model, kept warm

    [warning] = registry.warnings
    assert warning.startswith("sora-2-pro is served by tiny-t2v, a random-weight test model")
    assert "configure real weights" in warning
    assert [r.getMessage() for r in caplog.records] == [warning]

    listed = by_id(registry)
    assert listed["tiny-t2v"] == {
        "id": "tiny-t2v",
        "object": "model",
        "created": listed["tiny-t2v"]["created"],
        "owned_by": "videoserve",
        "backend": "tiny",
        "alias_of": None,
        "served_by": "tiny-t2v",
        "base": None,
        "adapters": [],
        "available": True,
        "reason": None,
        "warning": None,
        # What the Wan 2.2 TI2V layout of the tiny model can do, before it is even built.
        "text_to_video": True,
        "image_to_video": True,
        "audio": False,
        "video_to_video": True,  # edits: Wan's video-to-video over the same modules
        "reference_images": False,
        "extend": True,  # extensions: image-to-video from the last frame
        "durations": [4, 8, 12],  # the tiny grid's passes chain
        "sizes": list(SIZES),
        "parameters": schema_json(DiffusersParams),
        # What a request costs and how far it may run (docs/models.md, compute limits).
        "price_per_second": 1.0,
        "price_per_step_second": 0.0,
        "default_steps": 4,
        "max_steps": None,
        "max_job_seconds": None,
    }
    assert listed["sora-2-pro"]["alias_of"] == "tiny-t2v"
    assert listed["sora-2-pro"]["warning"] == warning
    assert listed["sora-2-pro"]["parameters"] == schema_json(VideoParams)
    json.dumps(registry.describe())


def test_builtin_tiny_sound_model_is_a_tiny_ltx2_that_never_stands_in_for_sora(
    tmp_path: Path,
) -> None:
    registry = registry_for(tmp_path)
    sound = registry.resolve("tiny-t2av")
    assert isinstance(sound.backend, TinySoundBackend)
    assert sound.schema is AudioDiffusersParams  # it takes `audio: false`
    assert sound.backend.path == tmp_path / "data" / "models" / "tiny-t2av"
    listed = by_id(registry)["tiny-t2av"]
    assert (listed["available"], listed["audio"], listed["backend"]) == (True, True, "tiny")
    assert by_id(registry)["tiny-t2v"]["audio"] is False
    # A random-weight model is never the seed's model's stand-in by preference: tiny-t2v is.
    assert registry.served_by("sora-2-pro") == "tiny-t2v"


def test_a_models_file_may_make_another_tiny_model_with_sound(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path, '[models.noise-with-sound]\nbackend = "tiny"\nlayout = "ltx2"\nseed = 3\n'
    )
    backend = registry.backend("noise-with-sound")
    assert isinstance(backend, TinySoundBackend) and backend.seed == 3
    with pytest.raises(ValueError, match="layout"):
        registry_for(tmp_path, '[models.x]\nbackend = "tiny"\nlayout = "hunyuan"\n')


def test_toml_entries_and_sora_served_by_first_available_diffusers(tmp_path: Path) -> None:
    fake_wan_folder(tmp_path / "weights" / "wan-small")
    registry = registry_for(
        tmp_path,
        """
        [models.absent]
        backend = "diffusers"
        path = "/nonexistent/folder"

        [models."wan-2.1-t2v-1.3b"]
        backend = "diffusers"
        path = "weights/wan-small"   # relative to the TOML file
        family = "wan2.1"
        steps = 30
        guidance = 6
        fps = 16
        max_frames = 161
        """,
    )
    assert registry.names() == [
        "tiny-t2v",
        "tiny-t2av",
        "absent",
        "wan-2.1-t2v-1.3b",
        "sora-2-pro",
    ]
    assert registry.warnings == []
    sora = registry.resolve("sora-2-pro")
    assert sora.served_by == "wan-2.1-t2v-1.3b"
    assert sora.schema is VideoParams
    wan = registry.resolve("wan-2.1-t2v-1.3b")
    assert wan.schema is DiffusersParams
    backend = wan.backend
    assert isinstance(backend, WanBackend)
    assert backend.path == tmp_path / "weights" / "wan-small"
    assert (backend.default_steps, backend.default_guidance) == (30, 6.0)
    assert backend.grid.max_frames == 161 and backend.grid.trained == WAN21_GRID.trained
    listed = by_id(registry)
    assert listed["sora-2-pro"]["warning"] is None
    assert listed["sora-2-pro"]["backend"] == "diffusers"


def test_grid_detected_from_the_folder(tmp_path: Path) -> None:
    fake_wan_folder(tmp_path / "ti2v", expand_timesteps=True)
    registry = registry_for(tmp_path, '[models.wan5b]\nbackend = "diffusers"\npath = "ti2v"\n')
    assert registry.backend("wan5b").grid == WAN22_TI2V_GRID  # type: ignore[attr-defined]


def test_fallback_warning_names_unavailable_models(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path, '[models.wan]\nbackend = "diffusers"\npath = "/nonexistent/wan"\n'
    )
    assert registry.served_by("sora-2-pro") == "tiny-t2v"
    assert "wan: no model folder at /nonexistent/wan" in registry.warnings[0]


def test_unavailable_model_listed_with_the_path_and_refused(tmp_path: Path) -> None:
    missing = tmp_path / "not-downloaded"
    registry = registry_for(tmp_path, f'[models.wan]\nbackend = "diffusers"\npath = "{missing}"\n')
    listed = by_id(registry)["wan"]
    assert listed["available"] is False
    assert str(missing) in listed["reason"]
    with pytest.raises(errors.ModelUnavailable) as caught:
        registry.resolve("wan")
    assert caught.value.message == f"model 'wan' is unavailable: no model folder at {missing}"


def test_unsupported_pipeline_class_is_refused_at_startup(tmp_path: Path) -> None:
    fake_wan_folder(tmp_path / "sd", class_name="StableDiffusionPipeline")
    with pytest.raises(ValueError, match="'StableDiffusionPipeline'") as refused:
        registry_for(tmp_path, '[models.sd]\nbackend = "diffusers"\npath = "sd"\n')
    assert "WanPipeline" in str(refused.value) and "LTXPipeline" in str(refused.value)


def test_aliases_from_toml_then_settings(tmp_path: Path) -> None:
    fake_wan_folder(tmp_path / "wan")
    toml = """
    [models.wan]
    backend = "diffusers"
    path = "wan"

    [aliases]
    fast = "tiny-t2v"
    sora-2-pro = "tiny-t2v"
    """
    registry = registry_for(tmp_path, toml)
    assert registry.served_by("fast") == "tiny-t2v"
    assert registry.served_by("sora-2-pro") == "tiny-t2v"
    assert registry.warnings == []  # configured on purpose: no warning
    assert registry.schema("fast") is DiffusersParams
    assert registry.schema("sora-2-pro") is VideoParams

    overridden = registry_for(tmp_path, toml, aliases={"sora-2-pro": "wan", "quick": "wan"})
    assert overridden.served_by("sora-2-pro") == "wan"  # the environment wins
    assert overridden.served_by("fast") == "tiny-t2v"
    assert overridden.served_by("quick") == "wan"
    assert overridden.names_served_by("wan") == ["wan", "sora-2-pro", "quick"]
    assert overridden.names_served_by("quick") == ["wan", "sora-2-pro", "quick"]
    assert overridden.names_served_by("tiny-t2v") == ["tiny-t2v", "fast"]
    listed = by_id(overridden)
    assert (listed["quick"]["alias_of"], listed["quick"]["backend"]) == ("wan", "diffusers")


def test_aliases_from_the_environment_string(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VIDEOSERVE_ALIASES", "sora-2-pro=tiny-t2v, small=tiny-t2v")
    registry = registry_for(tmp_path)
    assert registry.served_by("small") == "tiny-t2v"
    assert registry.warnings == []


def test_names_served_by_and_served_models_for_workers(tmp_path: Path) -> None:
    fake_wan_folder(tmp_path / "wan")
    registry = registry_for(
        tmp_path,
        '[models.wan]\nbackend = "diffusers"\npath = "wan"\n'
        '[models.gone]\nbackend = "diffusers"\npath = "/nonexistent"\n',
    )
    assert registry.names_served_by("wan") == ["wan", "sora-2-pro"]
    assert registry.names_served_by("sora-2-pro") == ["wan", "sora-2-pro"]
    assert registry.served_models() == ["tiny-t2v", "tiny-t2av", "wan"]  # every available one
    assert registry.served_models(["sora-2-pro", "wan", "tiny-t2v"]) == ["wan", "tiny-t2v"]
    with pytest.raises(ValueError, match="worker model 'nope' is not configured"):
        registry.served_models(["nope"])


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    registry = registry_for(tmp_path)
    with pytest.raises(errors.NotFound) as caught:
        registry.resolve("sora-3")
    assert caught.value.message == "model 'sora-3' not found"
    with pytest.raises(errors.NotFound):
        registry.names_served_by("sora-3")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[models.x]\nbackend = "comfy"\npath = "/m"\n', "model 'x': unknown backend 'comfy'"),
        ('[models.x]\npath = "/m"\n', "model 'x' needs backend"),
        ('[models.x]\nbackend = "diffusers"\n', "model 'x': backend 'diffusers' needs path"),
        ('[models.x]\nbackend = "diffusers"\npath = "/m"\nstep = 3\n', "unknown option(s) step"),
        ('[models.x]\nbackend = "diffusers"\npath = "/m"\nfamily = "sd"\n', "unknown family 'sd'"),
        ('[models.x]\nbackend = "diffusers"\npath = "/m"\nsteps = 0\n', "steps must be"),
        ('[models.x]\nbackend = "diffusers"\npath = "/m"\nfps = "24"\n', "fps must be"),
        ('[models."tiny-t2v"]\nbackend = "diffusers"\npath = "/m"\n', "is built in"),
        ('[models."a b"]\nbackend = "diffusers"\npath = "/m"\n', "model name 'a b' must be"),
        ('[aliases]\nsora-2-pro = "wan"\n', "alias 'sora-2-pro' points to unknown model 'wan'"),
        ('[aliases]\ntiny-t2v = "tiny-t2v"\n', "alias 'tiny-t2v' has the name of a configured"),
        ("[models\n", "is not valid TOML"),
        ("[servers]\n", "unknown section(s) servers"),
    ],
)
def test_bad_configuration_fails_at_startup(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, toml)
    assert message in str(caught.value)


def test_alias_to_unknown_model_from_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="alias 'sora-2-pro' points to unknown model 'nope'"):
        registry_for(tmp_path, aliases={"sora-2-pro": "nope"})


def test_missing_models_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the models file"):
        load_models_file(tmp_path / "absent.toml")


def test_explicit_sora_alias_to_an_unavailable_model_is_honoured(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path,
        '[models.wan]\nbackend = "diffusers"\npath = "/nonexistent"\n'
        '[aliases]\nsora-2-pro = "wan"\n',
    )
    assert registry.warnings == []
    with pytest.raises(errors.ModelUnavailable, match="model 'sora-2-pro' is unavailable"):
        registry.resolve("sora-2-pro")


def test_extra_tiny_entry_and_tiny_options(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path,
        '[models."tiny-t2v"]\nbackend = "tiny"\nseed = 3\n'
        '[models.noise]\nbackend = "tiny"\ndevice = "cpu"\n',
    )
    tiny = registry.backend("tiny-t2v")
    noise = registry.backend("noise")
    assert isinstance(tiny, TinyBackend) and isinstance(noise, TinyBackend)
    assert tiny.seed == 3
    assert noise.path == tmp_path / "data" / "models" / "noise"
    assert registry.served_by("sora-2-pro") == "tiny-t2v"


def test_constructed_directly(tmp_path: Path) -> None:
    registry = ModelRegistry(
        [ModelEntry("tiny-t2v", "tiny", str(tmp_path / "tiny"), {})],
        {"sora-2-pro": "tiny-t2v"},
    )
    assert registry.resolve("sora-2-pro").served_by == "tiny-t2v"
    with pytest.raises(ValueError, match="built-in model 'tiny-t2v' is missing"):
        ModelRegistry([])


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_steps", 0), ("price_per_step_second", -1), ("max_job_seconds", 0), ("max_steps", 2.5)],
)
def test_compute_limit_options_are_checked(tmp_path: Path, option: str, value: object) -> None:
    from videoserve.models.registry import ModelEntry, ModelRegistry

    entry = ModelEntry("capped", "tiny", str(tmp_path), {option: value})
    with pytest.raises(ValueError, match=f"model 'capped': {option} must be"):
        ModelRegistry([ModelEntry("tiny-t2v", "tiny", "t"), entry], {}).backend("capped")


def test_backend_factories_are_a_public_parameter(tmp_path: Path) -> None:
    built: list[str] = []

    def noise(spec: BackendSpec) -> TinyBackend:
        built.append(spec.entry.name)
        return TinyBackend(Path(str(spec.entry.path)), name=spec.entry.name)

    registry = ModelRegistry(
        [
            ModelEntry("tiny-t2v", "tiny", str(tmp_path / "tiny"), {}),
            ModelEntry("static", "noise", str(tmp_path / "static"), {"price_per_second": 3}),
        ],
        {"sora-2-pro": "tiny-t2v"},
        factories={"noise": noise},
    )
    assert isinstance(registry.backend("static"), TinyBackend) and built == ["static"]
    assert registry.price_per_second("static") == 3.0  # parsed like every kind's price
    with pytest.raises(ValueError, match=r"unknown backend 'comfy' \(expected one of: diffusers"):
        ModelRegistry(
            [ModelEntry("tiny-t2v", "tiny", "t"), ModelEntry("x", "comfy", "m")],
            factories={"noise": noise},
        )
    with pytest.raises(ValueError, match="model 'static': price_per_second must be a number >= 0"):
        ModelRegistry(
            [
                ModelEntry("tiny-t2v", "tiny", "t"),
                ModelEntry("static", "noise", "m", {"price_per_second": -1}),
            ],
            factories={"noise": noise},
        )
