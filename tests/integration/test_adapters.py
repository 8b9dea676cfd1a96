"""LoRA adapter entries over one shared base: real LoRA files made with peft on the tiny Wan
transformer, saved with `WanPipeline.save_lora_weights`, loaded through the real registry."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, wait_until
from videoserve.models.backends.adapters import AdapterBackend
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.backends.tiny import build_tiny_pipeline
from videoserve.models.params import DiffusersParams
from videoserve.models.random_weights import save_random_lora
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base and two LoRAs of it (folders in diffusers' format), built once."""
    from diffusers import WanPipeline

    root = tmp_path_factory.mktemp("adapters")
    build_tiny_pipeline(root / "base")
    pipe = WanPipeline.from_pretrained(root / "base", local_files_only=True)
    save_random_lora(pipe, root / "style", seed=1)
    save_random_lora(pipe, root / "other", seed=2)
    return {"base": root / "base", "style": root / "style", "other": root / "other"}


def models_file(tmp_path: Path, weights: dict[str, Path], extra: str = "") -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[models.base]\nbackend = "tiny"\npath = "{weights["base"]}"\n'
        f'[models.styled]\nbackend = "diffusers"\nbase = "base"\n'
        f'loras = [{{ path = "{weights["style"]}", scale = 1.0 }}]\nsteps = 3\n'
        f'[models.off]\nbackend = "diffusers"\nbase = "base"\n'
        f'loras = [{{ path = "{weights["style"]}", scale = 0.0 }}]\n'
        f'[models.other]\nbackend = "diffusers"\nbase = "base"\n'
        f'loras = [{{ path = "{weights["other"] / "pytorch_lora_weights.safetensors"}" }}]\n'
        + extra
    )
    return path


def registry_for(tmp_path: Path, weights: dict[str, Path], extra: str = "") -> ModelRegistry:
    settings = Settings(data_dir=tmp_path / "data", models=models_file(tmp_path, weights, extra))
    return ModelRegistry.from_settings(settings)


def frames(registry: ModelRegistry, name: str, **params: object) -> np.ndarray:
    values = {"prompt": "a cat", "duration": 4, "seed": 7, "num_inference_steps": 2, **params}
    video = registry.backend(name).generate(
        DiffusersParams(**values), GenerationInputs(), lambda step, total: None, lambda: False
    )
    assert video.model == name
    return video.frames


def test_adapters_share_the_base_and_never_leak(tmp_path: Path, weights: dict[str, Path]) -> None:
    registry = registry_for(tmp_path, weights)
    base, styled = registry.backend("base"), registry.backend("styled")
    assert isinstance(styled, AdapterBackend) and styled.base is base

    before = frames(registry, "base")
    with_style = frames(registry, "styled")
    assert not np.array_equal(with_style, before)  # the adapter changes the output
    assert np.array_equal(frames(registry, "off"), before)  # scale 0: the base's output
    with_other = frames(registry, "other")
    assert not np.array_equal(with_other, with_style) and not np.array_equal(with_other, before)
    # The same seed on the base alone, after LoRA jobs ran on it: the same video as before.
    assert np.array_equal(frames(registry, "base"), before)
    assert np.array_equal(frames(registry, "styled"), with_style)  # not mixed with "other"
    # One pipeline in memory for all four entries.
    assert registry._pool.resident() == ["base"]


