"""The seams of extensions and edits: sound across an extension's seam, LTX-2's continuation by
frame conditioning, edits over one pass, and LTX-2's `audio: false` skipping the audio decode.

Through the public interface where the fact is visible there (the official `openai` SDK and
the Segmind-style HTTP API against a live server, both databases; every download decoded with
PyAV: its streams, their durations, the loudness of each part). Where the fact lives inside
the model (which frames condition a pass, whether the vocoder ran) the test holds the real
backend: the live server's own (a forward hook on the real module) or one built the way the
registry builds it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest

from tests.conftest import LiveServer
from tests.integration.test_families import generate_over_http
from videoserve import errors
from videoserve.media.encode import encode_mp4
from videoserve.models import families, random_weights, random_weights_ltx2
from videoserve.models import grid as grids
from videoserve.models.backends import continuation
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.options import DiffusersOptions
from videoserve.models.params import AudioDiffusersParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

PROMPT = "A lighthouse on a cliff at dusk"
FPS = 8  # the tiny grid's, and the clips'
FRAME = 1 / FPS
RATE = 48_000  # the clips' sound: not the 24 kHz LTX-2 makes, so a join must resample


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    """A stereo 440 Hz sine at half scale: loud enough to tell from silence after AAC."""
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([wave, wave])


def clip(tmp_path: Path, *, frames: int = 16, sound: bool = True, seed: int = 3) -> bytes:
    """A real H.264 MP4 of 64x48 noise at 8 fps, with an AAC tone over all of it."""
    video = np.random.default_rng(seed).integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8)
    path = tmp_path / f"clip-{frames}-{sound}-{seed}.mp4"
    audio = tone(frames / FPS) if sound else None
    encode_mp4(video, FPS, path, audio=audio, sample_rate=RATE if sound else None)
    return path.read_bytes()


def facts(mp4: bytes) -> dict[str, Any]:
    """Stream kinds, the video's frames and seconds, the audio's rate, seconds and samples."""
    with av.open(io.BytesIO(mp4)) as container:
        kinds = [s.type for s in container.streams]
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        found: dict[str, Any] = {
            "streams": kinds,
            "frames": frames,
            "seconds": frames / float(video.average_rate),
        }
        if container.streams.audio:
            container.seek(0)
            audio = container.streams.audio[0]
            wave = np.concatenate(
                [f.to_ndarray().reshape(-1, f.samples) for f in container.decode(audio)], axis=1
            )
            found |= {
                "codec": audio.codec_context.name,
                "rate": audio.codec_context.sample_rate,
                "audio_seconds": float(audio.duration * audio.time_base),
                "wave": wave,
            }
    return found


def loudness(found: dict[str, Any], start: float, end: float) -> float:
    """RMS of the downloaded sound between two times (seconds)."""
    rate = found["rate"]
    part = found["wave"][:, round(start * rate) : round(end * rate)]
    return float(np.sqrt(np.mean(np.square(part))))


def assert_sound_covers_the_video(found: dict[str, Any], seconds: float) -> None:
    assert found["streams"] == ["video", "audio"] and found["codec"] == "aac"
    assert found["seconds"] == pytest.approx(seconds)
    assert abs(found["audio_seconds"] - found["seconds"]) < FRAME


def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(api_key=server.api_key, base_url=f"{server.url}/v1", max_retries=0)


def completed(client: openai.OpenAI, video_id: str) -> bytes:
    video = client.videos.poll(video_id, poll_interval_ms=50)
    assert video.status == "completed", video.error
    return client.videos.download_content(video.id).content


# --- the tiny model: a silent model over sources with sound --------------------------------


def test_an_extension_keeps_the_sources_sound_then_silence(
    server: LiveServer, tmp_path: Path
) -> None:
    client = sdk(server)
    created = client.videos.extend(
        prompt=PROMPT, seconds="4", video=("clip.mp4", clip(tmp_path), "video/mp4")
    )
    found = facts(completed(client, created.id))
    assert_sound_covers_the_video(found, 6.0)
    assert found["rate"] == RATE  # a silent model: the source's own rate
    assert loudness(found, 0.1, 2.0 - FRAME) > 0.2  # the tone (RMS of a 0.5 sine: 0.35)
    assert loudness(found, 2.0 + FRAME, 5.9) < 0.01  # the silent model's part


def test_an_edit_keeps_the_sources_sound(server: LiveServer, tmp_path: Path) -> None:
    client = sdk(server)
    created = client.videos.edit(
        prompt="in winter", video=("clip.mp4", clip(tmp_path), "video/mp4")
    )
    found = facts(completed(client, created.id))
    assert_sound_covers_the_video(found, 2.0)
    assert loudness(found, 0.1, 1.9) > 0.2


def test_a_silent_source_stays_silent(server: LiveServer, tmp_path: Path) -> None:
    client = sdk(server)
    silent = ("clip.mp4", clip(tmp_path, sound=False), "video/mp4")
    created = client.videos.extend(prompt=PROMPT, seconds="4", video=silent)
    assert facts(completed(client, created.id))["streams"] == ["video"]


# --- edits over one pass ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_pass_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Wan 2.1 text-to-video (it edits) whose one pass holds 9 frames: 1 s at 8 fps."""
    root = tmp_path_factory.mktemp("short-pass")
    random_weights.build_pipeline(random_weights.TINY["wan2.1"], seed=1).save_pretrained(
        root / "wan21"
    )
    toml = root / "models.toml"
    toml.write_text(
        f'[models.short]\nbackend = "diffusers"\npath = "{root / "wan21"}"\n'
        'family = "tiny"\nsteps = 2\nmax_frames = 9\n'
    )
    return toml


