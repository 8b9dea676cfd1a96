"""Every model family end to end: tiny random-weight pipelines built in code, saved as a folder,
configured like a user's downloaded weights, and driven over HTTP through a live server.

No network. Each layout (Wan 2.1 T2V, Wan 2.1 I2V, Wan 2.1 VACE, Wan 2.2 TI2V, LTX-Video,
LTX-Video's condition pipeline) is built from toy configs
(`videoserve.models.random_weights.TINY`), saved with `save_pretrained`, and named in a models
TOML by its folder alone: the family is read from `model_index.json`. Toy weights at real sizes
would take minutes on a CPU, so the entries say `family = "tiny"` (an eighth of the requested
size, 8 fps): the grid the test checks the MP4 against; the real grids are checked in
tests/unit/test_model_families.py. LTX-2 (with sound) has its own module, test_ltx2.py.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, wait_until
from videoserve.models import families, random_weights
from videoserve.models.backends.base import Cancelled, GeneratedVideo, GenerationInputs
from videoserve.models.backends.diffusion import DiffusersBackend
from videoserve.models.backends.ltx import LTXBackend
from videoserve.models.backends.tiny import TinyBackend, build_tiny_pipeline
from videoserve.models.backends.wan import WanBackend
from videoserve.models.options import DiffusersOptions
from videoserve.models.params import DiffusersParams
from videoserve.models.pool import ModelPool

# name: (layout, pipeline class saved, backend, text-to-video, image-to-video)
MODELS: dict[str, tuple[str, str, type[DiffusersBackend], bool, bool]] = {
    "wan21": ("wan2.1", "WanPipeline", WanBackend, True, False),
    "wan21-i2v": ("wan2.1-i2v", "WanImageToVideoPipeline", WanBackend, False, True),
    "wan22-ti2v": ("wan2.2-ti2v", "WanPipeline", WanBackend, True, True),
    "wan21-vace": ("wan2.1-vace", "WanVACEPipeline", WanBackend, True, True),
    "ltx": ("ltx", "LTXPipeline", LTXBackend, True, True),
    "ltx-condition": ("ltx", "LTXConditionPipeline", LTXBackend, True, True),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every layout, saved once per module like a downloaded diffusers folder."""
    root = tmp_path_factory.mktemp("weights")
    folders = {}
    for name, (layout, class_name, *_) in MODELS.items():
        pipe = random_weights.build_pipeline(random_weights.TINY[layout], seed=1)
        if class_name == "LTXConditionPipeline":
            from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline

            # LTX-Video 0.9.5+ ships a scheduler without dynamic shifting.
            parts = {**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler()}
            pipe = LTXConditionPipeline(**parts)
        assert type(pipe).__name__ == class_name
        pipe.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def models_toml(tmp_path: Path, weights: dict[str, Path], *names: str) -> Path:
    toml = tmp_path / "models.toml"
    toml.write_text(
        "".join(
            f'[models."{name}"]\nbackend = "diffusers"\npath = "{weights[name]}"\n'
            'family = "tiny"\nsteps = 2\n'
            for name in names
        )
    )
    return toml


def png_data_uri(width: int = 64, height: int = 48) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def probe(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
            "frames": frames,
        }


