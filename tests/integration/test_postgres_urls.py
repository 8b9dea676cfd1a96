"""A PostgreSQL URL carrying SQLAlchemy-only options works for every connection we open.

The engine, the poll's asyncpg reader pool and the LISTEN connection each connect from the
operator's one URL. Options such as `prepared_statement_cache_size` belong to SQLAlchemy's
asyncpg adapter; passed on to asyncpg they would be sent to the server as settings, which it
refuses. Over the real PostgreSQL (skipped when none is reachable).
"""

from __future__ import annotations

import asyncio
import secrets

from videoserve import clock
from videoserve.jobs.job_status import StatusReader
from videoserve.jobs.store import JobStore, NewJob
from videoserve.settings import Settings

SQLALCHEMY_ONLY = "?prepared_statement_cache_size=0"


async def test_store_reader_and_listener_connect_with_sqlalchemy_only_options(
    postgres_url: str,
) -> None:
    url = Settings(database_url=postgres_url + SQLALCHEMY_ONLY).resolved_database_url()
    submitter, claimer = JobStore.open(url), JobStore.open(url)
    try:
        await submitter.start()
        await claimer.start()  # its LISTEN connection, in another store as in another process
        assert claimer.notifier.crosses_processes

        async def claim_when_woken() -> object:
            # As the worker waits: woken by the NOTIFY, not by the (long) timeout.
            assert await claimer.wait_for_queued(timeout=20), "no NOTIFY reached the claimer"
            return await claimer.claim("w1", ["tiny-t2v"], lease_seconds=30)

        waiting = asyncio.create_task(claim_when_woken())
        await asyncio.sleep(0)  # the claimer waits before the job is submitted
        job_id = "video_" + secrets.token_hex(8)
        job, _ = await submitter.create(  # the engine
            NewJob(
                id=job_id,
                api_key_id="key_a",
                model="tiny-t2v",
                served_by="tiny-t2v",
                params={"prompt": "p"},
                max_attempts=2,
            )
        )
        claimed = await asyncio.wait_for(waiting, 30)
        assert claimed is not None and claimed[0].id == job.id

        status = await StatusReader(submitter.database).read(job.id, clock.now())  # the reader
        assert status is not None and status.status.value == "PROCESSING"
    finally:
        await submitter.close()
        await claimer.close()
