"""An event stream re-checks its key: revoked elsewhere (as `videoserve keys revoke` does, from
another process with its own key cache), the stream ends with an `error` event within the
server's key-cache period, as its polls start answering 401. Over real HTTP, both databases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from videoserve.settings import Settings

SLACK_SECONDS = 3.0  # a busy 2-core machine; a stream that never ends fails by far more


def revoke(settings: Settings, plaintext: str) -> None:
    """Revoke the key as the CLI does: its own store and key cache, not the server's."""
    from videoserve.jobs.keys import KeyStore
    from videoserve.jobs.store import JobStore

    async def run() -> None:
        store = JobStore.open(settings.resolved_database_url())
        try:
            assert await KeyStore(store.database).revoke(plaintext[:10]) is not None
        finally:
            await store.close()

    asyncio.run(run())


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs as they arrive; keep-alive comments skipped."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif not line and data:
            yield name or "message", json.loads("\n".join(data))
            name, data = None, []


def submit(server: LiveServer, **params: Any) -> str:
    answer = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json=params or {"prompt": "a lighthouse in a storm"},
        headers={"x-api-key": server.api_key},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


SEGMIND_STREAM = "/v2/requests/{id}/events"
OPENAI_STREAM = "/v1/videos/{id}/events"


@pytest.mark.parametrize(
    ("stream_path", "cache_seconds"),
    [(SEGMIND_STREAM, 1.0), (SEGMIND_STREAM, 0.0), (OPENAI_STREAM, 1.0)],
)
def test_stream_ends_with_an_error_after_its_key_is_revoked(
    make_server: Callable[..., LiveServer], stream_path: str, cache_seconds: float
) -> None:
    # No worker: the job stays queued, so only the revocation can end the stream.
    server = make_server(embedded_worker=False, auth_cache_seconds=cache_seconds)
    request_id = submit(server)
    url = server.url + stream_path.format(id=request_id)
    headers = {"x-api-key": server.api_key}
    # The read timeout is the deadline: a stream that outlives the key sends nothing more.
    with httpx.stream("GET", url, headers=headers, timeout=15) as response:
        assert response.status_code == 200
        stream = events(response)
        name, body = next(stream)
        assert name == "status" and body["status"] in ("QUEUED", "queued")

        revoke(server.settings, server.api_key)
        revoked_at = time.monotonic()
        name, body = next(stream)
        elapsed = time.monotonic() - revoked_at
        rest = list(stream)  # the server closed the stream after the error

    assert name == "error", body
    assert body == {
        "request_id": request_id,
        "error": "invalid API key",
        "code": "invalid_api_key",
        "status": 401,
    }
    assert rest == []
    period = max(cache_seconds, server.settings.poll_interval_seconds)
    assert elapsed < period + SLACK_SECONDS, f"{elapsed:.1f}s after the revocation"
    # The poll's own answer, word for word.
    poll = httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers=headers)
    assert poll.status_code == 401 and poll.json()["error"] == body["error"]
