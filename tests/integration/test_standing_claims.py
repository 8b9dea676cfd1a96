"""Standing claims (`jobs.handoff`): a submit claims for an idle worker slot of its process in
its own transaction, on SQLite and on the real PostgreSQL.

The claim is the worker's own statement, so what holds for claims holds here: the oldest
claimable job is taken, one offer serves one submit, a refused submit claims nothing, and the
per-key cap is kept. A worker stopping while a submit claims for it hands that job back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import stored_result
from videoserve import errors
from videoserve.jobs import ledger
from videoserve.jobs.failures import Failure, FailureCode
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.states import Status
from videoserve.jobs.store import JobStore, NewJob, Policy
from videoserve.runtime import Runtime
from videoserve.settings import Settings
from videoserve.worker.runner import Worker


def new_job(model: str, key: str = "key_a", **kw: Any) -> NewJob:
    return NewJob(
        id="video_" + secrets.token_hex(8),
        api_key_id=key,
        model=model,
        served_by=model,
        params={"prompt": "p", "duration": 4},
        max_attempts=2,
        **kw,
    )


@pytest.fixture
async def store(open_store: Callable[..., JobStore]) -> JobStore:
    s = open_store()
    await s.start()
    return s


def model_name() -> str:
    return "m-" + secrets.token_hex(4)  # a queue of its own in a shared database


async def test_a_submit_claims_for_a_standing_slot_before_it_returns(store: JobStore) -> None:
    model = model_name()
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    assert len(store.standing) == 1
    job, created = await store.create(new_job(model))
    # Claimed in the submit's transaction: the slot has its job when the submit returns.
    assert created and job.status == Status.QUEUED  # what the submit answers
    assert offer.taken.done() and len(store.standing) == 0
    handed = offer.taken.result()
    assert handed is not None
    claimed, lease = handed
    assert claimed.id == job.id == lease.job_id and lease.attempt == 1
    stored = await store.get(job.id)
    assert stored is not None and stored.status == Status.PROCESSING
    assert stored.worker_id == "w1" and stored.started_at is not None
    assert not store.standing.withdraw(offer)  # taken: the slot must run the job
    # The lease is a real one: it heartbeats and finishes the job like any claim's.
    assert (await store.heartbeat(lease, 30, 50)).alive
    assert not (await store.heartbeat(dataclasses.replace(lease, token="stale"), 30)).alive
    assert await store.complete(lease, stored_result("k"), retention_seconds=60)
    done = await store.get(job.id)
    assert done is not None and done.status == Status.COMPLETED


async def test_the_oldest_claimable_job_is_taken_not_the_newest(store: JobStore) -> None:
    model = model_name()
    first, _ = await store.create(new_job(model))
    second, _ = await store.create(new_job(model))
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    third, _ = await store.create(new_job(model))
    handed = offer.taken.result()
    assert handed is not None and handed[0].id == first.id
    statuses = [(await store.get(j.id)).status for j in (first, second, third)]  # type: ignore[union-attr]
    assert statuses == [Status.PROCESSING, Status.QUEUED, Status.QUEUED]
    assert await store.queue_position(second) == 1 and await store.queue_position(third) == 2


async def test_one_offer_serves_one_submit_and_only_its_models(store: JobStore) -> None:
    model, other = model_name(), model_name()
    elsewhere = store.standing.stand_by("w-other", [other], lease_seconds=30)
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    first, _ = await store.create(new_job(model))
    second, _ = await store.create(new_job(model))
    assert offer.taken.result() is not None and offer.taken.result()[0].id == first.id  # type: ignore[index]
    assert (await store.get(second.id)).status == Status.QUEUED  # type: ignore[union-attr]
    assert not elsewhere.taken.done() and store.standing.withdraw(elsewhere)
    # A withdrawn offer is never taken: the next submit stays queued.
    again = store.standing.stand_by("w1", [model], lease_seconds=30)
    assert store.standing.withdraw(again)
    third, _ = await store.create(new_job(model))
    assert not again.taken.done()
    assert (await store.get(third.id)).status == Status.QUEUED  # type: ignore[union-attr]


async def test_a_charged_submit_claims_and_a_refused_one_hands_nothing(store: JobStore) -> None:
    model = model_name()
    price = ledger.Charge(seconds=4, price_per_second=0.5)  # 2 credits
    key, _ = await KeyStore(store.database).create("buyer", credits=3)
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    job, _ = await store.create(new_job(model, key.id, charge=price))
    handed = offer.taken.result()
    assert handed is not None and handed[0].id == job.id and handed[0].cost == 2
    account = await ledger.account(store.database, key.id)
    assert account is not None and account.balance == 1
    # The next one cannot pay: nothing stored, nothing claimed, the slot is told so.
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    refused = new_job(model, key.id, charge=price)
    with pytest.raises(errors.InsufficientCredits):
        await store.create(refused)
    assert offer.taken.done() and offer.taken.result() is None
    assert await store.get(refused.id) is None


async def test_a_job_refused_by_moderation_is_not_claimed(store: JobStore) -> None:
    model = model_name()
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    blocked = new_job(model, failed_with=Failure(FailureCode.MODERATION, "blocked"))
    job, _ = await store.create(blocked)
    assert job.status == Status.FAILED
    assert not offer.taken.done() and len(store.standing) == 1  # still offered


async def test_the_per_key_cap_holds_for_claims_made_by_submits(
    open_store: Callable[..., JobStore],
) -> None:
    store = open_store(policy=Policy(max_running_per_key=1))
    await store.start()
    model = model_name()
    running, _ = await store.create(new_job(model, "key_capped"))
    assert await store.claim("w0", [model], lease_seconds=30) is not None
    offer = store.standing.stand_by("w1", [model], lease_seconds=30)
    second, _ = await store.create(new_job(model, "key_capped"))
    # The key has its one running job: the submit claims nothing for the slot (SQLite), or
    # leaves the offer to the slot's own claim (PostgreSQL, whose capped claims take a lock).
    if store.database.postgres:
        assert not offer.taken.done() and store.standing.withdraw(offer)
    else:
        assert offer.taken.result() is None
    assert (await store.get(second.id)).status == Status.QUEUED  # type: ignore[union-attr]
    assert (await store.get(running.id)).status == Status.PROCESSING  # type: ignore[union-attr]


async def until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_worker_stopping_while_a_submit_claims_for_it_hands_the_job_back(
    tmp_path: Path, model_cache: Path
) -> None:
    """SQLite: another connection holds the write lock, so the submit's transaction waits
    with its offer taken, and the worker is told to stop before the lock is let go. The job
    the submit claims for the stopping slot goes back to the queue, its attempt unspent."""
    db = tmp_path / "jobs.db"
    settings = Settings(
        data_dir=tmp_path / "data",
        model_cache_dir=model_cache,
        database_url=f"sqlite:///{db}",
        poll_interval_seconds=30,  # only the standing claim or the stop wakes the slot
    )
    runtime = Runtime(settings)
    await runtime.start(worker=False, maintenance=False)
    await runtime.store.migrate()
    key, _ = await KeyStore(runtime.database).create("k")
    worker = Worker(settings, runtime.store, runtime.registry, runtime.blobs)
    stop = asyncio.Event()
    working = asyncio.create_task(worker.run(stop))
    # Taken in a thread: the worker's own startup writes may hold the lock for a moment, and
    # they need the event loop to finish, so waiting for the lock on the loop would deadlock.
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        slots = settings.worker_concurrency
        await until(lambda: len(runtime.store.standing) == slots)
        await asyncio.to_thread(lock.execute, "BEGIN IMMEDIATE")  # the submit waits behind it
        submitting = asyncio.create_task(
            runtime.service.submit(key, "tiny-t2v", {"prompt": "p", "duration": 4})
        )
        await until(lambda: len(runtime.store.standing) == slots - 1)  # its offer is taken
        stop.set()  # before the claim can commit: the slot sees the stop first, either way
        lock.execute("ROLLBACK")
        job = await submitting
        await asyncio.wait_for(working, timeout=30)
        after = await runtime.store.get(job.id)
        assert after is not None and after.status == Status.QUEUED
        assert after.attempt == 0 and after.worker_id is None  # handed back, not spent
        assert worker.completed == 0 and not worker.current
    finally:
        lock.close()
        stop.set()
        await asyncio.gather(working, return_exceptions=True)
        await runtime.stop(grace=5)
