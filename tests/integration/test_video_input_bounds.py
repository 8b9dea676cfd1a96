"""Video inputs that cannot exhaust memory, and the smaller holes beside them (issue 23):
hostile clips made in code, sent over real HTTP, on SQLite and PostgreSQL.

- a clip whose timestamps claim 90,000 fps: a 400 on every route that decodes a video, and an
  API process that does not grow (its RSS sampled while it answers); a worker given such a
  source by a permissive API refuses it itself;
- an MJPEG MOV whose first frame is small and later ones huge: the decoder stops at the first
  huge one (a 400 naming the pixel cap), on the API and in a worker;
- characters cost credits (406 before any decode), are capped per key, and count against the
  submit rate limit; extensions and edits check credits before decoding;
- names and the poll path anchored: `Hero\\n`, a 64-character name plus a newline, a 65-character
  name are 400s that leave no file; `status%0A` is a 404;
- a sparse variable-rate clip is measured by its timestamps, not count / fps.
"""

from __future__ import annotations

import fractions
import io
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, wait_until
from tests.integration.accounting import headers, ledger_of, make_key

PROMPT = "A lighthouse on a cliff at dusk"
RSS_BOUND = 300 * 1024 * 1024  # what answering one hostile clip may add to the API's RSS


# --- clips -----------------------------------------------------------------------------------
def fast_clip(width: int = 1280, height: int = 720) -> bytes:
    """Two frames 1/90000 s apart: its timestamps claim 90,000 fps (1.8 KB)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=90000)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = fractions.Fraction(1, 90000)
        for pts in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")
            frame.pts, frame.time_base = pts, stream.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def _jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 160)).save(buffer, "JPEG", quality=30)
    return buffer.getvalue()


def growing_mjpeg(frames: int = 3, big: int = 4000) -> bytes:
    """An MJPEG MOV whose header and first frame say 16x16 and whose later frames are
    `big` x `big`: a first-frame check would let it through."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as out:
        stream = out.add_stream("mjpeg", rate=24)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
        stream.time_base = fractions.Fraction(1, 24)
        for index in range(frames):
            packet = av.Packet(_jpeg(16 if index == 0 else big))
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = stream.time_base
            out.mux(packet)
    return buffer.getvalue()


def sparse_clip() -> bytes:
    """Two frames, at 0 s and 29 s: 29 seconds long, not count / fps = 58."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = fractions.Fraction(1, 1000)
        for pts in (0, 29000):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), "rgb24")
            frame.pts, frame.time_base = pts, stream.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def small_clip(frames: int = 16, fps: int = 8, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(frames):
            picture = np.full((size[1], size[0], 3), index * 12 % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, "rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


# --- helpers ---------------------------------------------------------------------------------
def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Samples this process's RSS (the server runs in it, on a thread) every few ms while
    the body runs; yields a list that holds the peak growth in bytes afterwards."""
    start, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss() - start)
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss() - start)


def post_video(
    server: LiveServer, path: str, data: bytes, key: str | None = None, **fields: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/videos/{path}",
        headers=headers(key or server.api_key),
        data={"prompt": PROMPT, **fields},
        files={"video": ("clip.mp4", data, "video/mp4")},
        timeout=60,
    )


def character_files(server: LiveServer) -> list[Path]:
    return sorted((server.data_dir / "blobs" / "characters").rglob("*"))


def message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


# --- the 90,000 fps clip ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "fields"),
    [("extensions", {"seconds": "4"}), ("edits", {}), ("characters", {"name": "Fast"})],
)
def test_a_90000_fps_clip_is_a_400_and_the_server_does_not_grow(
    make_server: Callable[..., LiveServer], path: str, fields: dict[str, str]
) -> None:
    server = make_server(embedded_worker=False)
    clip = fast_clip()
    assert len(clip) < 4000  # the attack costs nothing to send
    with peak_rss_growth() as growth:
        answer = post_video(server, path, clip, **fields)
    assert answer.status_code == 400, answer.text
    assert "90000 fps" in message(answer) and "limit of 120 fps" in message(answer)
    assert growth[0] < RSS_BOUND, f"the API grew by {growth[0] / 2**20:.0f} MiB"
    assert character_files(server) == []