def test_an_edit_over_one_pass_is_edited_pass_by_pass(
    make_server: Callable[..., LiveServer], short_pass_models: Path, tmp_path: Path
) -> None:
    server = make_server(models=short_pass_models)
    client = sdk(server)
    # 2 s = 16 frames; passes of 9 sharing one frame: 9 + 8 = 17 cover them.
    created = client.videos.edit(
        prompt="in winter",
        video=("clip.mp4", clip(tmp_path), "video/mp4"),
        extra_body={"model": "short"},
    )
    found = facts(completed(client, created.id))
    assert (found["frames"], found["seconds"]) == (16, 2.0)
    assert abs(found["audio_seconds"] - 2.0) < FRAME
    result = httpx.get(
        f"{server.url}/v2/requests/{created.id}", headers={"x-api-key": server.api_key}
    ).json()
    assert (result["segments"], result["served_by"]) == (2, "short")

    # Its 2 steps at strength 0.4 would denoise int(0.8) = 0 of them: a 400, not a crash.
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.edit(
            prompt="in winter",
            video=("clip.mp4", clip(tmp_path), "video/mp4"),
            extra_body={"model": "short", "strength": 0.4},
        )
    assert caught.value.body["param"] == "strength"
    assert caught.value.body["message"] == (
        "strength: 0.4 of 2 steps denoises none (an edit runs int(steps x strength) of them): "
        "use strength >= 0.5 or num_inference_steps >= 3"
    )


def test_edit_passes_follow_the_chaining_rule() -> None:
    class Short:
        name = "short"
        grid = grids.FamilyGrid(multiple=32, frame_rule=4, fps=8, max_frames=9)

    assert continuation.edit_passes(Short(), 1.0) == (9,)
    assert continuation.edit_passes(Short(), 2.0) == (9, 9)
    assert continuation.edit_passes(Short(), 4.0) == (9, 9, 9, 9)  # 32 frames: 9 + 3 x 8

    class OneFrame(Short):
        grid = grids.FamilyGrid(multiple=32, frame_rule=4, fps=8, max_frames=4)

    with pytest.raises(errors.InvalidRequest) as caught:
        continuation.edit_passes(OneFrame(), 2.0)
    assert "model 'short' edits (one pass of 1 frame)" in str(caught.value)


# --- LTX-2 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ltx2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "ltx2"
    random_weights_ltx2.build_pipeline(seed=1).save_pretrained(folder)
    return folder


def ltx2_toml(tmp_path: Path, folder: Path) -> Path:
    """Eight fps, 33 frames a pass (as tests/integration/test_ltx2.py): an extension of 4 s
    conditions on 9 frames, so it needs 41: a conditioned pass, then a chained one."""
    toml = tmp_path / "models.toml"
    toml.write_text(
        f'[models.ltx2]\nbackend = "diffusers"\npath = "{folder}"\n'
        'family = "tiny"\nsteps = 2\nmax_frames = 33\n'
    )
    return toml


@pytest.fixture(scope="module")
def ltx2_backend(ltx2_folder: Path) -> Any:
    options = DiffusersOptions(family="tiny", max_frames=33)
    families.check_entry("ltx2", str(ltx2_folder), options, "cpu")
    return families.create_backend("ltx2", str(ltx2_folder), options, "cpu")


