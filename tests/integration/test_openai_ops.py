"""OpenAI's 2026 video operations over real HTTP with the official `openai` SDK: extensions
(stitched duration checked by decoding the download), edits (same duration), the JSON by-id
forms LiteLLM sends, refusals naming the model, another key's source as a 404, a non-video
upload as a 400 the SDK shows, and the envelope on unknown routes and wrong methods.

Every test runs on SQLite and on PostgreSQL (the `make_server` fixture)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest

from tests.conftest import LiveServer
from videoserve.media.encode import encode_mp4
from videoserve.models import random_weights

PROMPT = "A lighthouse on a cliff at dusk"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def sdk(server: LiveServer, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key or server.api_key, base_url=f"{server.url}/v1", max_retries=0
    )


def clip_bytes(tmp_path: Path, *, frames: int = 16, fps: int = 8, size=(64, 48)) -> bytes:
    """A real H.264 MP4 of `frames` frames (2 s at 8 fps by default)."""
    rng = np.random.default_rng(3)
    video = rng.integers(0, 255, (frames, size[1], size[0], 3), dtype=np.uint8)
    path = tmp_path / f"clip-{frames}-{fps}.mp4"
    encode_mp4(video, fps, path)
    return path.read_bytes()


def decode(data: bytes) -> tuple[int, float, tuple[int, int]]:
    """(frames, seconds, (width, height)) of an MP4, by decoding every frame."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        pictures = list(container.decode(stream))
        fps = float(stream.average_rate)
    return len(pictures), len(pictures) / fps, (pictures[0].width, pictures[0].height)


def wait_completed(client: openai.OpenAI, video_id: str) -> openai.types.Video:
    video = client.videos.poll(video_id, poll_interval_ms=50)
    assert video.status == "completed", video.error
    return video


# --- extensions ------------------------------------------------------------------------------


def test_extend_an_uploaded_mp4_gives_one_stitched_video(
    server: LiveServer, tmp_path: Path
) -> None:
    client = sdk(server)
    clip = clip_bytes(tmp_path)
    created = client.videos.extend(
        prompt=PROMPT, seconds="4", video=("clip.mp4", clip, "video/mp4")
    )
    assert created.status in ("queued", "in_progress")
    assert created.seconds == "6"  # the stitched total: 2 s of source + 4 s
    video = wait_completed(client, created.id)
    assert video.seconds == "6"
    frames, seconds, size = decode(client.videos.download_content(video.id).content)
    assert (frames, size) == (16 + 4 * 8, (64, 48))
    assert seconds == pytest.approx(6.0)


