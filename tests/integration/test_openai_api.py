"""OpenAI's Videos API over real HTTP, driven by the official `openai` SDK unchanged but for
its base URL: create (multipart and JSON), poll, download every variant, list, delete, remix,
reference images, errors in OpenAI's envelope, and one id across both dialects."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import LiveServer, wait_until

PROMPT = "A druid whispering to ancient trees under a golden sunset"


def sdk(server: LiveServer, api_key: str | None = None) -> openai.OpenAI:
    # No retries: a test must see the first answer the server gives.
    return openai.OpenAI(
        api_key=api_key or server.api_key, base_url=f"{server.url}/v1", max_retries=0
    )


def png_bytes(width: int = 64, height: int = 48, color=(30, 160, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def is_mp4(data: bytes) -> bool:
    return len(data) > 8 and data[4:8] == b"ftyp"


def jpeg_size(data: bytes) -> tuple[int, int]:
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


def headers(server: LiveServer) -> dict[str, str]:
    return {"x-api-key": server.api_key}


@pytest.fixture
def idle_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """No worker: videos stay queued, which is all listing and deleting need."""
    return make_server(embedded_worker=False)


# --- create, poll, download ----------------------------------------------------------------


def test_create_poll_and_download_every_variant(server: LiveServer) -> None:
    client = sdk(server)
    created = client.videos.create(prompt=PROMPT, seconds="4")  # the SDK always sends multipart
    assert created.object == "video" and created.id.startswith("video_")
    assert created.status in ("queued", "in_progress")
    assert created.model == "sora-2-pro"  # OpenAI's default `sora-2` runs as sora-2-pro
    assert created.seconds == "4" and created.size == "720x1280"  # OpenAI's default size
    assert created.prompt == PROMPT and created.remixed_from_video_id is None

    video = client.videos.poll(created.id, poll_interval_ms=50)
    assert video.status == "completed" and video.progress == 100 and video.error is None
    assert isinstance(video.created_at, int) and isinstance(video.completed_at, int)
    assert video.created_at <= video.completed_at < video.expires_at

    mp4 = client.videos.download_content(video.id).content
    assert is_mp4(mp4)
    assert client.videos.download_content(video.id, variant="video").content == mp4
    thumb_w, thumb_h = jpeg_size(
        client.videos.download_content(video.id, variant="thumbnail").content
    )
    sheet = client.videos.download_content(video.id, variant="spritesheet").content
    sheet_w, sheet_h = jpeg_size(sheet)
    # A 4 s clip has more than 16 frames: a full 4x4 grid of frame-sized tiles.
    assert sheet_w == pytest.approx(4 * thumb_w, abs=4) and sheet_h == pytest.approx(
        4 * thumb_h, abs=4
    )
    # Made once, then served from storage.
    assert client.videos.download_content(video.id, variant="spritesheet").content == sheet
    cached = list(server.data_dir.glob(f"blobs/jobs/{video.id}/*/spritesheet.jpg"))
    assert len(cached) == 1


def test_poll_hint_header_and_content_before_completion(idle_server: LiveServer) -> None:
    client = sdk(idle_server)
    created = client.videos.create(prompt=PROMPT, seconds="8", size="1280x720")
    raw = client.videos.with_raw_response.retrieve(created.id)
    # Queued: twice the floor (250 ms, above the server's 200 ms re-check interval).
    assert raw.headers["openai-poll-after-ms"] == "500"
    video = raw.parse()
    assert (video.status, video.progress, video.seconds, video.size) == (
        "queued",
        0,
        "8",
        "1280x720",
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.download_content(created.id)
    assert "queued" in caught.value.message


def test_json_body_and_image_url_reference(server: LiveServer) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    response = httpx.post(
        f"{server.url}/v1/videos",
        json={"prompt": PROMPT, "seconds": 4, "input_reference": {"image_url": data_uri}},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "video" and body["seconds"] == "4"
    # The same object as multipart form fields, as OpenAI's API takes it (this SDK version
    # refuses a dict for input_reference client-side, so httpx sends it).
    form = httpx.post(
        f"{server.url}/v1/videos",
        files=[
            ("prompt", (None, PROMPT)),
            ("seconds", (None, "4")),
            ("input_reference[image_url]", (None, data_uri)),
        ],
        headers=headers(server),
    )
    assert form.status_code == 200, form.text
    client = sdk(server)
    for video_id in (body["id"], form.json()["id"]):
        assert client.videos.poll(video_id, poll_interval_ms=50).status == "completed"
        stored = httpx.get(f"{server.url}/v2/requests/{video_id}", headers=headers(server))
        assert stored.json()["params"]["input_reference"].startswith("data URI")


def test_input_reference_file_upload(server: LiveServer) -> None:
    client = sdk(server)
    video = client.videos.create_and_poll(
        prompt=PROMPT,
        seconds="4",
        input_reference=("first-frame.png", png_bytes(), "image/png"),
        poll_interval_ms=50,
    )
    assert video.status == "completed"
    stored = httpx.get(f"{server.url}/v2/requests/{video.id}", headers=headers(server)).json()
    assert stored["params"]["input_reference"].startswith("data URI")
    assert list(server.data_dir.glob(f"blobs/jobs/{video.id}/input.png"))
    # Bytes with no image type are judged by their content, not their label.
    unlabelled = client.videos.create(prompt=PROMPT, seconds="4", input_reference=png_bytes())
    assert client.videos.poll(unlabelled.id, poll_interval_ms=50).status == "completed"

    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(
            prompt=PROMPT, input_reference=("notes.txt", b"not an image", "text/plain")
        )
    assert caught.value.body["param"] == "input_reference"
    assert "not an image" in caught.value.message


# --- errors in OpenAI's envelope -------------------------------------------------------------


# One server for every case: each is a single refused request.
INVALID_CREATES: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": PROMPT, "seconds": "5"}, "seconds", "seconds: must be one of 4, 8, 12"),
    ({"prompt": PROMPT, "size": "640x480"}, "size", "size: must be one of"),
    ({"prompt": "   "}, "prompt", "prompt: must not be empty"),
    ({"prompt": PROMPT, "extra_body": {"colour": "red"}}, "colour", "unknown parameter"),
]


def test_validation_errors_are_bad_request(server: LiveServer) -> None:
    client = sdk(server)
    for params, param, fragment in INVALID_CREATES:
        with pytest.raises(openai.BadRequestError) as caught:
            client.videos.create(**params)
        assert caught.value.status_code == 400
        assert fragment in caught.value.message, caught.value.message
        assert caught.value.body["type"] == "invalid_request_error"
        assert caught.value.body["param"] == param
    assert [v.id for v in client.videos.list()] == []  # nothing was queued


def test_a_form_field_sent_twice_is_refused_by_name(idle_server: LiveServer) -> None:
    """A repeated form field is a 400 naming it, not its last value taken silently."""
    url, key = idle_server.url, headers(idle_server)
    repeated: list[tuple[str, list[tuple[str, tuple[None, str]]], str]] = [
        (
            "/v1/videos",
            [
                ("prompt", (None, PROMPT)),
                ("model", (None, "sora-2")),
                ("model", (None, "sora-2-pro")),
            ],
            "model",
        ),
        (
            "/v1/videos",
            [("prompt", (None, PROMPT)), ("seconds", (None, "4")), ("seconds", (None, "8"))],
            "seconds",
        ),
        (
            "/v1/videos",
            [
                ("prompt", (None, PROMPT)),
                ("input_reference[image_url]", (None, "https://a.example/1.png")),
                ("input_reference[image_url]", (None, "https://a.example/2.png")),
            ],
            "input_reference[image_url]",
        ),
        # `video` and `video[id]` name the one source of an extension.
        (
            "/v1/videos/extensions",
            [
                ("prompt", (None, PROMPT)),
                ("video", (None, "video_a")),
                ("video[id]", (None, "video_b")),
            ],
            "video",
        ),
    ]
    for path, fields, param in repeated:
        refused = httpx.post(f"{url}{path}", files=fields, headers=key)
        assert refused.status_code == 400, (path, refused.text)
        error = refused.json()["error"]
        assert error["param"] == param and "sent more than once" in error["message"], error
    # A field that takes several values may repeat: this one fails later, on its own merits.
    characters = httpx.post(
        f"{url}/v1/videos",
        files=[
            ("prompt", (None, PROMPT)),
            ("characters[]", (None, "char_a")),
            ("characters[]", (None, "char_b")),
        ],
        headers=key,
    )
    assert "sent more than once" not in characters.text
    assert [v.id for v in sdk(idle_server).videos.list()] == [], "a refused create queued"


def test_auth_not_found_and_bad_query_use_the_envelope(server: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        sdk(server, api_key="vs_wrong").videos.list()
    assert unauthorized.value.body["code"] == "invalid_api_key"
    assert "invalid API key" in unauthorized.value.message

    client = sdk(server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.videos.retrieve("video_doesnotexist")
    assert "not found" in missing.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.videos.create(prompt=PROMPT, model="no-such-model")
    with pytest.raises(openai.BadRequestError) as bad_variant:
        client.videos.download_content("video_x", variant="poster")  # type: ignore[arg-type]
    assert "variant" in bad_variant.value.message
    with pytest.raises(openai.BadRequestError):
        client.videos.list(limit=101)

    # Another key's video does not exist for this one.
    mine = client.videos.create(prompt=PROMPT, seconds="4")
    theirs = sdk(server, api_key=server.create_key())
    with pytest.raises(openai.NotFoundError):
        theirs.videos.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.videos.delete(mine.id)
    assert [v.id for v in theirs.videos.list()] == []


# --- list and delete -------------------------------------------------------------------------


def test_list_pages_with_cursor(idle_server: LiveServer) -> None:
    client = sdk(idle_server)
    ids = [client.videos.create(prompt=f"{PROMPT} {i}", seconds="4").id for i in range(3)]
    newest_first = list(reversed(ids))

    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == newest_first[:2]
    assert first.has_more is True and first.last_id == newest_first[1]
    second = client.videos.list(limit=2, after=first.last_id)
    assert [v.id for v in second.data] == newest_first[2:] and second.has_more is False

    # The SDK's auto-pagination follows last_id to the end.
    assert [v.id for v in client.videos.list(limit=2)] == newest_first
    assert [v.id for v in client.videos.list(limit=2, order="asc")] == ids

    raw = httpx.get(
        f"{idle_server.url}/v1/videos", params={"limit": 1}, headers=headers(idle_server)
    ).json()
    assert raw["object"] == "list" and raw["first_id"] == raw["last_id"] == newest_first[0]

    client.videos.delete(ids[1])
    assert [v.id for v in client.videos.list()] == [ids[2], ids[0]]
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.list(after=ids[1])  # a cursor that no longer exists
    assert caught.value.body["param"] == "after"


def test_delete_removes_the_row_and_its_files(server: LiveServer) -> None:
    client = sdk(server)
    video = client.videos.create_and_poll(prompt=PROMPT, seconds="4", poll_interval_ms=50)
    client.videos.download_content(video.id, variant="spritesheet")
    folder = server.data_dir / "blobs" / "jobs" / video.id
    assert any(folder.rglob("video.mp4"))

    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (video.id, "video.deleted", True)
    assert not folder.exists()
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)
    status = httpx.get(f"{server.url}/v2/requests/{video.id}/status", headers=headers(server))
    assert status.status_code == 404


def test_delete_cancels_a_queued_video(idle_server: LiveServer) -> None:
    client = sdk(idle_server)
    video = client.videos.create(prompt=PROMPT, seconds="4")
    assert client.videos.delete(video.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


# --- remix -----------------------------------------------------------------------------------


def test_remix_reuses_the_parameters_with_a_new_prompt(server: LiveServer) -> None:
    client = sdk(server)
    source = client.videos.create_and_poll(
        prompt=PROMPT,
        seconds="4",
        size="1280x720",
        input_reference=("first.png", png_bytes(), "image/png"),
        poll_interval_ms=50,
    )
    remix = client.videos.remix(source.id, prompt="The same grove at night, in the rain")
    assert remix.id != source.id and remix.remixed_from_video_id == source.id
    assert remix.prompt == "The same grove at night, in the rain"
    assert (remix.seconds, remix.size, remix.model) == (source.seconds, source.size, source.model)

    done = client.videos.poll(remix.id, poll_interval_ms=50)
    assert done.status == "completed" and done.remixed_from_video_id == source.id
    assert is_mp4(client.videos.download_content(remix.id).content)
    # The reference image went with it: the stored PNG itself, copied byte for byte.
    copied = server.data_dir / "blobs" / "jobs" / remix.id / "input.png"
    original = server.data_dir / "blobs" / "jobs" / source.id / "input.png"
    assert copied.read_bytes() == original.read_bytes()
    listed = {v.id: v for v in client.videos.list()}
    assert listed[remix.id].remixed_from_video_id == source.id
    assert listed[source.id].remixed_from_video_id is None
    # The source is a column of the row, no blob: with every file of the remix gone, a list
    # and a retrieve still say what it remixed.
    assert not (server.data_dir / "blobs" / "jobs" / remix.id / "remix.json").exists()
    shutil.rmtree(server.data_dir / "blobs" / "jobs" / remix.id)
    listed = {v.id: v for v in client.videos.list()}
    assert listed[remix.id].remixed_from_video_id == source.id
    assert client.videos.retrieve(remix.id).remixed_from_video_id == source.id

    with pytest.raises(openai.BadRequestError) as blank:
        client.videos.remix(source.id, prompt="")
    assert "prompt" in blank.value.message
    with pytest.raises(openai.NotFoundError):
        client.videos.remix("video_nope", prompt="x")


def test_remix_needs_a_completed_video(idle_server: LiveServer) -> None:
    client = sdk(idle_server)
    queued = client.videos.create(prompt=PROMPT, seconds="4")
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.remix(queued.id, prompt="another")
    assert "only a completed video can be remixed" in caught.value.message


# --- one id across dialects ------------------------------------------------------------------


def test_one_id_across_dialects(server: LiveServer) -> None:
    client = sdk(server)
    # Segmind in, OpenAI out.
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": PROMPT}, headers=headers(server)
    ).json()
    video = client.videos.poll(submitted["request_id"], poll_interval_ms=50)
    assert video.id == submitted["request_id"] and video.status == "completed"
    assert (video.seconds, video.size) == ("8", "1280x720")  # the Segmind contract's defaults
    assert is_mp4(client.videos.download_content(video.id).content)

    # OpenAI in, Segmind out.
    created = client.videos.create(prompt=PROMPT, seconds="4")

    def segmind_status() -> dict[str, Any] | None:
        body = httpx.get(
            f"{server.url}/v2/requests/{created.id}/status", headers=headers(server)
        ).json()
        return body if body["status"] == "COMPLETED" else None

    assert wait_until(segmind_status)["request_id"] == created.id
    result = httpx.get(f"{server.url}/v2/requests/{created.id}", headers=headers(server)).json()
    assert result["params"]["duration"] == 4
    assert is_mp4(httpx.get(result["output"]).content)


def test_failed_videos_carry_an_error_code(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(blocklist=["forbidden"], embedded_worker=False)
    client = sdk(server)
    blocked = client.videos.create(prompt="a forbidden ritual", seconds="4")
    assert blocked.status == "failed"
    assert blocked.error is not None and blocked.error.code == "moderation_blocked"
    assert "content policy" in blocked.error.message

    queued = client.videos.create(prompt=PROMPT, seconds="4")
    cancel = httpx.post(
        f"{server.url}/v2/requests/{queued.id}/cancel", headers=headers(server)
    ).json()
    assert cancel["cancelled"] is True
    video = client.videos.retrieve(queued.id)
    assert video.status == "failed" and video.error is not None
    assert (video.error.code, video.error.message) == ("cancelled", "cancelled by the user")
