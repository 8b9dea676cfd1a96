"""Durations over one pass: chained image-to-video passes, or a 400 where a model cannot.

Tiny random-weight pipelines (`videoserve.models.random_weights.TINY`) saved like downloaded
weights, on the tiny grid (an eighth of the size, 8 fps) with `max_frames = 13`, so a 4 s video
(32 frames) takes three passes: 13 + 13 + 9 frames, two of them dropped at the seams, one
trimmed. Driven over HTTP like a user's request; the backends directly for the other image-to-video
families (LTX-Video with `max_frames = 17`: its VAE needs 8k+1 frames, so 17 + 17).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, wait_until
from videoserve.media.probe import probe_mp4
from videoserve.models import families, random_weights
from videoserve.models.backends.base import Cancelled
from videoserve.models.options import DiffusersOptions
from videoserve.models.params import DiffusersParams

# name: (layout, pipeline class saved)
LAYOUTS = {
    "wan22-ti2v": ("wan2.2-ti2v", "WanPipeline"),
    "wan21": ("wan2.1", "WanPipeline"),
    "wan21-i2v": ("wan2.1-i2v", "WanImageToVideoPipeline"),
    "ltx": ("ltx", "LTXPipeline"),
}
OPTIONS = {"family": "tiny", "steps": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    for name, (layout, class_name) in LAYOUTS.items():
        pipe = random_weights.build_pipeline(random_weights.TINY[layout], seed=1)
        assert type(pipe).__name__ == class_name
        pipe.save_pretrained(root / name)
    return {name: root / name for name in LAYOUTS}


def models_toml(tmp_path: Path, weights: dict[str, Path], *names: str) -> Path:
    toml = tmp_path / "models.toml"
    toml.write_text(
        "".join(
            f'[models."{name}"]\nbackend = "diffusers"\npath = "{weights[name]}"\n'
            'family = "tiny"\nmax_frames = 13\nsteps = 1\n'
            for name in names
        )
    )
    return toml


def generate_over_http(
    server: LiveServer, model: str, body: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, Any], list[int], Path]:
    """Submit, watch progress until COMPLETED, download the MP4: (result, progress, mp4)."""
    headers = {"x-api-key": server.api_key}
    submitted = httpx.post(f"{server.url}/v2/{model}", json=body, headers=headers, timeout=30)
    assert submitted.status_code == 200, submitted.text
    seen: list[int] = []

    def finished() -> bool:
        state = httpx.get(submitted.json()["status_url"], headers=headers, timeout=10).json()
        assert state["status"] != "FAILED", state.get("error")
        if state.get("progress") is not None:
            seen.append(state["progress"])
        return state["status"] == "COMPLETED"

    wait_until(finished, timeout=120, interval=0.05)
    result = httpx.get(submitted.json()["response_url"], headers=headers, timeout=10).json()
    output = httpx.get(result["output"], timeout=30)
    assert output.status_code == 200
    mp4 = tmp_path / f"{result['request_id']}.mp4"
    mp4.write_bytes(output.content)
    return result, seen, mp4


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_a_long_video_is_chained_over_http(
    weights: dict[str, Path], make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=models_toml(tmp_path, weights, "wan22-ti2v"))
    body = {"prompt": "a cat walking", "duration": 4, "size": "1280x720", "seed": 5}
    result, progress, mp4 = generate_over_http(server, "wan22-ti2v", body, tmp_path)

    info = probe_mp4(mp4)
    assert (info.width, info.height, info.fps, info.frames) == (160, 90, 8.0, 32)
    assert info.seconds == pytest.approx(4.0, abs=0.01)
    assert (result["frames"], result["seconds"], result["seed"]) == (32, 4.0, 5)
    assert result["segments"] == 3
    assert progress == sorted(progress) and progress[-1] == 100

    # The same seed, the same video: up to float rounding, since the worker's threads may run
    # torch with another thread count than this one (exact equality: the backend test below).
    again, _, mp4_again = generate_over_http(server, "wan22-ti2v", body, tmp_path)
    assert again["segments"] == 3
    difference = np.abs(decoded(mp4).astype(int) - decoded(mp4_again).astype(int))
    assert difference.mean() < 2.0


def test_a_text_only_model_refuses_over_one_pass(
    weights: dict[str, Path], make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=models_toml(tmp_path, weights, "wan21"))
    refused = httpx.post(
        f"{server.url}/v2/wan21",
        json={"prompt": "a cat", "duration": 4},
        headers={"x-api-key": server.api_key},
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "duration: 4s is longer than this model generates in one pass (max 1.6s at 8 fps)"
    )


# --- the backends directly: every image-to-video family, progress, cancellation -------------
def run(
    name: str,
    weights: dict[str, Path],
    image: Image.Image | None,
    stop_after: int = 0,
    seed: int = 2,
    max_frames: int = 13,
) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
    options = {**OPTIONS, "max_frames": max_frames}
    backend = families.create_backend(name, str(weights[name]), DiffusersOptions(**options), "cpu")
    progress: list[tuple[int, int]] = []
    # Two steps: LTX's scheduler cannot stretch a one-step schedule.
    params = DiffusersParams(
        prompt="a dog", duration=4, size="720x1280", seed=seed, num_inference_steps=2
    )
    video = backend.generate(
        params,
        image,
        lambda s, t: progress.append((s, t)),
        lambda: bool(stop_after) and len(progress) >= stop_after,
    )
    return video.frames, video.segments, progress


# LTX's VAE is 8x in time, so its passes must be 8k+1 frames on the tiny grid too: 17 + 17.
@pytest.mark.parametrize(("name", "max_frames", "passes"), [("wan21-i2v", 13, 3), ("ltx", 17, 2)])
def test_image_to_video_families_chain(
    name: str, max_frames: int, passes: int, weights: dict[str, Path]
) -> None:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    frames, segments, progress = run(name, weights, image, max_frames=max_frames)
    assert frames.shape == (32, 160, 90, 3) and segments == passes
    # Two steps a pass, one count over all passes.
    assert progress == [(s, 2 * passes) for s in range(1, 2 * passes + 1)]


def test_same_seed_same_chained_video(weights: dict[str, Path]) -> None:
    frames, segments, progress = run("wan22-ti2v", weights, None)
    assert frames.shape == (32, 160, 90, 3) and segments == 3
    assert [s for s, _ in progress] == list(range(1, 7))
    assert np.array_equal(frames, run("wan22-ti2v", weights, None)[0])
    assert not np.array_equal(frames, run("wan22-ti2v", weights, None, seed=3)[0])


def test_cancel_stops_in_a_later_pass(weights: dict[str, Path]) -> None:
    with pytest.raises(Cancelled):
        run("wan22-ti2v", weights, None, stop_after=3)  # in the second pass


def test_a_text_only_backend_refuses_when_generating(weights: dict[str, Path]) -> None:
    from videoserve import errors

    with pytest.raises(errors.InvalidRequest, match=r"max 1\.6s at 8 fps"):
        run("wan21", weights, None)
