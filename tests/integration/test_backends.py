"""The tiny model end to end: built in code, saved, loaded through the real-weights loader.

No network: the pipeline is built from small configs with random weights into a temporary
folder, then loaded with `from_pretrained(..., local_files_only=True)` like downloaded weights.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videoserve import errors
from videoserve.models.backends.base import Cancelled, GeneratedVideo, GenerationInputs
from videoserve.models.backends.tiny import TinyBackend, build_tiny_pipeline, publish
from videoserve.models.backends.wan import WanBackend
from videoserve.models.grid import TINY_GRID, WAN21_GRID
from videoserve.models.params import DiffusersParams, VideoParams


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread here: the tiny model gains nothing from more.

    On a busy 2-core machine, OpenMP threads spin against other processes: ten times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "tiny-t2v"
    build_tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder: Path) -> TinyBackend:
    backend = TinyBackend(tiny_folder)
    backend.load()
    return backend


def run(
    backend: WanBackend,
    params: VideoParams,
    image: Image.Image | None = None,
    stop_after: int | None = None,
) -> tuple[GeneratedVideo, list[tuple[int, int]]]:
    progress: list[tuple[int, int]] = []

    def should_stop() -> bool:
        return stop_after is not None and len(progress) >= stop_after

    video = backend.generate(
        params, GenerationInputs(image=image), lambda s, t: progress.append((s, t)), should_stop
    )
    return video, progress


def test_tiny_builds_on_first_load(tmp_path: Path) -> None:
    backend = TinyBackend(tmp_path / "models" / "tiny-t2v")
    assert backend.availability().available  # before anything exists
    backend.load()
    assert (tmp_path / "models" / "tiny-t2v" / "model_index.json").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-t2v"]  # no staging left
    pipe = backend._t2v
    backend.load()  # idempotent
    assert backend._t2v is pipe


def test_generate_4s_1280x720(tiny: TinyBackend) -> None:
    video, progress = run(tiny, VideoParams(prompt="a cat in a forest", duration=4))
    assert video.frames.shape == (32, 90, 160, 3)
    assert video.frames.dtype == np.uint8
    assert (video.fps, video.model) == (8.0, "tiny-t2v")
    assert isinstance(video.seed, int)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("size", "shape"),
    [("720x1280", (32, 160, 90, 3)), ("1792x1024", (32, 128, 224, 3))],
)
def test_other_sizes(tiny: TinyBackend, size: str, shape: tuple[int, ...]) -> None:
    params = DiffusersParams(prompt="a dog", duration=4, size=size, num_inference_steps=1)
    assert run(tiny, params)[0].frames.shape == shape


def test_steps_from_params(tiny: TinyBackend) -> None:
    params = DiffusersParams(prompt="a dog", duration=4, num_inference_steps=2)
    assert run(tiny, params)[1] == [(1, 2), (2, 2)]


def test_seed_reproduces_frames(tiny: TinyBackend) -> None:
    first = run(tiny, DiffusersParams(prompt="sunset", duration=4, seed=7))[0]
    again = run(tiny, DiffusersParams(prompt="sunset", duration=4, seed=7))[0]
    other = run(tiny, DiffusersParams(prompt="sunset", duration=4, seed=8))[0]
    assert first.seed == 7
    assert np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, other.frames)


def test_random_seed_is_recorded_and_reproduces(tiny: TinyBackend) -> None:
    drawn = run(tiny, DiffusersParams(prompt="a tree", duration=4))[0]
    assert drawn.seed is not None
    replay = run(tiny, DiffusersParams(prompt="a tree", duration=4, seed=drawn.seed))[0]
    assert np.array_equal(drawn.frames, replay.frames)


def test_image_to_video(tiny: TinyBackend) -> None:
    params = DiffusersParams(prompt="a cat", duration=4, size="720x1280", seed=3)
    image = Image.new("RGB", (640, 480), (220, 30, 30))  # other aspect: cropped to fit
    with_image, progress = run(tiny, params, image)
    assert with_image.frames.shape == (32, 160, 90, 3)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    text_only = run(tiny, params)[0]
    assert not np.array_equal(with_image.frames, text_only.frames)
    # The image pipeline shares the text pipeline's weights instead of copying them.
    assert tiny._i2v.transformer is tiny._t2v.transformer
    assert tiny._i2v.vae is tiny._t2v.vae


def test_stop_before_the_first_step(tiny: TinyBackend) -> None:
    with pytest.raises(Cancelled):
        tiny.generate(
            VideoParams(prompt="a cat", duration=4),
            GenerationInputs(),
            lambda s, t: None,
            lambda: True,
        )


def test_stop_between_steps(tiny: TinyBackend) -> None:
    progress: list[tuple[int, int]] = []
    with pytest.raises(Cancelled):
        tiny.generate(
            VideoParams(prompt="a cat", duration=4),
            GenerationInputs(),
            lambda s, t: progress.append((s, t)),
            lambda: len(progress) >= 2,
        )
    assert progress == [(1, 4), (2, 4)]
    # The backend is usable again after a cancellation.
    assert run(tiny, DiffusersParams(prompt="a cat", duration=4, num_inference_steps=1))[1] == [
        (1, 1)
    ]


def test_wan_backend_loads_a_weights_folder_like_the_tiny_one(
    tiny: TinyBackend, tiny_folder: Path
) -> None:
    wan = WanBackend(
        "my-wan", tiny_folder, TINY_GRID, device="cpu", default_steps=4, default_guidance=5.0
    )
    assert wan.availability().available
    params = DiffusersParams(prompt="a druid", duration=4, seed=11)
    video, progress = run(wan, params)
    assert video.frames.shape == (32, 90, 160, 3)
    assert video.model == "my-wan"
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # Same folder, same loader, same seed: the same frames as the built-in model.
    assert np.array_equal(video.frames, run(tiny, params)[0].frames)
    image = Image.new("RGB", (160, 90), (0, 128, 255))
    assert run(wan, params, image)[0].frames.shape == (32, 90, 160, 3)
    with pytest.raises(Cancelled):
        run(wan, params, stop_after=1)
    wan.unload()
    assert not wan.loaded
    assert run(wan, DiffusersParams(prompt="a druid", duration=4, num_inference_steps=1))[
        0
    ].frames.shape == (32, 90, 160, 3)


def test_check_refuses_before_any_work(tiny: TinyBackend, tmp_path: Path) -> None:
    tiny.check(VideoParams(prompt="a cat", duration=12, input_reference="https://x.test/a.png"))
    text_only = tmp_path / "t2v"
    text_only.mkdir()
    (text_only / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    wan21 = WanBackend("wan21", text_only, WAN21_GRID)
    with pytest.raises(errors.InvalidRequest, match="duration: 8s is longer"):
        wan21.check(VideoParams(prompt="a cat"))
    with pytest.raises(errors.InvalidRequest, match="does not accept an input image"):
        wan21.check(VideoParams(prompt="a", duration=4, input_reference="https://x.test/a.png"))
    (text_only / "model_index.json").write_text('{"_class_name": "WanImageToVideoPipeline"}')
    with pytest.raises(errors.InvalidRequest, match="needs an input image"):
        wan21.check(VideoParams(prompt="a cat", duration=4))


def test_unavailable_folder_reason(tmp_path: Path) -> None:
    state = WanBackend("wan", tmp_path / "absent", TINY_GRID).availability()
    assert not state.available and str(tmp_path / "absent") in (state.reason or "")


def test_build_is_deterministic_and_keeps_an_existing_folder(
    tiny_folder: Path, tmp_path: Path
) -> None:
    weights = "transformer/diffusion_pytorch_model.safetensors"
    copy = tmp_path / "copy"
    build_tiny_pipeline(copy, seed=0)
    assert digest(copy / weights) == digest(tiny_folder / weights)
    before = digest(copy / weights)
    build_tiny_pipeline(copy, seed=1)  # already built: kept as is
    assert digest(copy / weights) == before


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    folder = tmp_path / "race" / "tiny-t2v"
    failures: list[BaseException] = []

    def build(seed: int) -> None:
        try:
            build_tiny_pipeline(folder, seed=seed)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=build, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert (folder / "model_index.json").exists()
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-t2v"]


def test_losing_the_race_keeps_the_winners_folder(tmp_path: Path) -> None:
    # Another process renamed its build into place between our check and our rename.
    winner, loser = tmp_path / "tiny-t2v", tmp_path / ".tiny-t2v.x.tmp"
    for folder, mark in ((winner, "winner"), (loser, "loser")):
        folder.mkdir()
        (folder / "model_index.json").write_text(mark)
    assert publish(loser, winner) is False
    assert (winner / "model_index.json").read_text() == "winner"
    half_built = tmp_path / "other"
    (half_built / "leftover").mkdir(parents=True)
    with pytest.raises(OSError):
        publish(loser, half_built)  # not a model: do not pretend it is


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