def generate_over_http(server: LiveServer, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submit, poll until COMPLETED, download the MP4; the result with the MP4's facts."""
    headers = {"x-api-key": server.api_key}
    submitted = httpx.post(f"{server.url}/v2/{model}", json=body, headers=headers, timeout=30)
    assert submitted.status_code == 200, submitted.text

    def finished() -> dict[str, Any] | None:
        status = httpx.get(submitted.json()["status_url"], headers=headers, timeout=10)
        state = status.json()
        assert state["status"] != "FAILED", state.get("error")
        return state if state["status"] == "COMPLETED" else None

    wait_until(finished, timeout=120, interval=0.1)
    result = httpx.get(submitted.json()["response_url"], headers=headers, timeout=10).json()
    output = httpx.get(result["output"], timeout=30)  # a signed URL: no key
    assert output.status_code == 200 and output.headers["content-type"] == "video/mp4"
    return {**result, "mp4": probe(output.content)}


@pytest.mark.parametrize("name", MODELS)
def test_family_end_to_end_over_http(
    name: str, weights: dict[str, Path], make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    *_, text, image = MODELS[name]
    server = make_server(models=models_toml(tmp_path, weights, name))
    listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert listed[name]["available"] is True, listed[name]["reason"]
    headers = {"x-api-key": server.api_key}

    t2v = {"prompt": "a cat walking in the forest", "duration": 4, "size": "1280x720", "seed": 5}
    i2v = {**t2v, "size": "720x1280", "input_reference": png_data_uri()}
    for body, works, shape in ((t2v, text, (160, 90)), (i2v, image, (90, 160))):
        if not works:
            refused = httpx.post(f"{server.url}/v2/{name}", json=body, headers=headers)
            assert refused.status_code == 400
            assert "input image" in refused.json()["error"]
            continue
        result = generate_over_http(server, name, body)
        # The tiny grid: an eighth of the requested size, 8 fps, exactly duration * fps frames.
        assert (result["mp4"]["width"], result["mp4"]["height"]) == shape
        assert (result["mp4"]["fps"], result["mp4"]["frames"]) == (8.0, 32)
        assert (result["served_by"], result["seed"]) == (name, 5)


# --- the backends directly: parameters, seeds, progress, cancellation ------------------------
def backend_for(weights: dict[str, Path], name: str) -> DiffusersBackend:
    backend = families.create_backend(
        name, str(weights[name]), DiffusersOptions(family="tiny"), "cpu"
    )
    assert type(backend) is MODELS[name][2]
    return backend


def run(
    backend: DiffusersBackend, image: Image.Image | None = None, **params: Any
) -> tuple[GeneratedVideo, list[tuple[int, int]]]:
    progress: list[tuple[int, int]] = []
    body = {"prompt": "a dog", "duration": 4, "num_inference_steps": 2, **params}
    video = backend.generate(
        DiffusersParams(**body),
        GenerationInputs(image=image),
        lambda s, t: progress.append((s, t)),
        lambda: False,
    )
    return video, progress


@pytest.mark.parametrize("name", ["wan21", "wan22-ti2v", "ltx"])
def test_same_seed_same_video_and_every_parameter_counts(
    weights: dict[str, Path], name: str
) -> None:
    backend = backend_for(weights, name)
    first, progress = run(backend, seed=3, guidance_scale=4.0)
    assert progress == [(1, 2), (2, 2)]
    assert first.frames.shape == (32, 90, 160, 3) and first.fps == 8.0
    assert np.array_equal(first.frames, run(backend, seed=3, guidance_scale=4.0)[0].frames)
    for change in (
        {"seed": 4},
        {"guidance_scale": 7.0},
        {"negative_prompt": "blurry"},
        {"prompt": "a horse"},
    ):
        other = run(backend, **{"seed": 3, "guidance_scale": 4.0, **change})[0]
        assert not np.array_equal(first.frames, other.frames), change
    assert run(backend, seed=3, num_inference_steps=3)[1] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("name", ["ltx", "ltx-condition"])
def test_ltx_image_to_video_shares_the_weights(weights: dict[str, Path], name: str) -> None:
    backend = backend_for(weights, name)
    image = Image.new("RGB", (640, 480), (220, 30, 30))
    with_image = run(backend, image, seed=2, size="720x1280")[0]
    assert with_image.frames.shape == (32, 160, 90, 3)
    assert not np.array_equal(with_image.frames, run(backend, seed=2, size="720x1280")[0].frames)
    assert backend._i2v.transformer is backend._t2v.transformer
    assert backend._i2v.vae is backend._t2v.vae


def test_vace_takes_reference_images_and_a_first_frame(weights: dict[str, Path]) -> None:
    backend = backend_for(weights, "wan21-vace")
    able = backend.capabilities
    assert (able.text_to_video, able.image_to_video, able.reference_images) == (True,) * 3
    assert not backend_for(weights, "wan21").capabilities.reference_images
    params = DiffusersParams(prompt="a dog", duration=4, num_inference_steps=2, seed=2)
    picture = Image.new("RGB", (64, 48), (220, 30, 30))
    videos = [
        backend.generate(params, inputs, lambda s, t: None, lambda: False).frames
        for inputs in (
            GenerationInputs(),
            GenerationInputs(reference_images=(picture,)),
            GenerationInputs(image=picture),
        )
    ]
    for frames in videos:  # the reference frames are the pipeline's own: not delivered
        assert frames.shape == (32, 90, 160, 3)
    assert not np.array_equal(videos[0], videos[1])
    assert not np.array_equal(videos[0], videos[2])


def test_ltx_stops_between_steps_and_runs_again(weights: dict[str, Path]) -> None:
    backend = backend_for(weights, "ltx")
    progress: list[tuple[int, int]] = []
    with pytest.raises(Cancelled):
        backend.generate(
            DiffusersParams(prompt="a cat", duration=4, num_inference_steps=4),
            GenerationInputs(),
            lambda s, t: progress.append((s, t)),
            lambda: len(progress) >= 2,
        )
    assert progress == [(1, 4), (2, 4)]
    assert run(backend, seed=1)[1] == [(1, 2), (2, 2)]


def test_first_block_cache_runs(weights: dict[str, Path]) -> None:
    options = {"family": "tiny", "cache": "first_block", "cache_threshold": 0.5}
    backend = families.create_backend(
        "ltx", str(weights["ltx"]), DiffusersOptions(**options), "cpu"
    )
    video, progress = run(backend, seed=1, num_inference_steps=3)
    assert video.frames.shape == (32, 90, 160, 3) and len(progress) == 3
    assert np.array_equal(video.frames, run(backend, seed=1, num_inference_steps=3)[0].frames)


# --- the LRU of loaded models ----------------------------------------------------------------
def test_pool_keeps_two_tiny_models_warm(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-t2v"
    build_tiny_pipeline(folder)
    pool = ModelPool(max_loaded=2)
    first, second, third = (TinyBackend(folder, name=f"tiny-{i}") for i in range(3))
    for backend in (first, second, third):
        pool.track(backend)
        backend.load()
    assert not first.loaded and second.loaded and third.loaded
    assert pool.resident() == ["tiny-1", "tiny-2"]
    run(first)  # generating loads it again and makes room: the oldest (tiny-1) goes
    assert first.loaded and not second.loaded and third.loaded
    assert pool.resident() == ["tiny-2", "tiny-0"]


# (continues a video, edits a video) per layout: what each family's weights can do.
OPERATIONS: dict[str, tuple[bool, bool]] = {
    "wan21": (False, True),  # text only: no image-to-video to continue from
    "wan21-i2v": (True, False),
    "wan22-ti2v": (True, True),
    "wan21-vace": (True, False),
    "ltx": (True, False),
    "ltx-condition": (True, False),
}


@pytest.mark.parametrize("name", MODELS)
def test_extensions_and_edits_on_each_family(weights: dict[str, Path], name: str) -> None:
    """At tiny shapes, each layout extends and edits a source where its weights can, and
    otherwise refuses with the reason the API's 400 carries."""
    from videoserve.models.backends import continuation

    backend = backend_for(weights, name)
    extends, edits = OPERATIONS[name]
    able = backend.capabilities
    assert (able.extend or able.image_to_video, able.video_to_video) == (extends, edits)
    frames = np.random.default_rng(4).integers(0, 255, (16, 48, 64, 3), dtype=np.uint8)
    source = continuation.SourceVideo(frames, 8.0)
    params = DiffusersParams(prompt="a dog", duration=4, num_inference_steps=2, seed=3)

    def quiet(step: int, total: int) -> None:
        pass

    if extends:
        assert continuation.extend_refusal(backend) is None
        video = continuation.extend(backend, params, source, quiet, lambda: False)
        assert video.frames.shape == (16 + 32, 48, 64, 3)  # the source, then 4 s at 8 fps
        assert np.array_equal(video.frames[:16], frames)  # the source's own frames first
    else:
        assert f"model '{name}' cannot continue a video" in str(
            continuation.extend_refusal(backend)
        )
    if edits:
        assert continuation.edit_refusal(backend) is None
        video = continuation.edit(backend, params, source, 0.6, quiet, lambda: False)
        assert video.frames.shape == (16, 48, 64, 3)  # same duration and size
        assert not np.array_equal(video.frames, frames)
    else:
        assert f"model '{name}' has no video-to-video pipeline" in str(
            continuation.edit_refusal(backend)
        )


class PreviewSink:
    """A preview sink, as the worker's: every step; frames kept as offered."""

    every, seconds = 1, 0.0

    def __init__(self) -> None:
        self.offered: list[tuple[int, int, np.ndarray]] = []

    def offer(self, step: int, total: int, frames: np.ndarray) -> None:
        self.offered.append((step, total, frames))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_family_previews_while_it_denoises(weights: dict[str, Path], name: str) -> None:
    """Wan's layouts and LTX's packed latents alike: after every step but the last, frames at
    the latent grid (LTX: unpacked by the pipeline's own `_unpack_latents`), projected by a
    fit from the model's own VAE, in [0, 1], and moving as the video forms (issue 25)."""
    backend = backend_for(weights, name)
    sink = PreviewSink()
    params = DiffusersParams(prompt="a cat", duration=4, num_inference_steps=3, seed=2)
    text_to_video = MODELS[name][3]
    image = None if text_to_video else Image.new("RGB", (160, 90), (200, 120, 40))
    inputs = GenerationInputs(image=image, preview=sink)
    backend.generate(params, inputs, lambda s, t: None, lambda: False)
    assert [(step, total) for step, total, _ in sink.offered] == [(1, 3), (2, 3)]
    first, last = sink.offered[0][2], sink.offered[-1][2]
    assert first.ndim == 4 and first.shape[-1] == 3 and first.shape == last.shape
    assert float(last.min()) >= 0.0 and float(last.max()) <= 1.0
    assert not np.array_equal(first, last)


def test_extensions_and_edits_preview_as_a_generation(weights: dict[str, Path]) -> None:
    """An extension is a generation from the source's last frame, an edit a video-to-video
    call through the same step loop: both previews reach the job's sink (issue 25)."""
    from videoserve.models.backends import continuation

    backend = backend_for(weights, "wan22-ti2v")
    frames = np.random.default_rng(4).integers(0, 255, (16, 90, 160, 3), dtype=np.uint8)
    source = continuation.SourceVideo(frames, 8.0)
    params = DiffusersParams(prompt="a cat", duration=4, num_inference_steps=3, seed=3)
    extended = PreviewSink()
    video = continuation.extend(
        backend, params, source, lambda s, t: None, lambda: False, preview=extended
    )
    assert [(step, total) for step, total, _ in extended.offered] == [(1, 3), (2, 3)]
    assert len(video.frames) == 16 + 32
    edited = PreviewSink()
    longer = DiffusersParams(prompt="a cat", duration=4, num_inference_steps=8, seed=3)
    video = continuation.edit(
        backend, longer, source, 0.6, lambda s, t: None, lambda: False, preview=edited
    )
    # strength 0.6 of 8 steps: the pipeline runs the last few of them, previews all but its last
    assert edited.offered and all(step < total for step, total, _ in edited.offered)
    assert edited.offered[0][2].ndim == 4 and len(video.frames) == 16
