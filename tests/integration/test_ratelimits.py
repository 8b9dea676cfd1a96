"""Rate limits over real HTTP: separate submit and status buckets, the 429 and its headers, and
counts shared through the real Redis by two API servers."""

from __future__ import annotations

import re
import secrets
import time

import httpx
import pytest

from tests.conftest import service_unavailable
from tests.integration.accounting import headers, make_key, submit

REDIS_URL = "redis://127.0.0.1:6379/0"
REFUSAL = re.compile(r"^rate limit exceeded: 3 per 1 minute; retry in (\d+) s$")
REFUSAL_OF_5 = re.compile(r"^rate limit exceeded: 5 per 1 minute; retry in \d+ s$")


def test_submit_limit_is_429_while_status_polls_keep_answering(make_server) -> None:
    server = make_server(embedded_worker=False, rate_limit="3/minute")
    key = server.api_key
    ids = []
    for remaining in (2, 1, 0):
        accepted = submit(server, key, duration=4)
        assert accepted.status_code == 200, accepted.text
        assert accepted.headers["X-RateLimit-Limit"] == "3"
        assert accepted.headers["X-RateLimit-Remaining"] == str(remaining)
        assert int(accepted.headers["X-RateLimit-Reset"]) >= time.time()
        ids.append(accepted.json()["request_id"])
    refused = submit(server, key, duration=4)
    assert refused.status_code == 429
    retry = REFUSAL.match(refused.json()["error"])
    assert retry is not None, refused.json()
    assert refused.headers["Retry-After"] == retry.group(1) and 1 <= int(retry.group(1)) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # The blocking call and the Videos API draw on the same submit bucket.
    blocking = httpx.post(f"{server.url}/v1/sora-2-pro", json={"prompt": "x"}, headers=headers(key))
    assert blocking.status_code == 429
    videos = httpx.post(f"{server.url}/v1/videos", json={"prompt": "x"}, headers=headers(key))
    assert videos.status_code == 429
    # Polling is a separate bucket: a client that submitted keeps seeing its jobs.
    for _ in range(25):
        for request_id in ids:
            poll = httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers=headers(key))
            assert poll.status_code == 200
            assert poll.headers["X-RateLimit-Limit"] == "6000"
    # Another key has its own counts; health checks are not limited.
    other, _ = make_key(server, "other")
    assert submit(server, other, duration=4).status_code == 200
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200 and "X-RateLimit-Limit" not in health.headers


def test_status_limit_has_its_own_bucket(make_server) -> None:
    server = make_server(embedded_worker=False, status_rate_limit="3/minute", rate_limit="")
    key = server.api_key
    request_id = submit(server, key, duration=4).json()["request_id"]
    url = f"{server.url}/v2/requests/{request_id}/status"
    assert [httpx.get(url, headers=headers(key)).status_code for _ in range(4)] == [
        200,
        200,
        200,
        429,
    ]
    # No submit limit is configured: submitting still works, with no rate-limit headers.
    again = submit(server, key, duration=4)
    assert again.status_code == 200 and "X-RateLimit-Limit" not in again.headers


def test_every_poll_counts_once_whoever_answers_it(make_server) -> None:
    """Polls are answered ahead of the middlewares (`api.polls`) unless something is wrong;
    the ones passed on to the app (an unknown id, another key's job) must not be counted a
    second time there, and the refusal keeps the request's id."""
    server = make_server(embedded_worker=False, status_rate_limit="5/minute", rate_limit="")
    key = server.api_key
    other, _ = make_key(server, "other")
    request_id = submit(server, key, duration=4).json()["request_id"]
    mine = f"{server.url}/v2/requests/{request_id}/status"
    unknown = f"{server.url}/v2/requests/video_{'0' * 32}/status"
    answered = httpx.get(mine, headers={**headers(key), "X-Request-Id": "poll-1"})
    assert answered.status_code == 200 and answered.json()["status"] == "QUEUED"
    assert answered.headers["X-RateLimit-Remaining"] == "4"
    assert answered.headers["X-Request-Id"] == "poll-1"
    missing = httpx.get(unknown, headers={**headers(key), "X-Request-Id": "poll-2"})
    assert missing.status_code == 404 and missing.headers["X-RateLimit-Remaining"] == "3"
    assert missing.headers["X-Request-Id"] == "poll-2"  # the id chosen ahead is kept
    assert httpx.get(mine, headers=headers(key)).headers["X-RateLimit-Remaining"] == "2"
    # Another key's poll of this job is that key's call: its own bucket, once.
    theirs = httpx.get(mine, headers=headers(other))
    assert theirs.status_code == 404 and theirs.headers["X-RateLimit-Remaining"] == "4"
    assert [httpx.get(mine, headers=headers(key)).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    refused = httpx.get(mine, headers={**headers(key), "X-Request-Id": "poll-9"})
    assert refused.status_code == 429
    assert REFUSAL_OF_5.match(refused.json()["error"])
    assert refused.headers["X-Request-Id"] == "poll-9"
    assert refused.headers["X-RateLimit-Remaining"] == "0" and int(refused.headers["Retry-After"])


@pytest.fixture
def redis_prefix():
    """A key prefix of this test's own in the real Redis, removed afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        service_unavailable("Redis at " + REDIS_URL, str(exc))
    prefix = "vs_test_" + secrets.token_hex(6)
    yield prefix
    for name in client.scan_iter(f"{prefix}*"):
        client.delete(name)
    client.close()


def test_redis_limits_are_shared_by_two_api_servers(
    make_server, redis_prefix: str, database_url: str, tmp_path
) -> None:
    shared = {
        "redis_url": REDIS_URL,
        "rate_limit": "3/minute",
        "rate_limit_prefix": redis_prefix,
        "data_dir": tmp_path / "shared",
        "database_url": database_url,
        "embedded_worker": False,
    }
    first, second = make_server(**shared), make_server(**shared)
    key = first.api_key  # one database: a key works on both servers
    remaining = []
    for server in (first, second, first):
        accepted = submit(server, key, duration=4)
        assert accepted.status_code == 200, accepted.text
        remaining.append(accepted.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]  # one count across both processes
    for server in (second, first):
        refused = submit(server, key, duration=4)
        assert refused.status_code == 429 and REFUSAL.match(refused.json()["error"])
