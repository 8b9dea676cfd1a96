"""Wake-ups and the connection pool of the job store, on SQLite and the real PostgreSQL.

A write announces itself: on PostgreSQL the `pg_notify` rides in the statement's RETURNING and
reaches another store (as another process would be) only once the write commits; on SQLite
the wake-up is in-process. Each store here is a separate engine, pool and listener.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3

import pytest
import sqlalchemy as sa

from tests.conftest import stored_result
from videoserve.db.sqlite import SyncReader
from videoserve.jobs.statements import FINISHED_TOPIC, QUEUED_TOPIC, job_topic
from videoserve.jobs.store import JobStore, NewJob


def new_job() -> NewJob:
    return NewJob(
        id="video_" + secrets.token_hex(8),
        api_key_id="key_a",
        model="tiny-t2v",
        served_by="tiny-t2v",
        params={"prompt": "p"},
        max_attempts=2,
    )


async def started(store: JobStore) -> JobStore:
    await store.start()
    return store


async def woken(store: JobStore, topic: str, action) -> bool:  # type: ignore[no-untyped-def]
    """Whether a wait on `topic` in `store` ends because of `action()` (within 10 s)."""
    waiter = asyncio.create_task(store.notifier.wait(topic, timeout=10))
    await asyncio.sleep(0)  # the waiter is registered before the action runs
    await action()
    return await waiter


async def test_each_transition_wakes_its_waiters(open_store) -> None:  # type: ignore[no-untyped-def]
    writer = await started(open_store())
    # On PostgreSQL a second store hears it over LISTEN/NOTIFY; on SQLite only in-process.
    reader = await started(open_store()) if writer.notifier.crosses_processes else writer
    job = new_job()
    assert await woken(reader, QUEUED_TOPIC, lambda: writer.create(job))
    claimed: list = []

    async def claim() -> None:
        claimed.append(await writer.claim("w1", ["tiny-t2v"], lease_seconds=30))

    assert await woken(reader, job_topic(job.id), claim)
    _, lease = claimed[0]
    assert await woken(reader, job_topic(job.id), lambda: writer.heartbeat(lease, 30, 40))
    assert await woken(
        reader, FINISHED_TOPIC, lambda: writer.complete(lease, stored_result("x"), 60)
    )
    finished = await reader.get(job.id)
    assert finished is not None and finished.status.value == "COMPLETED"


async def test_a_write_that_changes_nothing_wakes_nobody(open_store) -> None:  # type: ignore[no-untyped-def]
    writer = await started(open_store())
    reader = await started(open_store()) if writer.notifier.crosses_processes else writer
    job, _ = await writer.create(new_job())
    _, lease = await writer.claim("w1", None, lease_seconds=30)
    # Wait until the completion's own wake-ups have arrived (on PostgreSQL they come in the
    # order sent, `job:<id>` before `jobs:finished`), so none is still in flight below.
    assert await woken(
        reader, FINISHED_TOPIC, lambda: writer.complete(lease, stored_result("x"), 60)
    )
    # The lease is spent: a zombie's second completion updates no row, so it announces nothing.
    waiter = asyncio.create_task(reader.notifier.wait(job_topic(job.id), timeout=0.5))
    await asyncio.sleep(0)
    assert not await writer.complete(lease, stored_result("y"), 60)
    assert not await waiter
    assert await writer.claim("w2", None, lease_seconds=30) is None


async def test_more_requests_than_connections_wait_their_turn(open_store) -> None:  # type: ignore[no-untyped-def]
    # The pool never overflows; 40 concurrent reads and writes share 2 connections.
    store = await started(open_store(pool_size=2))
    job, _ = await store.create(new_job())
    reads = [store.get(job.id) for _ in range(30)]
    writes = [store.create(new_job()) for _ in range(10)]
    results = await asyncio.wait_for(asyncio.gather(*reads, *writes), timeout=60)
    assert all(r is not None and r.id == job.id for r in results[:30])
    assert (await store.count_by_status())["QUEUED"] == 11
    assert store.database.engine.pool.size() == 2


async def test_the_sqlite_read_path_refuses_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"
    store = JobStore.open(url)
    await store.start()
    try:
        reader = SyncReader.for_url(url)
        assert reader is not None
        with pytest.raises(sa.exc.OperationalError, match="readonly"):
            reader.first(sa.text("DELETE FROM jobs RETURNING id"))
        reader.dispose()
    finally:
        await store.close()
    assert SyncReader.for_url("sqlite+aiosqlite:///:memory:") is None
    assert SyncReader.for_url("postgresql+asyncpg://u@h/db") is None


async def test_a_sqlite_write_waiting_for_the_lock_leaves_the_loop_free(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Another process holds SQLite's write lock; our one-statement write waits for it in its
    # own thread while the event loop goes on serving reads.
    store = JobStore.open(f"sqlite+aiosqlite:///{tmp_path / 'v.db'}")
    await store.start()
    other = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        create = asyncio.create_task(store.create(new_job()))
        for _ in range(50):
            assert await store.get("video_unknown") is None
            await asyncio.sleep(0)
        assert not create.done()  # it cannot commit while the lock is held
        other.execute("COMMIT")
        job, created = await asyncio.wait_for(create, timeout=30)
        assert created and (await store.get(job.id)) is not None
    finally:
        other.close()
        await store.close()
