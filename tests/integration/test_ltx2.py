"""LTX-2 end to end: video with sound from a tiny random-weight folder, over HTTP, both databases.

The folder is built in code (`videoserve.models.random_weights_ltx2`: the real checkpoint's
compression ratios, patch sizes and positional ranges at toy widths), saved with
`save_pretrained` once per module and named in a models TOML by its folder alone. Its entry says
`family = "tiny"` (an eighth of the requested size, 8 fps) with `max_frames = 33`, so one pass
holds 4 s and an 8 s request is chained: two passes whose sound is joined at the seam. Every
MP4 is read back with PyAV: its streams, their codecs and durations are the facts the tests
check.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from segmind import SegmindClient

from tests.conftest import LiveServer
from tests.integration.test_families import generate_over_http, png_data_uri
from videoserve.models import families, random_weights_ltx2
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.options import DiffusersOptions
from videoserve.models.params import AudioDiffusersParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FPS = 8  # the tiny grid
FRAME = 1 / FPS


@pytest.fixture(scope="module")
def ltx2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "ltx2"
    random_weights_ltx2.build_pipeline(seed=1).save_pretrained(folder)
    return folder


def models_toml(tmp_path: Path, folder: Path) -> Path:
    toml = tmp_path / "models.toml"
    toml.write_text(
        f'[models.ltx2]\nbackend = "diffusers"\npath = "{folder}"\n'
        'family = "tiny"\nsteps = 2\nmax_frames = 33\n'
    )
    return toml


def streams(mp4: bytes) -> list[dict[str, Any]]:
    """Every stream of an MP4: kind, codec, duration in seconds (and frames or sample rate)."""
    with av.open(io.BytesIO(mp4)) as container:
        found = []
        for stream in container.streams:
            fact = {
                "type": stream.type,
                "codec": stream.codec_context.name,
                "seconds": float(stream.duration * stream.time_base),
            }
            if stream.type == "video":
                fact["frames"] = sum(1 for _ in container.decode(stream))
                container.seek(0)
            else:
                fact["sample_rate"] = stream.codec_context.sample_rate
            found.append(fact)
        return found


def assert_in_sync_with_sound(mp4: bytes, seconds: float, frames: int) -> None:
    video, audio = streams(mp4)  # exactly two streams
    assert (video["type"], video["codec"], video["frames"]) == ("video", "h264", frames)
    assert (audio["type"], audio["codec"], audio["sample_rate"]) == ("audio", "aac", 24000)
    assert abs(video["seconds"] - seconds) < FRAME
    assert abs(audio["seconds"] - seconds) < FRAME


def download(server: LiveServer, result: dict[str, Any]) -> bytes:
    return httpx.get(result["output"], timeout=30).content


def test_ltx2_text_and_image_to_video_with_sound_over_http(
    ltx2_folder: Path, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=models_toml(tmp_path, ltx2_folder))
    listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    model = listed["ltx2"]
    assert model["available"] is True, model["reason"]
    assert (model["text_to_video"], model["image_to_video"], model["audio"]) == (True,) * 3
    assert model["durations"] == [4, 8, 12]  # over one pass of 33 frames: chained
    assert model["parameters"]["properties"]["audio"]["default"] is True

    t2v = {"prompt": "a cat walking in the forest", "duration": 4, "size": "1280x720", "seed": 5}
    i2v = {**t2v, "size": "720x1280", "input_reference": png_data_uri()}
    for body, shape in ((t2v, (160, 90)), (i2v, (90, 160))):
        result = generate_over_http(server, "ltx2", body)
        assert (result["mp4"]["width"], result["mp4"]["height"]) == shape
        assert (result["frames"], result["seconds"], result["served_by"]) == (32, 4.0, "ltx2")
        assert (result["has_audio"], result["audio_sample_rate"], result["audio_codec"]) == (
            True,
            24000,
            "aac",
        )
        assert_in_sync_with_sound(download(server, result), 4.0, 32)

    silent = generate_over_http(server, "ltx2", {**t2v, "audio": False})
    assert (silent["has_audio"], silent["audio_sample_rate"], silent["audio_codec"]) == (
        False,
        None,
        None,
    )
    assert [s["type"] for s in streams(download(server, silent))] == ["video"]


def test_ltx2_over_one_pass_chains_with_the_sound_joined(
    ltx2_folder: Path, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=models_toml(tmp_path, ltx2_folder))
    headers = {"x-api-key": server.api_key}
    body = {"prompt": "a dog", "duration": 8, "seed": 2}
    bad = httpx.post(f"{server.url}/v2/ltx2", json={**body, "audio": "yes"}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"] == "audio: must be true or false (got 'yes')"

    # 8 s at 8 fps = 64 frames; one pass holds 33: two passes of 33, one frame overlapping.
    chained = generate_over_http(server, "ltx2", body)
    assert (chained["segments"], chained["frames"], chained["has_audio"]) == (2, 64, True)
    assert_in_sync_with_sound(download(server, chained), 8.0, 64)

    silent = generate_over_http(server, "ltx2", {**body, "audio": False})
    assert (silent["segments"], silent["has_audio"]) == (2, False)
    [video] = streams(download(server, silent))
    assert video["frames"] == 64 and abs(video["seconds"] - 8.0) < FRAME


def test_sdks_download_a_video_with_sound(
    ltx2_folder: Path, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    # No alias: sora-2-pro picks the configured model that makes sound.
    server = make_server(models=models_toml(tmp_path, ltx2_folder), aliases={})
    segmind = SegmindClient(api_key=server.api_key, base_url=f"{server.url}/v1")
    response = segmind.run_sync("ltx2", prompt="a bird flying", duration=4, seed=3)
    assert_in_sync_with_sound(response.content, 4.0, 32)

    client = openai.OpenAI(api_key=server.api_key, base_url=f"{server.url}/v1", max_retries=0)
    created = client.videos.create(prompt="a horse running", seconds="4")
    video = client.videos.poll(created.id, poll_interval_ms=50)
    assert video.status == "completed" and video.model == "sora-2-pro"
    extras = video.model_extra or {}
    assert (extras["has_audio"], extras["audio_sample_rate"], extras["audio_codec"]) == (
        True,
        24000,
        "aac",
    )
    assert_in_sync_with_sound(client.videos.download_content(video.id).content, 4.0, 32)
    result = httpx.get(
        f"{server.url}/v2/requests/{video.id}", headers={"x-api-key": server.api_key}
    ).json()
    assert result["served_by"] == "ltx2"  # says which model served the request


def test_two_stage_with_the_latent_upsampler(ltx2_folder: Path, tmp_path: Path) -> None:
    upsampler = tmp_path / "upsampler"
    random_weights_ltx2.build_upsampler(seed=1).save_pretrained(upsampler / "latent_upsampler")
    options = DiffusersOptions(family="tiny", upsampler=str(upsampler))
    families.check_entry("ltx2", str(ltx2_folder), options, "cpu")
    backend = families.create_backend("ltx2", str(ltx2_folder), options, "cpu")
    params = AudioDiffusersParams(prompt="a cat", duration=4, num_inference_steps=2, seed=1)
    video = backend.generate(params, GenerationInputs(), lambda s, t: None, lambda: False)
    assert backend._upsample is not None  # the second stage ran over the same VAE
    assert backend._upsample.vae is backend._t2v.vae
    # Denoised at 96x64 (half of 160x96, on the 32 grid), upsampled 2x, fitted to 160x90.
    assert video.frames.shape == (32, 90, 160, 3)
    assert video.audio is not None and video.audio_sample_rate == 24000


def test_previews_of_its_packed_video_latents(ltx2_folder: Path) -> None:
    """LTX-2's video latents are packed into tokens: unpacked by the pipeline's own
    `_unpack_latents` and projected by a fit from its own VAE, after every step but the last
    (issue 25). The sound's latents are not previewed."""
    from tests.integration.test_families import PreviewSink

    options = DiffusersOptions(family="tiny")
    backend = families.create_backend("ltx2", str(ltx2_folder), options, "cpu")
    sink = PreviewSink()
    params = AudioDiffusersParams(prompt="a cat", duration=4, num_inference_steps=3, seed=1)
    video = backend.generate(
        params, GenerationInputs(preview=sink), lambda s, t: None, lambda: False
    )
    assert [(step, total) for step, total, _ in sink.offered] == [(1, 3), (2, 3)]
    frames = sink.offered[-1][2]
    assert frames.ndim == 4 and frames.shape[-1] == 3
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    assert video.audio is not None  # the sound is made as before
