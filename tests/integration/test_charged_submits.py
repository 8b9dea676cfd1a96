"""Charged submits on SQLite and on the real PostgreSQL: the charge, the ticket and the job
commit together or not at all, concurrently.

On PostgreSQL a charged submit is one statement (`statements.charged_insert`); on SQLite one
transaction. Either way: a refused charge stores nothing and takes no ticket (no gap in the
queue's positions), no key is overspent, a raced Idempotency-Key charges once, and the job
announces itself to another store (another process) once committed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from videoserve import errors
from videoserve.jobs import ledger
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.statements import QUEUED_TOPIC
from videoserve.jobs.states import Status
from videoserve.jobs.store import JobStore, NewJob
from videoserve.settings import Settings

PRICE = ledger.Charge(seconds=4, price_per_second=0.5)  # 2 credits a job


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[JobStore]:
    url = Settings(database_url=database_url).resolved_database_url()
    s = JobStore.open(url)
    await s.start()
    yield s
    await s.close()


def charged_job(key_id: str, model: str = "tiny-t2v", **kw: object) -> NewJob:
    return NewJob(
        id="video_" + secrets.token_hex(8),
        api_key_id=key_id,
        model=model,
        served_by=model,
        params={"prompt": "p", "duration": 4},
        max_attempts=2,
        charge=PRICE,
        **kw,  # type: ignore[arg-type]
    )


async def submit(store: JobStore, new: NewJob) -> NewJob | None:
    """The job if it was accepted, None if the key could not pay."""
    try:
        await store.create(new)
    except errors.InsufficientCredits:
        return None
    return new


async def test_concurrent_charges_never_overspend_and_refusals_take_no_ticket(
    store: JobStore,
) -> None:
    key, _ = await KeyStore(store.database).create("buyer", credits=10)  # pays for 5 jobs
    # A model nobody else uses here, so its tickets start at 1.
    model = "m-" + secrets.token_hex(4)
    accepted = [
        new
        for new in await asyncio.gather(
            *(submit(store, charged_job(key.id, model)) for _ in range(12))
        )
        if new is not None
    ]
    assert len(accepted) == 5
    account = await ledger.account(store.database, key.id)
    assert account is not None
    assert account.balance == 0 and account.spent == 10
    entries = await ledger.entries(store.database, key.id)
    assert sorted(e.job_id for e in entries if e.kind == "charge") == sorted(
        new.id for new in accepted
    )
    assert sum(e.amount for e in entries) == account.balance
    jobs = [await store.get(new.id) for new in accepted]
    assert all(job is not None and job.status == Status.QUEUED for job in jobs)
    # The seven refused submits took no ticket: the five accepted hold 1..5, positions 1..5.
    assert sorted(job.ticket for job in jobs if job is not None) == [1, 2, 3, 4, 5]
    assert sorted([await store.queue_position(job) for job in jobs if job is not None]) == [
        1,
        2,
        3,
        4,
        5,
    ]
    for job in jobs:
        assert job is not None
        assert job.cost == 2 and job.result is None and job.started_at is None
        assert job.params == {"prompt": "p", "duration": 4}
    # Nothing of a refused submit was stored; credits arrive, and the next job is ticket 6.
    await KeyStore(store.database).credit(key.id, 2)
    sixth = charged_job(key.id, model)
    job, created = await store.create(sixth)
    assert created and job.ticket == 6 and await store.queue_position(job) == 6
    assert (await store.count_by_status())[Status.QUEUED.value] == 6


async def test_a_refused_charge_says_the_balance_and_stores_nothing(store: JobStore) -> None:
    key, _ = await KeyStore(store.database).create("poor", credits=1)
    new = charged_job(key.id)
    with pytest.raises(errors.InsufficientCredits, match="balance 1, price 2"):
        await store.create(new)
    assert await store.get(new.id) is None
    assert [e.kind for e in await ledger.entries(store.database, key.id)] == ["grant"]


async def test_raced_idempotent_charged_submits_charge_once(store: JobStore) -> None:
    key, _ = await KeyStore(store.database).create("retrier", credits=100)
    results = await asyncio.gather(
        *(
            store.create(charged_job(key.id, idempotency_key="same", request_hash="h"))
            for _ in range(8)
        )
    )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    account = await ledger.account(store.database, key.id)
    assert account is not None and account.balance == 98 and account.spent == 2


async def test_an_unlimited_key_is_charged_too(store: JobStore) -> None:
    key, _ = await KeyStore(store.database).create("unlimited")
    job, created = await store.create(charged_job(key.id))
    assert created and job.cost == 2
    account = await ledger.account(store.database, key.id)
    assert account is not None and account.balance == -2 and account.spent == 2


async def test_a_charged_submit_wakes_another_store(database_url: str, store: JobStore) -> None:
    # On PostgreSQL another store hears it over LISTEN/NOTIFY; on SQLite only in-process.
    reader = store
    if store.notifier.crosses_processes:
        reader = JobStore.open(Settings(database_url=database_url).resolved_database_url())
        await reader.start()
    try:
        key, _ = await KeyStore(store.database).create("waker", credits=10)
        waiter = asyncio.create_task(reader.notifier.wait(QUEUED_TOPIC, timeout=10))
        await asyncio.sleep(0)  # the waiter is registered before the submit
        await store.create(charged_job(key.id))
        assert await waiter
    finally:
        if reader is not store:
            await reader.close()
