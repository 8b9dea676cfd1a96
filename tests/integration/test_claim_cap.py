"""The per-key cap on running jobs (VIDEOSERVE_MAX_RUNNING_PER_KEY), enforced by the claim
statement itself: on SQLite and on the real PostgreSQL, with concurrent claimers."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx

from tests.conftest import stored_result
from tests.integration.accounting import (
    StallingBackend,
    TestRegistry,
    headers,
    make_key,
    status_of,
    submit,
    wait_for_status,
)
from videoserve.jobs.states import Status
from videoserve.jobs.store import JobStore, NewJob, Policy
from videoserve.settings import Settings


def new_job(api_key_id: str) -> NewJob:
    return NewJob(
        id="video_" + secrets.token_hex(8),
        api_key_id=api_key_id,
        model="tiny-t2v",
        served_by="tiny-t2v",
        params={"prompt": "p"},
        max_attempts=2,
    )


async def test_concurrent_claimers_respect_the_cap(database_url: str) -> None:
    url = Settings(database_url=database_url).resolved_database_url()
    store = JobStore.open(url, policy=Policy(max_running_per_key=2))
    await store.start()
    try:
        # Rounds of twelve claimers at once, each on its own connection: without serialising
        # the claims on PostgreSQL, some would count the same snapshot and overshoot the cap.
        for round_ in range(5):
            busy, other = f"key_busy{round_}", f"key_other{round_}"
            for _ in range(10):
                await store.create(new_job(busy))
            await store.create(new_job(other))
            claims = await asyncio.gather(
                *(store.claim(f"w{i}", None, lease_seconds=30) for i in range(12))
            )
            owners = sorted(claim[0].api_key_id for claim in claims if claim is not None)
            assert owners == [busy, busy, other]
        # A slot frees when a job finishes; the next claim takes the key's next job.
        running = await store.claim("w-none", None, lease_seconds=30)
        assert running is None
        job, _ = await store.create(new_job("key_solo"))
        claimed = await store.claim("w-solo", None, lease_seconds=30)
        assert claimed is not None and claimed[0].id == job.id
        assert await store.complete(claimed[1], stored_result("k"), retention_seconds=60)
        counts = await store.count_active()
        assert counts[("tiny-t2v", Status.PROCESSING.value)] == 15
        assert counts[("tiny-t2v", Status.QUEUED.value)] == 40
    finally:
        await store.close()


def test_worker_runs_one_job_per_key_at_a_time(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 1.0)})
    server = make_server(registry=registry, max_running_per_key=1, worker_concurrency=3)
    busy, _ = make_key(server, "busy")
    other, _ = make_key(server, "other")
    first = submit(server, busy, model="stall", duration=4).json()["request_id"]
    second = submit(server, busy, model="stall", duration=4).json()["request_id"]
    third = submit(server, other, model="stall", duration=4).json()["request_id"]
    wait_for_status(server, busy, first, "PROCESSING")
    wait_for_status(server, other, third, "PROCESSING")  # another key is not held back
    assert status_of(server, busy, second)["status"] == "QUEUED"  # a slot is free, the cap holds
    httpx.post(f"{server.url}/v2/requests/{first}/cancel", headers=headers(busy))
    wait_for_status(server, busy, first, "FAILED")
    wait_for_status(server, busy, second, "PROCESSING")  # the freed slot is taken at once
