"""Warm routing on SQLite and PostgreSQL: a worker claims jobs of the models it has loaded
before older jobs of models it would have to load, but never passes over a job queued longer
than `VIDEOSERVE_WARM_SKIP_SECONDS`; and `/metrics` counts and times the loads."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, wait_until
from tests.integration.accounting import TestRegistry, make_key, submit, wait_for_status
from videoserve import clock
from videoserve.jobs.handoff import StandingClaims
from videoserve.jobs.store import JobStore, NewJob, Policy


def _job(job_id: str, model: str) -> NewJob:
    return NewJob(
        id=job_id, api_key_id="k", model=model, served_by=model, params={}, max_attempts=1
    )


async def _until_older_than(store: JobStore, job_id: str, seconds: float) -> None:
    """Until the job has been queued longer than `seconds` (a wait on the clock itself)."""
    job = await store.get(job_id)
    assert job is not None
    await asyncio.sleep(max(0.0, job.created_at + seconds - clock.now()) + 0.01)
    assert clock.now() - job.created_at > seconds


async def test_a_warm_claim_takes_the_loaded_models_job_before_an_older_cold_one(
    open_store: Any,
) -> None:
    store: JobStore = open_store(policy=Policy(warm_skip_seconds=600))
    await store.migrate()
    await store.create(_job("cold-b", "b"))
    await store.create(_job("warm-a", "a"))
    claimed = await store.claim("w", ["a", "b"], 30, warm=["a"])
    assert claimed is not None and claimed[0].id == "warm-a"
    # No warm job left: the plain claim takes the cold one.
    claimed = await store.claim("w", ["a", "b"], 30, warm=["a"])
    assert claimed is not None and claimed[0].id == "cold-b"
    assert await store.claim("w", ["a", "b"], 30, warm=["a"]) is None


async def test_a_job_older_than_the_skip_bound_is_never_passed_over(open_store: Any) -> None:
    store: JobStore = open_store(policy=Policy(warm_skip_seconds=0.2))
    await store.migrate()
    await store.create(_job("old-b", "b"))
    await _until_older_than(store, "old-b", 0.2)
    await store.create(_job("new-a", "a"))
    claimed = await store.claim("w", ["a", "b"], 30, warm=["a"])
    assert claimed is not None and claimed[0].id == "old-b"  # waited past the bound: first
    claimed = await store.claim("w", ["a", "b"], 30, warm=["a"])
    assert claimed is not None and claimed[0].id == "new-a"


async def test_warm_skip_zero_is_oldest_first(open_store: Any) -> None:
    store: JobStore = open_store(policy=Policy(warm_skip_seconds=0))
    await store.migrate()
    await store.create(_job("cold-b", "b"))
    await store.create(_job("warm-a", "a"))
    claimed = await store.claim("w", ["a", "b"], 30, warm=["a"])
    assert claimed is not None and claimed[0].id == "cold-b"


async def test_a_submit_hands_its_job_to_an_idle_slot_with_the_model_loaded() -> None:
    standing = StandingClaims()
    cold = standing.stand_by("cold-worker", ["a", "b"], 30, warm=["b"])
    warm = standing.stand_by("warm-worker", ["a", "b"], 30, warm=["a"])
    assert standing.take("a") is warm  # the younger offer, but its worker has "a" loaded
    assert standing.take("a") is cold  # none warm left: the oldest that serves it
    assert standing.take("a") is None


# --- over HTTP: a worker process with one model preloaded ------------------------------------
WARM, COLD = "warm-a", "cold-b"  # two tiny models; the worker preloads WARM only


def _api_only(make_server: Any, model_cache: Any) -> LiveServer:
    """An API with no worker: what it queues waits until a worker joins the database."""
    return make_server(registry=_registry(model_cache), embedded_worker=False)


def _registry(model_cache: Any) -> TestRegistry:
    return TestRegistry(model_cache, {WARM: (None, 1.0), COLD: (None, 1.0)})


def _worker(make_server: Any, model_cache: Any, api: LiveServer, skip: float) -> LiveServer:
    return make_server(
        registry=_registry(model_cache),
        database_url=api.settings.database_url,
        worker_models=[WARM, COLD],
        preload=[WARM],
        warm_skip_seconds=skip,
    )


def _started_at(server: LiveServer, key: str, request_id: str) -> str:
    body = wait_for_status(server, key, request_id, "COMPLETED", timeout=120)
    return str(body["started_at"])


def _samples(server: LiveServer) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, sample.labels.get("model", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_takes_its_loaded_models_job_before_an_older_one_and_counts_its_loads(
    make_server, model_cache
) -> None:
    api = _api_only(make_server, model_cache)
    key, _ = make_key(api, "warm", credits=100)
    older = submit(api, key, COLD, duration=4).json()["request_id"]
    newer = submit(api, key, WARM, duration=4).json()["request_id"]
    worker = _worker(make_server, model_cache, api, skip=600)
    # ISO 8601 in UTC with the same layout: their string order is their time order.
    assert _started_at(api, key, newer) < _started_at(api, key, older)

    samples = _samples(worker)  # the loads of the process that runs the worker
    assert samples[("videoserve_model_loads_total", WARM)] == 1  # its preload
    assert samples[("videoserve_model_loads_total", COLD)] == 1  # the cold job's load
    assert samples[("videoserve_model_load_seconds_count", WARM)] == 1
    assert samples[("videoserve_model_load_seconds_count", COLD)] == 1
    assert samples[("videoserve_model_load_seconds_sum", COLD)] > 0
    assert ("videoserve_model_loads_total", WARM) not in _samples(api)  # it ran no worker


def test_a_job_queued_longer_than_the_skip_bound_goes_first(make_server, model_cache) -> None:
    api = _api_only(make_server, model_cache)
    key, _ = make_key(api, "fair", credits=100)
    older = submit(api, key, COLD, duration=4).json()["request_id"]
    created = clock.now()
    wait_until(lambda: clock.now() - created > 0.5)  # older than the bound below
    newer = submit(api, key, WARM, duration=4).json()["request_id"]
    _worker(make_server, model_cache, api, skip=0.5)
    assert _started_at(api, key, older) < _started_at(api, key, newer)


async def test_concurrent_warm_claimers_never_share_a_job(open_store: Any) -> None:
    store: JobStore = open_store(policy=Policy(warm_skip_seconds=600))
    await store.migrate()
    ids = set()
    for n in range(40):
        ids.add((await store.create(_job(f"job-{n}", "ab"[n % 2])))[0].id)
    claimed: list[str] = []

    async def claimer(name: str, warm: list[str]) -> None:
        while (got := await store.claim(name, ["a", "b"], 30, warm=warm)) is not None:
            claimed.append(got[0].id)

    await asyncio.gather(*(claimer(f"w{i}", ["a"] if i % 2 else ["b"]) for i in range(6)))
    assert sorted(claimed) == sorted(ids)
