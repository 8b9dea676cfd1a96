"""One reading of the API key: a duplicated or disagreeing credential header is a 400, so the
rate limiter and authentication can never see different keys (issue 16, item 1)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.accounting import headers, submit

AMBIGUOUS = "ambiguous credentials"


@pytest.mark.parametrize(
    "extra",
    [
        [("x-api-key", "junk")],
        [("authorization", "Bearer junk")],
    ],
    ids=["x-api-key twice", "x-api-key and a different bearer"],
)
def test_a_valid_key_followed_by_junk_is_refused_not_rate_limited_apart(make_server, extra) -> None:
    server = make_server(embedded_worker=False, rate_limit="2/minute")
    key = server.api_key
    sent = [("x-api-key", key), *extra]
    url = f"{server.url}/v2/sora-2-pro"
    answers = [httpx.post(url, json={"prompt": "x", "duration": 4}, headers=sent) for _ in range(4)]
    # Before the fix the first header authenticated and the last one picked a fresh bucket:
    # every call was accepted. Now each is a 400 naming the problem, and nothing was queued.
    assert [a.status_code for a in answers] == [400] * 4
    assert all(AMBIGUOUS in a.json()["error"] for a in answers)
    listing = httpx.get(f"{server.url}/v1/videos", headers=sent)
    assert listing.status_code == 400 and AMBIGUOUS in listing.json()["error"]["message"]
    # The key's own bucket is intact: its two submits still pass, the third is limited.
    assert [submit(server, key, duration=4).status_code for _ in range(3)] == [200, 200, 429]


def test_duplicate_headers_on_reads_and_the_videos_api(make_server) -> None:
    server = make_server(embedded_worker=False)
    key = server.api_key
    request_id = submit(server, key, duration=4).json()["request_id"]
    twice = [("authorization", f"Bearer {key}"), ("authorization", "Bearer junk")]
    poll = httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers=twice)
    assert poll.status_code == 400 and AMBIGUOUS in poll.json()["error"]
    videos = httpx.get(f"{server.url}/v1/videos/{request_id}", headers=twice)
    assert videos.status_code == 400
    assert AMBIGUOUS in videos.json()["error"]["message"]  # OpenAI's envelope under /v1/videos
    # Both headers carrying the same key is not ambiguous.
    same = [("x-api-key", key), ("authorization", f"Bearer {key}")]
    poll = httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers=same)
    assert poll.status_code == 200
    assert httpx.get(f"{server.url}/v1/account", headers=headers(key)).status_code == 200


def test_missing_key_message_names_the_cli_options(make_server) -> None:
    server = make_server(embedded_worker=False)
    answer = httpx.get(f"{server.url}/v1/account")
    assert answer.status_code == 401
    assert "--api-key" in answer.json()["error"] and "VIDEOSERVE_API_KEY" in answer.json()["error"]
