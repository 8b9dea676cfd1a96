"""The per-request execution timeout (`X-Execution-Timeout`) over real HTTP, on SQLite and
PostgreSQL: a job that runs longer ends FAILED `timeout`, refunded; a value that is not a
positive number, or above its model's limit, is a 400 naming the header (and the limit)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import videoserve
from tests.integration.accounting import (
    StallingBackend,
    TestRegistry,
    headers,
    ledger_of,
    make_key,
    stored_balance,
    wait_for_status,
)

STALL = "stall"  # runs until stopped: only a timeout (or a cancel) ends it
LIMITED = "limited"  # the tiny model with a limit of its own: max_job_seconds = 300


def _registry(model_cache: Any) -> TestRegistry:
    return TestRegistry(
        model_cache,
        {STALL: (StallingBackend(STALL), 1.0), LIMITED: (None, 1.0)},
        options={LIMITED: {"max_job_seconds": 300}},
    )


def _submit(server: Any, key: str, model: str, value: str | None) -> httpx.Response:
    extra = {} if value is None else {"X-Execution-Timeout": value}
    return httpx.post(
        f"{server.url}/v2/{model}",
        json={"prompt": "a lighthouse at dusk", "duration": 4},
        headers=headers(key) | extra,
        timeout=30,
    )


def test_a_job_running_past_its_execution_timeout_fails_timeout_refunded(
    make_server, model_cache
) -> None:
    server = make_server(registry=_registry(model_cache), worker_models=[STALL])
    key, key_id = make_key(server, "timed", credits=100)
    answer = _submit(server, key, STALL, "0.5")
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    body = wait_for_status(server, key, request_id, "FAILED", timeout=60)
    assert body["code"] == "timeout", body
    assert "limit of 0.5 s" in body["error"]
    video = httpx.get(f"{server.url}/v1/videos/{request_id}", headers=headers(key)).json()
    assert video["status"] == "failed" and video["error"]["code"] == "timeout"
    kinds = sorted(e.kind for e in ledger_of(server, key_id) if e.job_id == request_id)
    assert kinds == ["charge", "refund"]
    assert stored_balance(server, key_id) == 100

    # The client's keyword sends the same header.
    with videoserve.Client(api_key=key, base_url=f"{server.url}/v1") as client:
        job = client.submit_async(STALL, prompt="a kite", duration=4, execution_timeout=0.5)
        with pytest.raises(videoserve.InferenceFailed) as failed:
            job.wait(timeout=60, interval=0.1)
    assert failed.value.failure == "timeout"


def test_a_job_within_its_execution_timeout_completes(make_server, model_cache) -> None:
    server = make_server(registry=_registry(model_cache), worker_models=[LIMITED])
    key, key_id = make_key(server, "in-time", credits=100)
    request_id = _submit(server, key, LIMITED, "299.5").json()["request_id"]
    wait_for_status(server, key, request_id, "COMPLETED", timeout=120)
    assert [e.kind for e in ledger_of(server, key_id) if e.job_id == request_id] == ["charge"]


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf", ""])
def test_a_bad_execution_timeout_is_a_400_naming_the_header(
    make_server, model_cache, value
) -> None:
    server = make_server(registry=_registry(model_cache), embedded_worker=False)
    key, key_id = make_key(server, "bad", credits=10)
    answer = _submit(server, key, LIMITED, value)
    assert answer.status_code == 400, answer.text
    assert "X-Execution-Timeout" in answer.json()["error"]
    openai_answer = httpx.post(
        f"{server.url}/v1/videos",
        json={"prompt": "a lighthouse", "seconds": "4", "model": LIMITED},
        headers=headers(key) | {"X-Execution-Timeout": value},
    )
    assert openai_answer.status_code == 400, openai_answer.text
    error = openai_answer.json()["error"]
    assert "X-Execution-Timeout" in error["message"] and error["param"] == "X-Execution-Timeout"
    assert ledger_of(server, key_id)[-1].kind == "grant"  # nothing was charged


def test_an_execution_timeout_above_the_models_limit_is_a_400_naming_the_limit(
    make_server, model_cache
) -> None:
    server = make_server(
        registry=_registry(model_cache), embedded_worker=False, max_job_seconds=600
    )
    key, key_id = make_key(server, "greedy", credits=10)
    answer = _submit(server, key, LIMITED, "310")  # its own limit is 300 s
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == (
        "X-Execution-Timeout: at most the limit of model 'limited', 300 s (got 310)"
    )
    # Without a limit of its own, the server's VIDEOSERVE_MAX_JOB_SECONDS bounds it.
    answer = _submit(server, key, STALL, "601")
    assert answer.status_code == 400 and "600 s" in answer.json()["error"]
    assert _submit(server, key, STALL, "600").status_code == 200
    for path in ("/v1/videos/extensions", "/v1/videos/edits"):
        answer = httpx.post(
            f"{server.url}{path}",
            json={"prompt": "more", "video": {"id": "video_none"}},
            headers=headers(key) | {"X-Execution-Timeout": "never"},
        )
        assert answer.status_code == 400, (path, answer.text)
        assert "X-Execution-Timeout" in answer.json()["error"]["message"]
    blocking = httpx.post(
        f"{server.url}/v1/{LIMITED}",
        json={"prompt": "x", "duration": 4},
        headers=headers(key) | {"X-Execution-Timeout": "301"},
    )
    assert blocking.status_code == 400 and "300 s" in blocking.json()["error"]
    assert [e.kind for e in ledger_of(server, key_id)] == ["grant", "charge"]  # the 600 s one