def test_a_worker_refuses_a_hostile_source_that_a_permissive_api_let_through(
    make_server: Callable[..., LiveServer],
) -> None:
    # The API process trusts far more than it should; the worker, with the defaults, must
    # still refuse the source itself (decoding it under its own limits) rather than plan
    # 360,000 frames from it.
    api = make_server(embedded_worker=False, max_video_fps=1e6, max_video_decoded_bytes=2**50)
    answer = post_video(api, "extensions", fast_clip(), seconds="4")
    assert answer.status_code == 200, answer.text
    video_id = answer.json()["id"]
    make_server(
        data_dir=api.data_dir,
        database_url=api.settings.resolved_database_url(),
        storage_url=api.settings.resolved_storage_url(),
        secret_key="shared",
    )

    def ended() -> dict | None:
        body = httpx.get(
            f"{api.url}/v1/videos/{video_id}", headers=headers(api.api_key), timeout=10
        ).json()
        return body if body["status"] in ("completed", "failed") else None

    with peak_rss_growth() as growth:
        body = wait_until(ended, timeout=120)
    assert body["status"] == "failed"
    assert "90000 fps" in body["error"]["message"]
    assert growth[0] < RSS_BOUND, f"the worker grew by {growth[0] / 2**20:.0f} MiB"


# --- frames that grow after the first --------------------------------------------------------
@pytest.mark.parametrize(("path", "fields"), [("characters", {"name": "Big"}), ("edits", {})])
def test_frames_over_the_pixel_cap_after_a_small_first_one_are_a_400(
    make_server: Callable[..., LiveServer], path: str, fields: dict[str, str]
) -> None:
    server = make_server(embedded_worker=False)
    with peak_rss_growth() as growth:
        answer = post_video(server, path, growing_mjpeg(), **fields)
    assert answer.status_code == 400, answer.text
    assert "decoding stopped at frame 2" in message(answer)
    assert f"limit of {1280 * 720} pixels" in message(answer)
    # One 4000x4000 RGB frame alone is 48 MB; the decoder never made one.
    assert growth[0] < RSS_BOUND, f"the API grew by {growth[0] / 2**20:.0f} MiB"
    assert character_files(server) == []