def test_ltx2_extension_over_http_has_sound_across_the_seam(
    ltx2_folder: Path, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    client = sdk(make_server(models=ltx2_toml(tmp_path, ltx2_folder)))
    created = client.videos.extend(
        prompt=PROMPT,
        seconds="4",
        video=("clip.mp4", clip(tmp_path), "video/mp4"),
        extra_body={"model": "ltx2", "seed": 4},
    )
    assert created.seconds == "6"
    found = facts(completed(client, created.id))
    assert_sound_covers_the_video(found, 6.0)
    assert found["rate"] == 24_000  # the model's rate: the source's 48 kHz was resampled
    assert loudness(found, 0.1, 2.0 - FRAME) > 0.2  # the source's tone
    assert loudness(found, 2.0 + FRAME, 5.9) > 0  # the model's sound after the seam


def test_ltx2_continues_from_the_last_frames_not_one_image(ltx2_backend: Any) -> None:
    rng = np.random.default_rng(9)
    base = rng.integers(0, 255, (16, 48, 64, 3), dtype=np.uint8)
    other = base.copy()
    other[-9:-1] = rng.integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)  # same last frame
    params = AudioDiffusersParams(prompt=PROMPT, duration=4, num_inference_steps=2, seed=6)

    def extend(frames: np.ndarray) -> Any:
        source = continuation.SourceVideo(frames, float(FPS))
        return continuation.extend(ltx2_backend, params, source, lambda s, t: None, lambda: False)

    first, second = extend(base), extend(other)
    assert ltx2_backend._condition is not None  # LTX2ConditionPipeline over the same modules
    assert ltx2_backend._condition.transformer is ltx2_backend._t2v.transformer
    assert first.frames.shape == (16 + 32, 48, 64, 3) and first.segments == 3
    # An image-to-video from the last frame would see the same input twice; the frames before
    # it condition the pass too, so the continuations differ.
    assert not np.array_equal(first.frames[16:], second.frames[16:])
    # A silent source: silence until the seam frame, then the model's sound; one frame of
    # audio per frame of video in all.
    rate = first.audio_sample_rate
    assert rate == 24_000
    assert first.audio.shape[1] == round(48 * rate / FPS)
    assert not first.audio[:, : round(15 * rate / FPS)].any()
    assert first.audio[:, round(16 * rate / FPS) :].any()


def test_ltx2_audio_false_never_runs_the_audio_decode(
    ltx2_folder: Path, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(models=ltx2_toml(tmp_path, ltx2_folder))
    backend = server.server.config.app.state.services.registry.backend("ltx2")
    backend.load()
    decoded: list[str] = []
    hooks = [
        backend._t2v.vocoder.register_forward_hook(lambda *_: decoded.append("vocoder")),
        backend._t2v.audio_vae.decoder.register_forward_hook(lambda *_: decoded.append("vae")),
    ]
    try:
        body = {"prompt": "a cat", "duration": 4, "seed": 5, "audio": False}
        silent = generate_over_http(server, "ltx2", body)
        assert decoded == []  # neither the audio VAE's decoder nor the vocoder ran
        assert silent["has_audio"] is False and silent["frames"] == 32
        mp4 = httpx.get(silent["output"], timeout=30).content
        assert facts(mp4)["streams"] == ["video"]
        # The same hooks see the decode when sound is asked for.
        loud = generate_over_http(server, "ltx2", {**body, "audio": True})
        assert sorted(set(decoded)) == ["vae", "vocoder"] and loud["has_audio"] is True
    finally:
        for hook in hooks:
            hook.remove()


def test_ltx2_silent_frames_are_the_pipelines_own_decode(ltx2_backend: Any) -> None:
    params = AudioDiffusersParams(prompt="a dog", duration=4, num_inference_steps=2, seed=8)
    silent_params = params.model_copy(update={"audio": False})
    loud = ltx2_backend.generate(params, GenerationInputs(), lambda s, t: None, lambda: False)
    silent = ltx2_backend.generate(
        silent_params, GenerationInputs(), lambda s, t: None, lambda: False
    )
    assert loud.audio is not None and silent.audio is None
    assert np.array_equal(loud.frames, silent.frames)


def test_an_extension_ends_on_a_new_frame_not_a_repeat(ltx2_backend: Any, tmp_path: Path) -> None:
    """The pass's first frame re-renders the source's last and is dropped, so the backend
    delivers one frame beyond the duration: the extension's last frame is its own, not a copy
    of the one before (frame conditioning on LTX-2, image-to-video on Wan)."""
    wan_folder = tmp_path / "wan22"
    random_weights.build_pipeline(random_weights.TINY["wan2.2-ti2v"], seed=1).save_pretrained(
        wan_folder
    )
    wan = families.create_backend("wan", str(wan_folder), DiffusersOptions(family="tiny"), "cpu")
    frames = np.random.default_rng(5).integers(0, 255, (16, 48, 64, 3), dtype=np.uint8)
    source = continuation.SourceVideo(frames, float(FPS))
    for backend, params in (
        (ltx2_backend, AudioDiffusersParams(prompt=PROMPT, duration=4, num_inference_steps=2)),
        (wan, AudioDiffusersParams(prompt=PROMPT, duration=4, num_inference_steps=2)),
    ):
        video = continuation.extend(backend, params, source, lambda s, t: None, lambda: False)
        assert video.frames.shape[0] == 16 + 4 * FPS
        new = video.frames[16:].astype(np.int16)
        steps = np.abs(np.diff(new, axis=0)).mean(axis=(1, 2, 3))
        assert steps[-1] > 0, f"{backend.name}: the last frame repeats the one before"
