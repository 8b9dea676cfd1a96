"""Honest waiting: a queued job says why it waits when no live worker serves its model, on
the poll's fast path and the routes alike, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import wait_until
from tests.integration.accounting import (
    StallingBackend,
    TestRegistry,
    headers,
    make_key,
    status_of,
    submit,
    wait_for_status,
    with_store,
)
from videoserve.api.app import NO_WORKER_WARNING
from videoserve.jobs.workers import WorkerRegistry, WorkerState, no_worker_reason


def test_waiting_reason_names_a_model_no_live_worker_serves(make_server, model_cache) -> None:
    registry = TestRegistry(
        model_cache, {"stall": (StallingBackend("stall"), 1.0), "unserved": (None, 1.0)}
    )
    server = make_server(registry=registry, worker_models=["stall"])
    key, _ = make_key(server, "waiting", credits=100)
    running = submit(server, key, "stall", duration=4).json()["request_id"]
    wait_for_status(server, key, running, "PROCESSING")

    behind = submit(server, key, "stall", duration=4).json()["request_id"]
    # A live worker serves "stall": its queued job has a place in line and no other reason.
    body = wait_until(
        lambda: (b := status_of(server, key, behind)) and "waiting_reason" not in b and b
    )
    assert body["status"] == "QUEUED" and body["queue_position"] == 1

    orphan = submit(server, key, "unserved", duration=4).json()["request_id"]
    body = status_of(server, key, orphan)  # the poll's fast path
    assert body["status"] == "QUEUED"
    assert body["waiting_reason"] == no_worker_reason("unserved")
    assert "no worker serving model 'unserved' is running" in body["waiting_reason"]
    result = httpx.get(f"{server.url}/v2/requests/{orphan}", headers=headers(key)).json()
    assert result["waiting_reason"] == body["waiting_reason"]  # the routes' view too

    for request_id in (running, behind, orphan):
        httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(key))


def test_api_only_server_warns_at_start_and_reason_clears_when_a_worker_registers(
    make_server, model_cache, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="videoserve.api"):
        server = make_server(embedded_worker=False)
    assert NO_WORKER_WARNING in caplog.text
    key, _ = make_key(server, "api-only", credits=100)
    request_id = submit(server, key, "sora-2-pro", duration=4).json()["request_id"]
    body = status_of(server, key, request_id)
    assert body["status"] == "QUEUED"
    assert body["waiting_reason"] == no_worker_reason("tiny-t2v")  # the model behind the alias

    async def register(store) -> None:  # a worker host's presence row, as its beat writes it
        await WorkerRegistry(store.database).beat(
            WorkerState(
                id="gpu-1:1", host="gpu-1", models=["tiny-t2v"], concurrency=1, current_jobs=[]
            )
        )

    with_store(server, register)
    # The server re-reads the live workers every few seconds, not on each poll.
    body = wait_until(
        lambda: (b := status_of(server, key, request_id)) and "waiting_reason" not in b and b
    )
    assert body["status"] == "QUEUED"
