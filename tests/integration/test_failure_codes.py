"""Failures as data, over real HTTP on SQLite and on the real PostgreSQL: every way a job fails
carries its `FailureCode` in both dialects (Segmind's `code`, OpenAI's `error.code`), and domain
errors carry their structured fields (the 406's `balance` and `price`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.integration.accounting import (
    FailingBackend,
    StallingBackend,
    TestRegistry,
    UnencodableBackend,
    headers,
    make_key,
    submit,
    wait_for_status,
    with_store,
)
from videoserve.jobs.store import JobStore


def openai_video(server, key: str, video_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.url}/v1/videos/{video_id}", headers=headers(key))
    assert response.status_code == 200, response.text
    return response.json()


def final_body(server, key: str, request_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.url}/v2/requests/{request_id}", headers=headers(key))
    assert response.status_code == 422, response.text
    return response.json()


def test_cancel_is_coded_cancelled_in_both_dialects(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 1.0)})
    server = make_server(registry=registry)
    key = server.api_key
    running = submit(server, key, model="stall", duration=4).json()["request_id"]
    wait_for_status(server, key, running, "PROCESSING")
    httpx.post(f"{server.url}/v2/requests/{running}/cancel", headers=headers(key))
    failed = wait_for_status(server, key, running, "FAILED")
    assert (failed["code"], failed["error"]) == ("cancelled", "cancelled by the user")
    assert final_body(server, key, running)["code"] == "cancelled"
    error = openai_video(server, key, running)["error"]
    assert (error["code"], error["failure"]) == ("cancelled", "cancelled")
    # A second cancel knows it was cancelled from the code, not the wording.
    again = httpx.post(f"{server.url}/v2/requests/{running}/cancel", headers=headers(key)).json()
    assert again["cancelled"] is False
    assert again["message"] == "already cancelled; nothing to cancel"


def test_model_error_and_moderation_codes(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"broken": (FailingBackend("broken"), 1.0)})
    server = make_server(registry=registry, blocklist=["forbidden"])
    key = server.api_key
    broken = submit(server, key, model="broken", duration=4).json()["request_id"]
    failed = wait_for_status(server, key, broken, "FAILED")
    assert failed["code"] == "model_error" and "the GPU caught fire" in failed["error"]
    error = openai_video(server, key, broken)["error"]
    assert (error["code"], error["failure"]) == ("video_generation_failed", "model_error")

    blocked = submit(server, key, prompt="a forbidden ritual", duration=4).json()["request_id"]
    failed = wait_for_status(server, key, blocked, "FAILED")
    assert failed["code"] == "moderation" and failed["error"].startswith("content policy")
    error = openai_video(server, key, blocked)["error"]
    assert (error["code"], error["failure"]) == ("moderation_blocked", "moderation")

    # The blocking call's 422 carries the code too.
    body = {"prompt": "a cat", "duration": 4}
    answer = httpx.post(f"{server.url}/v1/broken", json=body, headers=headers(key), timeout=60)
    assert answer.status_code == 422 and answer.json()["code"] == "model_error"


def test_a_media_error_is_coded_and_leaves_no_scratch_files(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"flat": (UnencodableBackend("flat"), 1.0)})
    server = make_server(registry=registry)
    key = server.api_key
    request_id = submit(server, key, model="flat", duration=4).json()["request_id"]
    failed = wait_for_status(server, key, request_id, "FAILED")
    assert failed["code"] == "media_error" and "fps must be a positive" in failed["error"]
    assert openai_video(server, key, request_id)["error"]["failure"] == "media_error"
    # The thumbnail was made before the encode failed: neither file outlives the attempt.
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_worker_lost_is_coded_by_the_reaper(make_server) -> None:
    server = make_server(embedded_worker=False, max_attempts=1, lease_seconds=0.5)
    key = server.api_key
    request_id = submit(server, key, duration=4).json()["request_id"]

    async def claim_and_vanish(store: JobStore) -> None:
        assert await store.claim("doomed-worker", None, lease_seconds=0.01) is not None

    with_store(server, claim_and_vanish)
    failed = wait_for_status(server, key, request_id, "FAILED")
    assert failed["code"] == "worker_lost" and "doomed-worker" in failed["error"]
    assert openai_video(server, key, request_id)["error"]["failure"] == "worker_lost"


def test_domain_errors_carry_code_and_fields_in_both_dialects(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, _ = make_key(server, "poor", credits=3)
    refused = submit(server, key, duration=8)
    assert refused.status_code == 406
    assert refused.json() == {
        "error": "insufficient credits: balance 3, price 8 (8 s x 1 credit/s)",
        "code": "insufficient_credits",
        "balance": 3,
        "price": 8,
    }
    openai = httpx.post(
        f"{server.url}/v1/videos", json={"prompt": "a cat", "seconds": "4"}, headers=headers(key)
    )
    assert openai.status_code == 406
    error = openai.json()["error"]
    assert (error["code"], error["balance"], error["price"]) == ("insufficient_credits", 3, 4)
    assert error["type"] == "insufficient_quota" and "balance 3" in error["message"]

    unknown = submit(server, key, duration=4, colour="red")
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "invalid_request" and unknown.json()["param"] == "colour"
    missing = httpx.get(f"{server.url}/v2/requests/video_nope/status", headers=headers(key))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