def test_extend_by_id_as_litellm_sends_it(server: LiveServer) -> None:
    client = sdk(server)
    source = wait_completed(client, client.videos.create(prompt=PROMPT, seconds="4").id)
    # LiteLLM 1.110.2's video_extension: JSON {"prompt", "seconds", "video": {"id"}}.
    answer = httpx.post(
        f"{server.url}/v1/videos/extensions",
        json={"prompt": PROMPT, "seconds": "4", "video": {"id": source.id}},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["seconds"] == "8"
    video = wait_completed(client, answer.json()["id"])
    _, seconds, size = decode(client.videos.download_content(video.id).content)
    assert seconds == pytest.approx(8.0)
    assert size == decode(client.videos.download_content(source.id).content)[2]

    # A remix of an extension extends the same source again, with the new prompt.
    remix = client.videos.remix(video.id, prompt="the same, in fog")
    assert (remix.seconds, remix.remixed_from_video_id) == ("8", video.id)
    remixed = wait_completed(client, remix.id)
    assert decode(client.videos.download_content(remixed.id).content)[1] == pytest.approx(8.0)


def test_another_keys_source_video_is_a_404(server: LiveServer) -> None:
    owner = sdk(server)
    source = wait_completed(owner, owner.videos.create(prompt=PROMPT, seconds="4").id)
    stranger = server.create_key("stranger")
    answer = httpx.post(
        f"{server.url}/v1/videos/edits",
        json={"prompt": PROMPT, "video": {"id": source.id}},
        headers={"Authorization": f"Bearer {stranger}"},
        timeout=30,
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
    assert source.id in answer.json()["error"]["message"]


def test_a_non_video_upload_is_a_400_the_sdk_shows(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).videos.extend(
            prompt=PROMPT, seconds="4", video=("notes.mp4", b"hello, not a video", "video/mp4")
        )
    assert "video: not a video file" in caught.value.message
    assert caught.value.body["param"] == "video"


def test_a_truncated_mp4_is_a_400_naming_the_failure(server: LiveServer, tmp_path: Path) -> None:
    clip = clip_bytes(tmp_path)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).videos.edit(prompt=PROMPT, video=("cut.mp4", clip[:600], "video/mp4"))
    assert "video:" in caught.value.message


def test_video_input_caps_are_checked_on_the_decoded_frames(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(embedded_worker=False, max_video_frames=10, max_video_pixels=64 * 48)
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.edit(prompt=PROMPT, video=("long.mp4", clip_bytes(tmp_path), "video/mp4"))
    assert "more than 10 frames" in caught.value.message
    big = clip_bytes(tmp_path, frames=4, size=(96, 64))
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.edit(prompt=PROMPT, video=("big.mp4", big, "video/mp4"))
    assert "96x64" in caught.value.message


# --- edits -----------------------------------------------------------------------------------


def test_edit_an_uploaded_mp4_keeps_its_duration_and_aspect(
    server: LiveServer, tmp_path: Path
) -> None:
    client = sdk(server)
    created = client.videos.edit(
        prompt="the same scene in winter", video=("clip.mp4", clip_bytes(tmp_path), "video/mp4")
    )
    assert created.seconds == "2"
    video = wait_completed(client, created.id)
    frames, seconds, size = decode(client.videos.download_content(video.id).content)
    assert (frames, size) == (16, (64, 48))  # the tiny model's 8 fps, like the source's
    assert seconds == pytest.approx(2.0)


def test_edit_strength_is_checked(server: LiveServer, tmp_path: Path) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).videos.edit(
            prompt=PROMPT,
            video=("clip.mp4", clip_bytes(tmp_path), "video/mp4"),
            extra_body={"strength": "1.5"},
        )
    assert "strength: must be above 0 and at most 1" in caught.value.message
    # The source decides the size and timing: setting them is refused, not ignored.
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).videos.extend(
            prompt=PROMPT,
            seconds="4",
            video=("clip.mp4", clip_bytes(tmp_path), "video/mp4"),
            extra_body={"size": "1280x720"},
        )
    assert caught.value.body["param"] == "size"


# --- models that cannot ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text-only Wan 2.1 (cannot continue) and LTX-Video (no video-to-video)."""
    root = tmp_path_factory.mktemp("refusing")
    for name, layout in (("wan21", "wan2.1"), ("ltx", "ltx")):
        random_weights.build_pipeline(random_weights.TINY[layout], seed=1).save_pretrained(
            root / name
        )
    toml = root / "models.toml"
    toml.write_text(
        "".join(
            f'[models."{name}"]\nbackend = "diffusers"\npath = "{root / name}"\n'
            'family = "tiny"\nsteps = 1\n'
            for name in ("wan21", "ltx")
        )
    )
    return toml


def test_models_that_cannot_give_a_400_naming_the_model(
    make_server: Callable[..., LiveServer], refusing_models: Path, tmp_path: Path
) -> None:
    client = sdk(make_server(embedded_worker=False, models=refusing_models))
    clip = ("clip.mp4", clip_bytes(tmp_path), "video/mp4")
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.extend(prompt=PROMPT, seconds="4", video=clip, extra_body={"model": "wan21"})
    assert "model 'wan21' cannot continue a video" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.edit(prompt=PROMPT, video=clip, extra_body={"model": "ltx"})
    assert "model 'ltx' has no video-to-video pipeline" in caught.value.message


