"""Signals to autoscale over real HTTP, on SQLite and PostgreSQL: the per-model gauges on
`/metrics` and `GET /v1/admin/scaling`'s arithmetic, from jobs and workers in known states."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import stored_result, wait_until
from tests.integration.accounting import (
    StallingBackend,
    TestRegistry,
    headers,
    make_key,
    submit,
    wait_for_status,
    with_store,
)
from videoserve.jobs.store import JobStore, NewJob

TARGET_WAIT = 5.0
# Two jobs that finished on "cold": (inference, encode) seconds; their mean is 4.0.
FINISHED = ((2.0, 1.0), (4.0, 1.0))


def _finish_jobs_of_cold(store: JobStore) -> Any:
    """Completed jobs of "cold" with known timings, as a worker would have left them."""

    async def run() -> None:
        for n, (inference, encode) in enumerate(FINISHED):
            await store.create(
                NewJob(
                    id=f"done-{n}",
                    api_key_id="k",
                    model="cold",
                    served_by="cold",
                    params={},
                    max_attempts=1,
                )
            )
            claimed = await store.claim("gone-worker", ["cold"], 30)
            assert claimed is not None
            result = dataclasses.replace(
                stored_result(f"done-{n}"),
                served_by="cold",
                inference_time=inference,
                encode_time=encode,
            )
            assert await store.complete(claimed[1], result, 3600)

    return run()


def _scaling(server: Any, key: str) -> dict[str, dict[str, Any]]:
    # A generous timeout: the first read races the embedded worker loading its models in
    # the same process, which on a loaded 2-core CI host took more than httpx's 5 s.
    answer = httpx.get(f"{server.url}/v1/admin/scaling", headers=headers(key), timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["target_wait_seconds"] == TARGET_WAIT
    return {entry["model"]: entry for entry in body["data"]}


def _gauges(server: Any) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, sample.labels.get("model", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_scaling_signals_and_gauges_follow_the_queue_and_the_workers(
    make_server, model_cache
) -> None:
    registry = TestRegistry(
        model_cache, {"stall": (StallingBackend("stall"), 1.0), "cold": (None, 1.0)}
    )
    # The embedded worker serves "stall" and the tiny model, never "cold".
    server = make_server(
        registry=registry,
        worker_models=["stall", "tiny-t2v"],
        target_wait_seconds=TARGET_WAIT,
        lease_seconds=3.0,  # heartbeats every second: its loaded models show soon
    )
    admin, _ = make_key(server, "operator", admin=True)
    user, _ = make_key(server, "user", credits=100)
    with_store(server, _finish_jobs_of_cold)

    idle = _scaling(server, admin)
    assert idle["cold"]["demand"] == 0 and idle["cold"]["desired_workers"] == 0
    assert idle["cold"]["recent_job_seconds"] == 4.0

    running = submit(server, user, "stall", duration=4).json()["request_id"]
    wait_for_status(server, user, running, "PROCESSING")
    queued = [submit(server, user, "cold", duration=4).json()["request_id"] for _ in range(3)]

    # The worker's next beat reports "stall" loaded.
    entries = wait_until(lambda: (e := _scaling(server, admin))["stall"]["warm_workers"] == 1 and e)
    cold, stall, tiny = entries["cold"], entries["stall"], entries["tiny-t2v"]
    assert (cold["demand"], cold["running"], cold["live_workers"]) == (3, 0, 0)
    assert cold["warm_workers"] == 0 and cold["oldest_queued_seconds"] >= 0
    # ceil(demand x recent_job_seconds / target) + ceil(running / slots): ceil(3 x 4 / 5) = 3
    assert cold["desired_workers"] == math.ceil(3 * 4.0 / TARGET_WAIT) == 3
    assert (stall["demand"], stall["running"], stall["live_workers"]) == (0, 1, 1)
    assert stall["recent_job_seconds"] is None
    assert stall["desired_workers"] == 1  # its running job holds one worker
    assert (tiny["demand"], tiny["running"], tiny["live_workers"]) == (0, 0, 1)
    assert tiny["desired_workers"] == 0 and tiny["oldest_queued_seconds"] is None

    gauges = _gauges(server)
    assert gauges[("videoserve_queue_demand", "cold")] == 3
    assert gauges[("videoserve_queue_demand", "stall")] == 0
    assert gauges[("videoserve_queue_oldest_seconds", "cold")] > 0
    assert gauges[("videoserve_queue_oldest_seconds", "tiny-t2v")] == 0
    assert gauges[("videoserve_workers_warm", "stall")] == 1
    assert gauges[("videoserve_workers_warm", "cold")] == 0

    for request_id in (running, *queued):
        httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(user))


def test_scaling_needs_an_admin_key(make_server) -> None:
    server = make_server(embedded_worker=False)
    user, _ = make_key(server, "user", credits=10)
    answer = httpx.get(f"{server.url}/v1/admin/scaling", headers=headers(user))
    assert answer.status_code == 403
    assert "admin" in answer.json()["error"]
    admin, _ = make_key(server, "operator", admin=True)
    body = httpx.get(f"{server.url}/v1/admin/scaling", headers=headers(admin)).json()
    assert {e["model"] for e in body["data"]} >= {"tiny-t2v"}
    assert all(e["desired_workers"] == 0 for e in body["data"])  # nothing queued or running