# --- characters cost what they cost ----------------------------------------------------------
def test_characters_are_charged_and_a_short_key_is_a_406_before_any_decode(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(embedded_worker=False, character_price=2)
    broke, _ = make_key(server, "broke", credits=0)
    # Not even a video: a 406 first shows the credits were checked before decoding.
    answer = post_video(server, "characters", b"not a video at all", broke, name="Mara")
    assert answer.status_code == 406, answer.text
    assert "price 2 (2 credits per character)" in message(answer)

    key, key_id = make_key(server, "payer", credits=5)
    for name in ("Mara", "Ivo"):
        assert post_video(server, "characters", small_clip(), key, name=name).status_code == 200
    third = post_video(server, "characters", small_clip(), key, name="Lea")
    assert third.status_code == 406 and "balance 1" in message(third)
    charges = [e for e in ledger_of(server, key_id) if e.kind == "charge"]
    assert [e.amount for e in charges] == [-2, -2]
    assert all(e.job_id and e.job_id.startswith("char_") for e in charges)
    assert len({p.parent for p in character_files(server) if p.is_file()}) == 2
    models = httpx.get(f"{server.url}/v1/models", headers=headers(key), timeout=10).json()
    assert models["character_price"] == 2


def test_extensions_and_edits_check_credits_before_decoding(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(embedded_worker=False)
    broke, _ = make_key(server, "broke", credits=1)
    for path, fields in (("extensions", {"seconds": "4"}), ("edits", {})):
        answer = post_video(server, path, b"not a video at all", broke, **fields)
        assert answer.status_code == 406, (path, answer.text)
        assert "insufficient credits: balance 1" in message(answer)


def test_live_characters_are_capped_per_key(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(embedded_worker=False, max_characters_per_key=2)
    for name in ("Mara", "Ivo"):
        assert post_video(server, "characters", small_clip(), name=name).status_code == 200
    third = post_video(server, "characters", small_clip(), name="Lea")
    assert third.status_code == 400, third.text
    assert "already has 2 live characters" in message(third)
    assert len({p.parent for p in character_files(server) if p.is_file()}) == 2
    # Another key has its own cap.
    other = server.create_key("other")
    assert post_video(server, "characters", small_clip(), other, name="Lea").status_code == 200


def test_characters_count_against_the_submit_rate_limit(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(embedded_worker=False, rate_limit="2/minute")
    codes = [
        post_video(server, "characters", small_clip(), name=f"C{n}").status_code for n in range(3)
    ]
    assert codes == [200, 200, 429]
    listed = httpx.get(
        f"{server.url}/v1/videos/characters", headers=headers(server.api_key), timeout=10
    )
    assert listed.status_code == 200  # reads stay in the status bucket


# --- anchored patterns, checked before anything is stored ------------------------------------
@pytest.mark.parametrize(
    "name", ["Hero\n", "A" * 64 + "\n", "A" * 65, "Hero\r", "Her\u00f6"], ids=repr
)
def test_character_names_are_checked_whole_before_anything_is_stored(
    make_server: Callable[..., LiveServer], name: str
) -> None:
    server = make_server(embedded_worker=False)
    answer = post_video(server, "characters", small_clip(), name=name)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "name"
    assert character_files(server) == []
    assert post_video(server, "characters", small_clip(), name="A" * 64).status_code == 200


def test_a_status_path_with_a_trailing_newline_is_a_404(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(embedded_worker=False)
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        headers=headers(server.api_key),
        json={"prompt": PROMPT},
        timeout=10,
    ).json()
    base = f"{server.url}/v2/requests/{submitted['request_id']}"
    assert httpx.get(f"{base}/status", headers=headers(server.api_key)).status_code == 200
    for tail in ("status%0A", "status%0D", "status%0A%0A"):
        answer = httpx.get(f"{base}/{tail}", headers=headers(server.api_key), timeout=10)
        assert answer.status_code == 404, (tail, answer.text)


# --- duration from timestamps ----------------------------------------------------------------
def test_a_sparse_clip_is_measured_by_its_timestamps(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(embedded_worker=False)
    answer = post_video(server, "extensions", sparse_clip(), seconds="4")
    assert answer.status_code == 200, answer.text  # was: "58.0 seconds, over the limit of 30"
    assert 33 <= float(answer.json()["seconds"]) <= 34  # 29 s and one frame, then 4 s more
    capped = make_server(embedded_worker=False, max_video_seconds=20)
    refused = post_video(capped, "extensions", sparse_clip(), seconds="4")
    assert refused.status_code == 400 and "limit of 20 seconds" in message(refused)


def test_an_extension_over_the_decoded_size_cap_is_refused_before_it_is_queued(
    make_server: Callable[..., LiveServer],
) -> None:
    # 16 frames of 64x48 at 8 fps, then 12 s more: 112 frames x 9,216 bytes = 1,032,192.
    server = make_server(embedded_worker=False, max_video_decoded_bytes=1_000_000)
    answer = post_video(server, "extensions", small_clip(), seconds="12")
    assert answer.status_code == 400, answer.text
    assert "112 frames of 64x48" in message(answer) and "1000000 bytes" in message(answer)
    assert post_video(server, "extensions", small_clip(), seconds="4").status_code == 200
