"""Hostile input gets a precise 4xx, never a 500 or a 503, and the same answer on SQLite and
PostgreSQL (issue 16, items 3 and 4): NUL bytes, lone surrogates and overlong values in ids,
cursors, webhook ids and idempotency keys; deeply nested JSON on every JSON route; odd static
paths."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port, start_server
from tests.integration.accounting import headers, submit
from videoserve.settings import Settings

NESTED = b"[" * 100_000
SURROGATE_KEY = b'{"prompt": "x", "\\ud800": 1}'
SOME_ID = "video_" + "0" * 32


def _json_routes() -> list[tuple[str, str]]:
    """(method, path) of every operation whose request body is JSON, from the app's OpenAPI."""
    from videoserve.api import create_app

    spec = create_app(Settings(data_dir=Path(tempfile.mkdtemp()))).openapi()
    return sorted(
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    )


JSON_ROUTES = _json_routes()
# Remix reads its JSON body itself and does not declare it (yet): covered all the same.
EXTRA_JSON_ROUTES = [("POST", "/v1/videos/{video_id}/remix")]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LiveServer]:
    """One SQLite server for the route sweep (the database plays no part in those answers)."""
    data_dir = tmp_path_factory.mktemp("hostile")
    server = start_server(
        Settings(
            data_dir=data_dir,
            host="127.0.0.1",
            port=free_port(),
            model_cache_dir=model_cache,
            embedded_worker=False,
            aliases={"sora-2-pro": "tiny-t2v"},
        )
    )
    yield server
    server.stop()


def _url(server: LiveServer, path: str) -> str:
    return server.url + path.replace("{model}", "sora-2-pro").replace("{video_id}", SOME_ID)


def test_the_sweep_covers_the_live_openapi(live: LiveServer) -> None:
    spec = httpx.get(f"{live.url}/openapi.json").json()
    live_routes = sorted(
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    )
    assert live_routes == JSON_ROUTES and len(JSON_ROUTES) >= 4


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES + EXTRA_JSON_ROUTES)
def test_deeply_nested_json_is_a_400_on_every_json_route(live: LiveServer, method, path) -> None:
    answer = httpx.request(
        method,
        _url(live, path),
        content=NESTED,
        headers={**headers(live.api_key), "content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    assert "nesting too deep" in answer.text


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES + EXTRA_JSON_ROUTES)
def test_a_lone_surrogate_key_is_a_400_on_every_json_route(live: LiveServer, method, path) -> None:
    answer = httpx.request(
        method,
        _url(live, path),
        content=SURROGATE_KEY,
        headers={**headers(live.api_key), "content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "\\ud800" in message  # named, escaped: the answer itself stays valid UTF-8


def test_a_lone_surrogate_in_a_multipart_field_is_a_400(live: LiveServer) -> None:
    answer = httpx.post(
        f"{live.url}/v1/videos",
        data={"prompt": "a cat \ud800".encode("utf-8", "surrogatepass")},
        files={"unused": ("a.txt", b"x")},
        headers=headers(live.api_key),
    )
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize(
    "path",
    ["/static/%00", "/static/" + "a" * 5000, "/static/" + "a/" * 300 + "x.js", "/static/%2e%2e/x"],
    ids=["nul", "5000 chars", "deep", "dot-dot"],
)
def test_odd_static_paths_are_404(live: LiveServer, path: str) -> None:
    answer = httpx.get(live.url + path)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]


# --- both databases: the same answers where PostgreSQL used to say 503 -----------------------


def test_unstorable_ids_cursors_and_keys_get_the_same_answer_on_both_databases(
    make_server,
) -> None:
    server = make_server(embedded_worker=False)
    key = server.api_key
    auth = headers(key)
    url = server.url
    for bad_id in ("%00", "video_%00", "v" * 65, "%ED%A0%80"):
        for path in (f"/v2/requests/{bad_id}/status", f"/v2/requests/{bad_id}"):
            answer = httpx.get(url + path, headers=auth)
            assert answer.status_code == 404, (path, answer.text)
        answer = httpx.get(f"{url}/v1/videos/{bad_id}", headers=auth)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert httpx.delete(f"{url}/v1/videos/{bad_id}", headers=auth).status_code == 404
        assert httpx.delete(f"{url}/v1/webhooks/{bad_id}", headers=auth).status_code == 404
    # A cursor no page can end with: 400 naming `after`.
    for bad_after in ("%00", "v" * 65):
        answer = httpx.get(f"{url}/v1/videos?after={bad_after}", headers=auth)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "after"
        listing = httpx.get(f"{url}/v1/requests?after={bad_after}", headers=auth)
        assert listing.status_code in (400, 404), listing.text
    # A NUL anywhere in the query string is refused before a route runs.
    answer = httpx.post(
        f"{url}/v2/sora-2-pro?webhook=http://x%00y", json={"prompt": "x"}, headers=auth
    )
    assert answer.status_code == 400 and answer.json()["param"] == "webhook", answer.text
    # Idempotency keys: up to 200 characters, as documented.
    longest = "k" * 200
    first = submit_with_key(server, key, longest)
    assert first.status_code == 200, first.text
    assert submit_with_key(server, key, longest).json()["request_id"] == first.json()["request_id"]
    over = submit_with_key(server, key, "k" * 201)
    assert over.status_code == 400 and over.json()["param"] == "Idempotency-Key", over.text
    assert "at most 200 characters" in over.json()["error"]
    # Text the store keeps, inside the body: 400 naming the field.
    for prompt in ('"a \\u0000 cat"', '"a \\ud800 cat"'):
        answer = httpx.post(
            f"{url}/v2/sora-2-pro",
            content=b'{"prompt": ' + prompt.encode() + b"}",
            headers={**auth, "content-type": "application/json"},
        )
        assert answer.status_code == 400 and answer.json()["param"] == "prompt", answer.text
    # Nothing of that reached the queue but the one idempotent request.
    assert submit(server, key, duration=4).status_code == 200


def submit_with_key(server: LiveServer, key: str, idempotency_key: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "a cat", "duration": 4},
        headers={**headers(key), "Idempotency-Key": idempotency_key},
    )
