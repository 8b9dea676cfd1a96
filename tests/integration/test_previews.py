"""Watching a video form (issue 25), over real HTTP on SQLite and PostgreSQL: phases in order,
whole-job progress that stays below 100 until COMPLETED, preview images while a job denoises
(on both dialects' routes, decodable, of the stated size, 404 before and after), the `preview`
events of both streams, key isolation, and previews turned off.

The model is the real tiny pipeline; a test holds it after a chosen step (`HeldTiny`) so that
it can look at the job mid-denoise without racing it, then lets it finish.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer, wait_until
from tests.integration.accounting import TestRegistry, headers
from videoserve.jobs.phases import Phase
from videoserve.models import previews
from videoserve.models.backends.tiny import TINY_NAME, TinyBackend

STEPS = 8
HOLD_AT = 4  # previews of steps 1-3 are stored by then (every step: `preview_every = 1`)
ORDER = [phase.value for phase in Phase]


class HeldTiny:
    """The real tiny backend, held after step `hold_at` until `release` is set."""

    def __init__(self, inner: TinyBackend, hold_at: int) -> None:
        self.inner = inner
        self.hold_at = hold_at
        self.reached = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, params, inputs, on_progress, should_stop):  # type: ignore[no-untyped-def]
        def progress(step: int, total: int) -> None:
            on_progress(step, total)
            if step == self.hold_at:
                self.reached.set()
                self.release.wait(120)

        return self.inner.generate(params, inputs, progress, should_stop)


@pytest.fixture
def held(model_cache: Path) -> Iterator[HeldTiny]:
    backend = HeldTiny(TinyBackend(model_cache / TINY_NAME), HOLD_AT)
    yield backend
    backend.release.set()  # never leave a worker thread waiting


def serve(make_server: Callable[..., LiveServer], model_cache: Path, held: HeldTiny, every: int):
    registry = TestRegistry(
        model_cache, {"held": (held, 1.0)}, options={"held": {"preview_every": every}}
    )
    return make_server(registry=registry, worker_concurrency=1)


class Stream:
    """Reads a server-sent event stream on a thread: (event, data) pairs as they come."""

    def __init__(self, url: str, key: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, key), daemon=True)
        self._thread.start()

    def _read(self, url: str, key: str) -> None:
        try:
            with httpx.stream("GET", url, headers=headers(key), timeout=120) as answer:
                name = None
                for line in answer.iter_lines():
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: ") and name is not None:
                        self.events.append((name, json.loads(line[len("data: ") :])))
        finally:
            self.ended.set()

    def of(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == name]


def submit(server: LiveServer, **params: Any) -> str:
    answer = httpx.post(
        f"{server.url}/v2/held",
        json={"prompt": "a lighthouse at dusk", "num_inference_steps": STEPS, **params},
        headers=headers(server.api_key),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def status(server: LiveServer, request_id: str, key: str | None = None) -> dict[str, Any]:
    answer = httpx.get(
        f"{server.url}/v2/requests/{request_id}/status",
        headers=headers(key or server.api_key),
        timeout=10,
    )
    return answer.json()


def preview_routes(server: LiveServer, request_id: str) -> list[str]:
    return [
        f"{server.url}/v2/requests/{request_id}/preview",
        f"{server.url}/v1/videos/{request_id}/content?variant=preview",
    ]


def test_phases_progress_and_previews_while_a_video_forms(
    make_server: Callable[..., LiveServer], model_cache: Path, held: HeldTiny
) -> None:
    server = serve(make_server, model_cache, held, every=1)
    request_id = submit(server)
    segmind = Stream(f"{server.url}/v2/requests/{request_id}/events", server.api_key)
    openai = Stream(f"{server.url}/v1/videos/{request_id}/events", server.api_key)
    queued = submit(server)  # behind the held one: one worker slot
    assert held.reached.wait(120)

    # 404 before a job's first preview: the queued one has none.
    for url in preview_routes(server, queued):
        answer = httpx.get(url, headers=headers(server.api_key), timeout=10)
        assert answer.status_code == 404 and "has not started" in answer.text, answer.text

    # The step and the preview are written apart (the preview after its upload): wait for both.
    now = wait_until(
        lambda: (
            (s := status(server, request_id)).get("preview_step") == 3
            and s.get("step") == HOLD_AT
            and s
        )
    )
    assert (now["phase"], now["step"], now["steps"]) == ("denoising", HOLD_AT, STEPS)
    assert 0 < now["progress"] < 100
    stranger = server.create_key("stranger")
    for url in preview_routes(server, request_id):
        answer = httpx.get(url, headers=headers(server.api_key), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg"
        assert answer.headers["x-preview-step"] == "3"
        picture = Image.open(io.BytesIO(answer.content))
        picture.load()  # decodable
        # Four frames across time, side by side, each PREVIEW_HEIGHT high, about as wide as
        # the video's aspect (1280x720 asked; the latent grid rounds it) makes them.
        width, height = picture.size
        assert height == previews.PREVIEW_HEIGHT and width % 4 == 0, picture.size
        assert abs((width / 4) / height / (1280 / 720) - 1) < 0.1, picture.size
        # Another key's job is a 404, like every read.
        assert httpx.get(url, headers=headers(stranger), timeout=10).status_code == 404
    assert "preview_step" not in status(server, request_id, stranger)  # 404 body, no leak

    held.release.set()
    for stream in (segmind, openai):
        assert stream.ended.wait(120)
    final = status(server, request_id)
    assert (final["status"], final["phase"], final["progress"]) == ("COMPLETED", "completed", 100)
    for url in preview_routes(server, request_id):  # 404 after it ends, and the file is gone
        answer = httpx.get(url, headers=headers(server.api_key), timeout=10)
        assert answer.status_code == 404 and "has ended" in answer.text, answer.text
    # Dropped once the job has ended (its worker's last act for it).
    wait_until(lambda: not list(server.data_dir.rglob("preview.jpg")))

    # The stream: phases in order, progress never falling and below 100 until COMPLETED.
    bodies = segmind.of("status")
    seen = [body["phase"] for body in bodies]
    assert seen[0] in ("queued", "starting", "loading_model", "encoding_prompt", "denoising")
    assert seen == sorted(seen, key=ORDER.index), seen
    assert {"denoising", "completed"} <= set(seen)
    running = [b["progress"] for b in bodies if b["status"] != "COMPLETED" and "progress" in b]
    assert running == sorted(running) and all(p < 100 for p in running), running
    steps = [b["step"] for b in bodies if b["phase"] == "denoising"]
    assert steps == sorted(steps) and HOLD_AT in steps
    shown = segmind.of("preview")
    assert [event["step"] for event in shown] == sorted({e["step"] for e in shown})
    assert shown and shown[-1]["step"] < STEPS and shown[0]["steps"] == STEPS
    assert shown[-1]["url"].startswith(f"{server.url}/v2/requests/{request_id}/preview")

    # The OpenAI dialect's stream: the same events, video objects for statuses.
    videos = openai.of("status")
    assert videos[-1]["object"] == "video" and videos[-1]["status"] == "completed"
    assert "denoising" in [video["phase"] for video in videos]
    assert openai.of("preview") and "variant=preview" in openai.of("preview")[0]["url"]

    # The result's metrics account for the whole wall time, model loading included.
    result = httpx.get(
        f"{server.url}/v2/requests/{request_id}", headers=headers(server.api_key), timeout=10
    ).json()
    metrics = result["metrics"]
    parts = ("queue_time", "load_time", "inference_time", "encode_time", "store_time")
    assert all(metrics[part] is not None and metrics[part] >= 0 for part in parts), metrics
    assert sum(metrics[part] for part in parts) <= metrics["total_time"] + 0.05


def test_previews_turned_off_give_none(
    make_server: Callable[..., LiveServer], model_cache: Path, held: HeldTiny
) -> None:
    server = serve(make_server, model_cache, held, every=0)
    request_id = submit(server)
    stream = Stream(f"{server.url}/v2/requests/{request_id}/events", server.api_key)
    assert held.reached.wait(120)
    now = wait_until(lambda: (s := status(server, request_id)).get("step") == HOLD_AT and s)
    assert "preview_step" not in now and now["phase"] == "denoising"
    for url in preview_routes(server, request_id):
        answer = httpx.get(url, headers=headers(server.api_key), timeout=10)
        assert answer.status_code == 404 and "yet" in answer.text, answer.text
    held.release.set()
    assert stream.ended.wait(120)
    assert stream.of("preview") == []
    assert stream.of("status")[-1]["status"] == "COMPLETED"
