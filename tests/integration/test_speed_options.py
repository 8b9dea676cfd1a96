"""The GPU speed options on a CPU host: what can run here runs through the real loader, and what
needs CUDA (or a package that is missing) is refused at startup with the reason."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from videoserve.models import families, speed
from videoserve.models.backends.diffusion import DiffusersBackend
from videoserve.models.backends.tiny import build_tiny_pipeline
from videoserve.models.options import DiffusersOptions
from videoserve.models.params import DiffusersParams
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speed") / "tiny"
    build_tiny_pipeline(path)
    return path


def registry_with(tmp_path: Path, folder: Path, options: str) -> ModelRegistry:
    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.fast]\nbackend = "diffusers"\npath = "{folder}"\nfamily = "tiny"\n'
        f'device = "cpu"\n{options}\n'
    )
    return ModelRegistry.from_settings(Settings(data_dir=tmp_path / "data", models=models))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('attention_backend = "warp"', "attention_backend must be one of flash, "),
        ('attention_backend = "flash"', "attention_backend 'flash' cannot run here: Flash"),
        ('attention_backend = "sage"', "Sage Attention backend 'sage' is not usable"),
        ('attention_backend = "_native_cudnn"', "'_native_cudnn' is a CUDA kernel and this entry"),
        ('quantize = "fp8"', "quantize = 'fp8' needs an NVIDIA GPU of compute capability 8.9"),
        ('quantize = "fp4"', "quantize must be one of fp8, fp8_weight_only, int8"),
        ('compile = "full"', 'compile must be "regional"'),
    ],
)
def test_unavailable_speed_options_are_refused_at_startup(
    tmp_path: Path, folder: Path, options: str, message: str
) -> None:
    with pytest.raises(ValueError, match="model 'fast'") as caught:
        registry_with(tmp_path, folder, options)
    assert message in str(caught.value)


def test_missing_torchao_is_refused_with_the_install_hint(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hides the installed torchao from the check (the one thing this host cannot uninstall).
    found = importlib.util.find_spec
    monkeypatch.setattr(
        speed.importlib.util, "find_spec", lambda name: None if name == "torchao" else found(name)
    )
    with pytest.raises(ValueError, match=r"needs torchao \(pip install torchao\)"):
        registry_with(tmp_path, folder, 'quantize = "int8_weight_only"')


def video(backend: DiffusersBackend) -> np.ndarray:
    params = DiffusersParams(prompt="a cat", duration=4, seed=3, num_inference_steps=2)
    return backend.generate(params, None, lambda step, total: None, lambda: False).frames


def backend_with(folder: Path, **options: object) -> DiffusersBackend:
    return families.create_backend(
        "fast", str(folder), DiffusersOptions(family="tiny", device="cpu", **options), "cpu"
    )


def test_cpu_capable_options_run_with_first_block_cache(folder: Path) -> None:
    plain = video(backend_with(folder))
    # PyTorch's SDPA through diffusers' dispatcher: the same attention, the same video.
    assert np.array_equal(video(backend_with(folder, attention_backend="native")), plain)
    # int8 weights: a lossy option, so the video differs, a little.
    quantized = video(backend_with(folder, quantize="int8_weight_only"))
    assert not np.array_equal(quantized, plain)
    assert np.abs(quantized.astype(int) - plain).mean() < 8
    # All of it together with First Block Cache keeps working.
    combined = backend_with(
        folder, attention_backend="native", quantize="int8_weight_only", cache="first_block"
    )
    assert video(combined).shape == plain.shape


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="inductor needs a C++ compiler",
)
def test_regional_compile_warms_up_at_load_and_keeps_the_video(folder: Path) -> None:
    plain = video(backend_with(folder))
    compiled = backend_with(folder, compile="regional")
    compiled.load()  # compiles and warms up here (at 64x64, 5 frames), not in the first job
    frames = video(compiled)  # 160x90, 33 frames: other shapes, the same compiled blocks
    assert frames.shape == plain.shape
    assert np.abs(frames.astype(int) - plain).max() <= 2  # float rounding, nothing more