# --- the envelope ----------------------------------------------------------------------------


def test_unknown_routes_and_wrong_methods_answer_in_the_envelope(server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {server.api_key}"}
    unknown = httpx.get(f"{server.url}/v1/videos/abc/frames", headers=auth, timeout=10)
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    assert "/v1/videos/abc/frames" in unknown.json()["error"]["message"]

    wrong = httpx.put(f"{server.url}/v1/videos/extensions", headers=auth, timeout=10)
    assert wrong.status_code == 405
    # The documented path's methods: a literal segment beats /v1/videos/{video_id}.
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"].endswith("allowed: POST")
    assert wrong.json()["error"]["type"] == "invalid_request_error"

    with pytest.raises(openai.NotFoundError) as caught:
        sdk(server).get("/videos/abc/frames", cast_to=httpx.Response)
    assert "not found: GET /v1/videos/abc/frames" in caught.value.message


# --- characters ------------------------------------------------------------------------------


def test_create_get_list_and_delete_a_character(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(embedded_worker=False)
    client = sdk(server)
    created = client.videos.create_character(
        name="Mara", video=("mara.mp4", clip_bytes(tmp_path), "video/mp4")
    )
    assert created.id.startswith("char_") and created.name == "Mara"
    got = client.videos.get_character(created.id)
    assert (got.id, got.name, got.created_at) == (created.id, "Mara", created.created_at)
    raw = httpx.get(
        f"{server.url}/v1/videos/characters/{created.id}",
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=10,
    ).json()
    assert {"id", "object", "created_at", "name"} <= set(raw) and raw["object"] == "character"
    frames = sorted((server.data_dir / "blobs" / "characters" / created.id).glob("*.png"))
    assert len(frames) == 4  # reference frames taken from the clip

    listed = client.get("/videos/characters", cast_to=httpx.Response).json()
    assert [c["id"] for c in listed["data"]] == [created.id]
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create_character(
            name="Mara", video=("again.mp4", clip_bytes(tmp_path), "video/mp4")
        )
    assert "already have a character named 'Mara'" in caught.value.message

    deleted = client.delete(f"/videos/characters/{created.id}", cast_to=httpx.Response)
    assert deleted.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        client.videos.get_character(created.id)
    assert not any((server.data_dir / "blobs" / "characters" / created.id).glob("*"))


def test_another_keys_character_is_a_404(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(embedded_worker=False)
    created = sdk(server).videos.create_character(
        name="Mara", video=("mara.mp4", clip_bytes(tmp_path), "video/mp4")
    )
    stranger = sdk(server, server.create_key("stranger"))
    with pytest.raises(openai.NotFoundError) as caught:
        stranger.videos.get_character(created.id)
    assert created.id in caught.value.message
    # Nor can a stranger use it: its id is a 404 there too.
    with pytest.raises(openai.NotFoundError):
        stranger.videos.create(prompt=PROMPT, extra_body={"characters": [created.id]})


def test_characters_on_a_model_without_reference_images_are_a_400(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(embedded_worker=False)
    client = sdk(server)
    client.videos.create_character(
        name="Mara", video=("mara.mp4", clip_bytes(tmp_path), "video/mp4")
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="@Mara walks along the shore")
    message = caught.value.message
    assert "model 'sora-2-pro' does not take reference images" in message and "Mara" in message
    # A mention of no character of yours, or an e-mail address, is ordinary text.
    assert client.videos.create(prompt="mail me@example.com about @Nobody").status == "queued"


def test_bad_character_names_and_sources(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    client = sdk(make_server(embedded_worker=False))
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create_character(
            name="two words", video=("m.mp4", clip_bytes(tmp_path), "video/mp4")
        )
    assert caught.value.body["param"] == "name"
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create_character(name="Mara", video=("m.png", b"\x89PNG....", "image/png"))
    assert "not a video file" in caught.value.message
