"""Honest waiting over real HTTP, on SQLite and PostgreSQL: a queued job's
`estimated_start_seconds` (null with no history or no live worker, then a number from its
model's recent job times and the live workers' slots), beside `queue_position` and
`waiting_reason`, in both dialects."""

from __future__ import annotations

import math
from typing import Any

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
)
from videoserve.jobs.estimates import estimate
from videoserve.jobs.workers import no_worker_reason

STALL, TIMED, FRESH, UNSERVED = "stall", "timed", "fresh", "unserved"


def test_estimated_start_seconds_follows_history_and_live_workers(make_server, model_cache) -> None:
    registry = TestRegistry(
        model_cache,
        {
            STALL: (StallingBackend(STALL), 1.0),
            TIMED: (None, 1.0),
            FRESH: (None, 1.0),
            UNSERVED: (None, 1.0),
        },
    )
    server = make_server(registry=registry, worker_models=[STALL, TIMED, FRESH])
    key, _ = make_key(server, "waiting", credits=1000)
    # History: one completed job of TIMED (the tiny model, really run).
    done = submit(server, key, TIMED, duration=4).json()["request_id"]
    wait_for_status(server, key, done, "COMPLETED", timeout=120)
    metrics = httpx.get(f"{server.url}/v2/requests/{done}", headers=headers(key)).json()["metrics"]
    job_seconds = metrics["inference_time"] + metrics["encode_time"]

    # The worker's one slot is busy from here on: what follows waits in line.
    running = submit(server, key, STALL, duration=4).json()["request_id"]
    wait_for_status(server, key, running, "PROCESSING")
    first, second = (submit(server, key, TIMED, duration=4).json()["request_id"] for _ in "12")
    fresh = submit(server, key, FRESH, duration=4).json()["request_id"]
    orphan = submit(server, key, UNSERVED, duration=4).json()["request_id"]

    # The facts are re-read every few seconds per process: wait for the completed job.
    body = wait_until(
        lambda: (b := status_of(server, key, second))["estimated_start_seconds"] is not None and b
    )
    assert body["status"] == "QUEUED" and body["queue_position"] == 2
    assert "waiting_reason" not in body
    # One live slot: ceil(2 / 1) jobs of the model's recent duration.
    assert body["estimated_start_seconds"] == pytest.approx(2 * job_seconds, abs=0.1)
    assert estimate(2, job_seconds, 1) == pytest.approx(body["estimated_start_seconds"])
    assert status_of(server, key, first)["estimated_start_seconds"] == pytest.approx(
        job_seconds, abs=0.1
    )
    # The OpenAI video object says the same.
    video = httpx.get(f"{server.url}/v1/videos/{second}", headers=headers(key)).json()
    assert video["status"] == "queued" and video["queue_position"] == 2
    assert video["estimated_start_seconds"] == body["estimated_start_seconds"]

    # No completed job of its model yet: unknown, and no reason beyond its place in line.
    body = status_of(server, key, fresh)
    assert body["queue_position"] == 1 and body["estimated_start_seconds"] is None
    assert "waiting_reason" not in body
    # No live worker serves it: unknown, and the reason says why.
    body = status_of(server, key, orphan)
    assert body["estimated_start_seconds"] is None
    assert body["waiting_reason"] == no_worker_reason(UNSERVED)
    video = httpx.get(f"{server.url}/v1/videos/{orphan}", headers=headers(key)).json()
    assert video["waiting_reason"] == no_worker_reason(UNSERVED)
    assert video["estimated_start_seconds"] is None

    for request_id in (running, first, second, fresh, orphan):
        httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(key))


@pytest.mark.parametrize(
    ("position", "job_seconds", "slots", "expected"),
    [
        (1, 10.0, 1, 10.0),
        (3, 10.0, 2, 20.0),  # ceil(3 / 2) = 2 rounds
        (4, 2.5, 4, 2.5),
        (1, None, 1, None),  # no history
        (1, 10.0, 0, None),  # no live worker
        (None, 10.0, 1, None),
    ],
)
def test_the_estimate_arithmetic(
    position: int | None, job_seconds: float | None, slots: int, expected: Any
) -> None:
    assert estimate(position, job_seconds, slots) == expected
    if expected is not None:
        assert expected == math.ceil(position / slots) * job_seconds  # type: ignore[operator]
