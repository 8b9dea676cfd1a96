"""Following and cancelling requests over real HTTP: the status event stream, cancel of queued,
running and finished jobs, and the client's `cancel()` and stream-following `wait()`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_until
from videoserve.client import AsyncClient, Client, InferenceFailed

PROMPT = "A druid whispering to ancient trees under a golden sunset"
CANCELLED = "cancelled by the user"
# Long for the tiny model: the most frames, the largest size, many denoising steps.
LONG_JOB = {"prompt": "x", "duration": 12, "size": "1792x1024", "num_inference_steps": 80}
RANK = {"QUEUED": 0, "PROCESSING": 1, "COMPLETED": 2, "FAILED": 2}


def headers(server: LiveServer) -> dict[str, str]:
    return {"x-api-key": server.api_key}


def submit(server: LiveServer, model: str = "sora-2-pro", **params: Any) -> str:
    response = httpx.post(
        f"{server.url}/v2/{model}", json=params or {"prompt": PROMPT}, headers=headers(server)
    )
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(server: LiveServer, request_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers=headers(server))


def cancel(server: LiveServer, request_id: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(server))


def read_events(server: LiveServer, request_id: str) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from the stream, comments included as ("comment", text)."""
    url = f"{server.url}/v2/requests/{request_id}/events"
    with httpx.stream("GET", url, headers=headers(server), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data = None, []
        for line in response.iter_lines():
            if line.startswith(":"):
                yield "comment", line[1:].strip()
            elif line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif not line and data:
                yield name or "message", json.loads("\n".join(data))
                name, data = None, []


@pytest.fixture
def idle_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """No worker: requests stay QUEUED until cancelled."""
    return make_server(embedded_worker=False)


# --- the event stream --------------------------------------------------------------------------


def test_events_follow_a_job_to_completion_then_close(server: LiveServer) -> None:
    request_id = submit(server, prompt=PROMPT, duration=4)
    events = [(name, data) for name, data in read_events(server, request_id) if name != "comment"]
    # The iteration ended: the server closed the stream after the final event. Besides status
    # events it may carry a preview (one about every 2 s of denoising: a loaded machine).
    assert all(name in ("status", "preview") for name, _ in events)
    assert events[-1][0] == "status"
    bodies = [data for name, data in events if name == "status"]
    assert all(body["request_id"] == request_id for body in bodies)
    ranks = [RANK[body["status"]] for body in bodies]
    assert ranks == sorted(ranks), [body["status"] for body in bodies]
    progress = [body["progress"] for body in bodies if body["status"] == "PROCESSING"]
    assert progress == sorted(progress)
    assert len(set(map(json.dumps, bodies))) == len(bodies), "an unchanged status was repeated"
    last = bodies[-1]
    assert last["status"] == "COMPLETED" and last["progress"] == 100
    # Each event is the status endpoint's own answer.
    assert status(server, request_id).json() == last


def test_events_of_a_finished_job_and_errors(idle_server: LiveServer) -> None:
    server = idle_server
    request_id = submit(server)
    assert cancel(server, request_id).status_code == 200
    events = list(read_events(server, request_id))
    assert len(events) == 1
    name, body = events[0]
    assert name == "status" and body["status"] == "FAILED" and body["error"] == CANCELLED

    missing = httpx.get(f"{server.url}/v2/requests/nope/events", headers=headers(server))
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    anonymous = httpx.get(f"{server.url}/v2/requests/{request_id}/events")
    assert anonymous.status_code == 401
    other_key = {"x-api-key": server.create_key()}
    theirs = httpx.get(f"{server.url}/v2/requests/{request_id}/events", headers=other_key)
    assert theirs.status_code == 404


def test_events_see_a_cancel_from_another_client(idle_server: LiveServer) -> None:
    server = idle_server
    request_id = submit(server)
    url = f"{server.url}/v2/requests/{request_id}/events"
    with httpx.stream("GET", url, headers=headers(server), timeout=60) as response:
        lines = response.iter_lines()
        first = [next(lines), next(lines)]
        assert first[0] == "event: status" and '"status":"QUEUED"' in first[1]
        assert cancel(server, request_id).json()["cancelled"] is True
        rest = list(lines)  # ends: the server closes after the terminal event
    assert "event: status" in rest and any('"status":"FAILED"' in line for line in rest)


# --- cancel --------------------------------------------------------------------------------


def test_cancel_a_queued_job(idle_server: LiveServer) -> None:
    server = idle_server
    request_id = submit(server)
    answer = cancel(server, request_id)
    assert answer.status_code == 200
    body = answer.json()
    assert body["cancelled"] is True and body["message"] == "cancelled"
    assert body["status"] == "FAILED" and body["error"] == CANCELLED

    polled = status(server, request_id)
    assert polled.status_code == 422
    assert polled.json()["status"] == "FAILED" and polled.json()["error"] == CANCELLED
    assert polled.json()["started_at"] is None  # it never ran

    again = cancel(server, request_id).json()
    assert (
        again["cancelled"] is False and again["message"] == "already cancelled; nothing to cancel"
    )
    assert cancel(server, "no-such-request").status_code == 404
    other = httpx.post(
        f"{server.url}/v2/requests/{request_id}/cancel",
        headers={"x-api-key": server.create_key()},
    )
    assert other.status_code == 404


def test_cancel_a_running_job_then_the_next_one_runs(server: LiveServer) -> None:
    long_id = submit(server, "tiny-t2v", **LONG_JOB)
    next_id = submit(server, prompt=PROMPT, duration=4)  # queued behind it

    def running() -> dict[str, Any] | None:
        body = status(server, long_id).json()
        return body if body["status"] == "PROCESSING" and body["progress"] > 0 else None

    wait_until(running, timeout=120)
    answer = cancel(server, long_id)
    assert answer.status_code == 200
    body = answer.json()
    assert body["cancelled"] is True and "cancellation requested" in body["message"]

    def ended() -> httpx.Response | None:
        response = status(server, long_id)
        return response if response.json()["status"] in ("COMPLETED", "FAILED") else None

    final = wait_until(ended, timeout=60)
    assert final.status_code == 422
    assert final.json()["status"] == "FAILED" and final.json()["error"] == CANCELLED
    # It stopped between steps, well before the last one (the OpenAI view keeps the progress).
    video = httpx.get(f"{server.url}/v1/videos/{long_id}", headers=headers(server)).json()
    assert video["status"] == "failed" and video["error"]["code"] == "cancelled"
    assert video["progress"] < 100

    # The worker is free again and takes the next job.
    done = wait_until(lambda: status(server, next_id).json()["status"] == "COMPLETED", timeout=60)
    assert done


def test_cancel_a_completed_job_changes_nothing(server: LiveServer) -> None:
    request_id = submit(server, prompt=PROMPT, duration=4)
    wait_until(lambda: status(server, request_id).json()["status"] == "COMPLETED", timeout=60)
    answer = cancel(server, request_id)
    assert answer.status_code == 200
    body = answer.json()
    assert body["cancelled"] is False
    assert body["message"] == "already completed; nothing to cancel"
    assert body["status"] == "COMPLETED"
    assert status(server, request_id).json()["status"] == "COMPLETED"


# --- the client ----------------------------------------------------------------------------


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


def test_client_wait_follows_the_stream_and_cancel(server: LiveServer) -> None:
    transport = RecordingTransport()
    with (
        httpx.Client(transport=transport) as http,
        Client(api_key=server.api_key, base_url=server.url, http_client=http) as client,
    ):
        job = client.submit_async("sora-2-pro", prompt=PROMPT, duration="4")
        seen: list[dict[str, Any]] = []
        result = job.wait(timeout=120, interval=0.05, on_status=seen.append)
        assert result["status"] == "COMPLETED" and result["request_id"] == job.request_id
        status_path = f"/v2/requests/{job.request_id}/status"
        events_path = f"/v2/requests/{job.request_id}/events"
        # One status read, then the stream carried every change.
        assert transport.paths.count(status_path) == 1 and events_path in transport.paths
        assert seen[-1]["status"] == "COMPLETED" and seen[-1]["progress"] == 100
        assert any(body["status"] == "PROCESSING" for body in seen)

        finished = job.cancel()
        assert finished["cancelled"] is False and finished["status"] == "COMPLETED"

        long_job = client.submit_async("tiny-t2v", **LONG_JOB)
        wait_until(lambda: long_job.status().get("progress", 0) > 0, timeout=120)
        assert long_job.cancel()["cancelled"] is True
        with pytest.raises(InferenceFailed) as caught:
            long_job.wait(timeout=60, interval=0.05)
        assert caught.value.detail == CANCELLED


def test_client_wait_falls_back_to_polling(server: LiveServer) -> None:
    class NoStream(RecordingTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/events"):
                self.paths.append(request.url.path)
                return httpx.Response(404, json={"error": "not found"})
            return super().handle_request(request)

    transport = NoStream()
    with (
        httpx.Client(transport=transport) as http,
        Client(api_key=server.api_key, base_url=server.url, http_client=http) as client,
    ):
        job = client.submit_async("sora-2-pro", prompt=PROMPT, duration="4")
        assert job.wait(timeout=120, interval=0.05)["status"] == "COMPLETED"
    status_path = f"/v2/requests/{job.request_id}/status"
    assert transport.paths.count(f"/v2/requests/{job.request_id}/events") == 1
    assert transport.paths.count(status_path) >= 2


async def test_async_client_cancel_and_wait(idle_server: LiveServer) -> None:
    server = idle_server
    async with AsyncClient(api_key=server.api_key, base_url=server.url) as client:
        job = await client.submit_async("sora-2-pro", prompt=PROMPT, duration="4")
        answer = await job.cancel()
        assert answer["cancelled"] is True and answer["status"] == "FAILED"
        seen: list[str] = []

        async def on_status(body: dict[str, Any]) -> None:
            seen.append(body["status"])

        with pytest.raises(InferenceFailed) as caught:
            await job.wait(timeout=30, interval=0.05, on_status=on_status)
        assert caught.value.detail == CANCELLED and seen == ["FAILED"]

        queued = await client.submit_async("sora-2-pro", prompt=PROMPT, duration="4")
        statuses: list[str] = []

        async def cancel_when_streaming(body: dict[str, Any]) -> None:
            statuses.append(body["status"])
            if body["status"] == "QUEUED":
                await queued.cancel()

        # The cancel lands while wait() follows the stream; the stream delivers the FAILED.
        with pytest.raises(InferenceFailed):
            await queued.wait(timeout=30, interval=5.0, on_status=cancel_when_streaming)
        assert statuses == ["QUEUED", "FAILED"]