def test_adapter_defaults_and_catalog(tmp_path: Path, weights: dict[str, Path]) -> None:
    registry = registry_for(tmp_path, weights)
    styled = registry.backend("styled")
    assert isinstance(styled, AdapterBackend)
    assert (styled.profile.steps, styled.profile.guidance) == (3, 5.0)  # own steps, base guidance
    listed = {m["id"]: m for m in registry.describe()}
    assert listed["styled"]["base"] == "base"
    assert listed["styled"]["adapters"] == [{"path": str(weights["style"]), "scale": 1.0}]
    assert (listed["base"]["base"], listed["base"]["adapters"]) == (None, [])
    assert listed["styled"]["available"] is True
    # An adapter entry over the tiny model is no stand-in for the seed's model.
    assert registry.served_by("sora-2-pro") == "tiny-t2v"


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A safetensors file of zeros with these tensors (the header is what startup reads)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))
    return path


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ("missing", "LoRA {missing}: no such file or folder"),
        ("full", "holds no LoRA tensors"),
        ("narrow", "'blocks.0.attn1.to_q' is 24x7 in the LoRA but 24x24 in the base"),
        ("alien", "adapts 'decoder.conv_in', which the base's transformer does not have"),
        ("empty_folder", "the folder holds no .safetensors file"),
    ],
)
def test_bad_lora_fails_at_startup_naming_the_file(
    tmp_path: Path, weights: dict[str, Path], lora: str, message: str
) -> None:
    a, b = "transformer.blocks.0.attn1.to_q.lora_A.weight", "transformer.blocks.0.attn1.to_q"
    files = {
        "missing": tmp_path / "nope.safetensors",
        "full": weights["base"] / "transformer" / "diffusion_pytorch_model.safetensors",
        "narrow": write_safetensors(
            tmp_path / "narrow.safetensors", {a: [4, 7], f"{b}.lora_B.weight": [24, 4]}
        ),
        "alien": write_safetensors(
            tmp_path / "alien.safetensors",
            {"transformer.decoder.conv_in.lora_A.weight": [4, 24]},
        ),
        "empty_folder": tmp_path / "empty",
    }
    (tmp_path / "empty").mkdir()
    extra = (
        '[models.bad]\nbackend = "diffusers"\nbase = "base"\n'
        f'loras = [{{ path = "{files[lora]}" }}]\n'
    )
    with pytest.raises(ValueError) as caught:
        registry_for(tmp_path, weights, extra)
    text = str(caught.value)
    assert text.startswith("model 'bad': ") and message.format(missing=files["missing"]) in text
    if lora != "missing":
        assert str(files[lora]) in text


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('base = "nope"\nloras = [{ path = "x" }]', "base 'nope' is not a configured model"),
        ('base = "styled"\nloras = [{ path = "x" }]', "base 'styled' is itself an adapter"),
        ('path = "/m"\nbase = "base"\nloras = [{ path = "x" }]', "give path (its own weights)"),
        ('base = "base"', "base needs loras"),
        ('path = "/m"\nloras = [{ path = "x" }]', 'loras need base = "<entry>"'),
        ('base = "base"\nloras = [{ path = "x", scale = "1" }]', "loras[0].scale must be"),
        ('base = "base"\nloras = [{ path = "x", weight = 1 }]', "loras[0].weight: unknown key"),
        ('base = "base"\nloras = [{ path = "x" }]\ndtype = "bf16"', "dtype belong(s) to the base"),
    ],
)
def test_bad_adapter_entry_fails_at_startup(
    tmp_path: Path, weights: dict[str, Path], table: str, message: str
) -> None:
    with pytest.raises(ValueError, match="model 'bad'") as caught:
        registry_for(tmp_path, weights, f'[models.bad]\nbackend = "diffusers"\n{table}\n')
    assert message in str(caught.value)


def test_loras_over_a_base_without_a_lora_loader_fail_at_startup(tmp_path: Path) -> None:
    from videoserve.models import random_weights_hunyuan15

    folder = tmp_path / "hunyuan"
    random_weights_hunyuan15.build_pipeline(seed=1).save_pretrained(folder)
    lora = write_safetensors(tmp_path / "l.safetensors", {"transformer.x.lora_A.weight": [4, 8]})
    (tmp_path / "models.toml").write_text(
        f'[models.hy]\nbackend = "diffusers"\npath = "{folder}"\nfamily = "tiny"\n'
        f'[models.styled]\nbackend = "diffusers"\nbase = "hy"\nloras = [{{ path = "{lora}" }}]\n'
    )
    settings = Settings(data_dir=tmp_path / "data", models=tmp_path / "models.toml")
    with pytest.raises(ValueError) as caught:
        ModelRegistry.from_settings(settings)
    assert str(caught.value) == (
        "model 'styled': base 'hy' takes no LoRA adapters (HunyuanVideo15Pipeline has no LoRA "
        "loader in diffusers)"
    )


def test_lora_repo_not_in_the_cache_is_unavailable(
    tmp_path: Path, weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    extra = '[models.hub]\nbackend = "diffusers"\nbase = "base"\nloras = [{ path = "acme/lora" }]\n'
    registry = registry_for(tmp_path, weights, extra)
    state = registry.backend("hub").availability()
    assert not state.available and "acme/lora is not a file or folder here" in str(state.reason)


def test_adapter_entry_over_http(
    make_server: Callable[..., LiveServer], tmp_path: Path, weights: dict[str, Path]
) -> None:
    server = make_server(models=models_file(tmp_path, weights))
    headers = {"x-api-key": server.api_key}
    listed = httpx.get(f"{server.url}/v1/models", headers=headers).json()["data"]
    styled = next(m for m in listed if m["id"] == "styled")
    assert styled["base"] == "base" and styled["adapters"][0]["scale"] == 1.0

    def run(model: str) -> dict:
        body = {"prompt": "a cat", "duration": 4, "seed": 5, "num_inference_steps": 2}
        submitted = httpx.post(f"{server.url}/v2/{model}", json=body, headers=headers)
        assert submitted.status_code == 200, submitted.text
        status_url = submitted.json()["status_url"]
        wait_until(
            lambda: httpx.get(status_url, headers=headers).json()["status"] == "COMPLETED",
            timeout=120,
        )
        return httpx.get(submitted.json()["response_url"], headers=headers).json()

    result = run("styled")
    assert result["status"] == "COMPLETED" and result["served_by"] == "styled"
    video = httpx.get(result["output"])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"


def test_an_adapter_entry_can_what_its_base_can(tmp_path: Path, weights: dict[str, Path]) -> None:
    registry = registry_for(tmp_path, weights)
    base, styled = registry.backend("base"), registry.backend("styled")
    assert styled.capabilities == base.capabilities
    listed = {entry["id"]: entry for entry in registry.describe()}
    for ability in ("text_to_video", "image_to_video", "audio", "durations"):
        assert listed["styled"][ability] == listed["base"][ability]
