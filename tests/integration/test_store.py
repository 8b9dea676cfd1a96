"""The job store on SQLite and on the real PostgreSQL: transitions, leases, fencing, retention."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import sqlalchemy as sa

from tests.conftest import stored_result
from videoserve.jobs import schema, states
from videoserve.jobs.failures import Failure, FailureCode
from videoserve.jobs.fairness import Priority, SchedulingPolicy
from videoserve.jobs.keys import KeyStore, Scheduling
from videoserve.jobs.states import Status
from videoserve.jobs.store import JobStore, NewJob, Policy
from videoserve.settings import Settings
from videoserve.webhooks import tables as webhook_tables


@pytest.fixture
async def store(database_url: str):
    url = Settings(database_url=database_url).resolved_database_url()
    s = JobStore.open(url)
    await s.start()
    yield s
    await s.close()


async def reaped(store: JobStore) -> tuple[int, int] | None:
    """What the reaper did, or None while it found nothing (to wait on a lease lapsing)."""
    counts = await store.reap_expired_leases(60)
    return counts if counts != (0, 0) else None


async def eventually(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Await `check()` until it returns a truthy value; fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
    return value


def new_job(model: str = "tiny-t2v", **kw) -> NewJob:
    values = {
        "id": "video_" + secrets.token_hex(8),
        "api_key_id": "key_a",
        "model": model,
        "served_by": model,
        "params": {"prompt": "p"},
        "max_attempts": 2,
    }
    values.update(kw)
    return NewJob(**values)


async def test_migrations_are_idempotent_and_concurrent(store: JobStore) -> None:
    results = await asyncio.gather(*(store.migrate() for _ in range(4)))
    assert results == [{"jobs": schema.MIGRATIONS.latest}] * 4


async def test_submit_claim_complete(store: JobStore) -> None:
    job, created = await store.create(new_job())
    assert created and job.status == Status.QUEUED and job.attempt == 0
    claimed = await store.claim("w1", ["tiny-t2v"], lease_seconds=30)
    assert claimed is not None
    running, lease = claimed
    assert running.id == job.id and running.status == Status.PROCESSING and lease.attempt == 1
    assert await store.claim("w2", ["tiny-t2v"], lease_seconds=30) is None
    assert await store.complete(lease, stored_result("k"), retention_seconds=60)
    done = await store.get(job.id)
    assert done is not None and done.status == Status.COMPLETED and done.progress == 100
    assert done.expires_at is not None and done.result == stored_result("k")
    # Terminal is terminal: a second finish changes nothing.
    late = Failure(FailureCode.MODEL_ERROR, "late")
    assert not await store.fail(lease, late, retention_seconds=60)


async def test_claim_only_served_models_and_in_order(store: JobStore) -> None:
    first, _ = await store.create(new_job("a"))
    await store.create(new_job("b"))
    second, _ = await store.create(new_job("a"))
    got = await store.claim("w", ["a"], 30)
    assert got is not None and got[0].id == first.id
    got = await store.claim("w", ["a"], 30)
    assert got is not None and got[0].id == second.id
    assert await store.claim("w", ["a"], 30) is None


async def test_queue_position(store: JobStore) -> None:
    jobs = [(await store.create(new_job()))[0] for _ in range(3)]
    assert [await store.queue_position(j) for j in jobs] == [1, 2, 3]
    await store.claim("w", None, 30)
    assert await store.queue_position(jobs[2]) == 2


async def test_queue_position_is_per_model_and_a_requeued_job_goes_first(
    store: JobStore,
) -> None:
    a1, b1, a2, b2, a3 = [(await store.create(new_job(m)))[0] for m in "ababa"]
    assert [await store.queue_position(j) for j in (a1, a2, a3)] == [1, 2, 3]
    assert [await store.queue_position(j) for j in (b1, b2)] == [1, 2]
    claimed = await store.claim("w", ["a"], lease_seconds=0.01)
    assert claimed is not None and claimed[0].id == a1.id
    assert [await store.queue_position(j) for j in (a2, a3)] == [1, 2]
    assert await eventually(lambda: reaped(store)) == (1, 0)  # lost lease: back in front
    again = await store.get(a1.id)
    assert again is not None and again.status == Status.QUEUED
    assert [await store.queue_position(j) for j in (again, a2, a3)] == [1, 2, 3]
    assert [await store.queue_position(j) for j in (b1, b2)] == [1, 2]


async def test_expired_lease_requeues_then_fails_after_retry_limit(store: JobStore) -> None:
    job, _ = await store.create(new_job(max_attempts=2))
    _, lease1 = await store.claim("w1", None, lease_seconds=0.01)
    assert await eventually(lambda: reaped(store)) == (1, 0)
    assert (await store.get(job.id)).status == Status.QUEUED
    _, lease2 = await store.claim("w2", None, lease_seconds=0.01)
    assert lease2.attempt == 2
    # The first worker is a zombie now: fenced out.
    assert not await store.complete(lease1, stored_result("zombie"), 60)
    assert not (await store.heartbeat(lease1, 30)).alive
    assert await eventually(lambda: reaped(store)) == (0, 1)
    failed = await store.get(job.id)
    assert failed.status == Status.FAILED
    assert "lease expired" in failed.error and "2 attempts" in failed.error and "w2" in failed.error
    assert failed.failure == FailureCode.WORKER_LOST


async def test_heartbeat_extends_lease_and_records_progress(store: JobStore) -> None:
    job, _ = await store.create(new_job())
    _, lease = await store.claim("w", None, lease_seconds=0.5)
    beat = await store.heartbeat(lease, lease_seconds=30, progress=42)
    assert beat.alive and not beat.cancel_requested
    assert await store.reap_expired_leases(60) == (0, 0)
    assert (await store.get(job.id)).progress == 42


async def test_release_hands_back_without_spending_an_attempt(store: JobStore) -> None:
    job, _ = await store.create(new_job())
    _, lease = await store.claim("w", None, 30)
    assert await store.release(lease)
    again = await store.get(job.id)
    assert again.status == Status.QUEUED and again.attempt == 0


async def test_cancel_queued_and_running(store: JobStore) -> None:
    queued, _ = await store.create(new_job())
    cancelled = await store.request_cancel(queued.id, "key_a", 60)
    assert cancelled.status == Status.FAILED and cancelled.error == "cancelled by the user"
    assert cancelled.failure == FailureCode.CANCELLED
    running, _ = await store.create(new_job())
    _, lease = await store.claim("w", None, 30)
    assert (await store.request_cancel(running.id, "key_a", 60)).status == Status.PROCESSING
    assert (await store.heartbeat(lease, 30)).cancel_requested


async def test_idempotency_key(store: JobStore) -> None:
    from videoserve.jobs.store import IdempotencyConflict

    a, created_a = await store.create(new_job(idempotency_key="k1", request_hash="h"))
    b, created_b = await store.create(new_job(idempotency_key="k1", request_hash="h"))
    assert created_a and not created_b and a.id == b.id
    with pytest.raises(IdempotencyConflict):
        await store.create(new_job(idempotency_key="k1", request_hash="other"))
    # Another key may use the same Idempotency-Key independently.
    c, created_c = await store.create(
        new_job(api_key_id="key_b", idempotency_key="k1", request_hash="h")
    )
    assert created_c and c.id != a.id


async def test_concurrent_idempotent_submits_create_one_job(store: JobStore) -> None:
    results = await asyncio.gather(
        *(store.create(new_job(idempotency_key="same", request_hash="h")) for _ in range(8))
    )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


@pytest.mark.parametrize("scheduling", list(SchedulingPolicy))
async def test_concurrent_claimers_never_share_a_job(
    database_url: str, scheduling: SchedulingPolicy
) -> None:
    """Under each policy, over keys of unequal shares and every priority class: each job is
    claimed exactly once (and the fair clock only moves forward)."""
    url = Settings(database_url=database_url).resolved_database_url()
    store = JobStore.open(url, policy=Policy(scheduling=scheduling))
    await store.start()
    try:
        keys = KeyStore(store.database)
        owners = [
            (await keys.create(f"k{share}", scheduling=Scheduling(share=share)))[0].id
            for share in (1, 2, 3)
        ]
        ids = set()
        for n in range(45):
            new = new_job(api_key_id=owners[n % 3], priority=Priority(n % 3))
            ids.add((await store.create(new))[0].id)
        claimed: list[str] = []

        async def claimer(name: str) -> None:
            while (got := await store.claim(name, None, 30)) is not None:
                claimed.append(got[0].id)

        await asyncio.gather(*(claimer(f"w{i}") for i in range(6)))
        assert sorted(claimed) == sorted(ids)
        if scheduling == SchedulingPolicy.FAIR:
            await store.fair.drain()
            tags = await store.database.first(sa.select(sa.func.max(schema.jobs.c.start_tag)))
            assert tags is not None and await store.fair.virtual_time() == tags[0]
    finally:
        await store.close()


async def test_expired_results_are_hidden_then_deleted(store: JobStore) -> None:
    job, _ = await store.create(new_job())
    _, lease = await store.claim("w", None, 30)
    await store.complete(lease, stored_result("k"), retention_seconds=0.01)

    async def hidden() -> bool:
        return await store.get(job.id) is None

    assert await eventually(hidden)  # hidden once expired, before any sweep
    expired = await eventually(store.expired)
    assert [j.id for j in expired] == [job.id]
    assert await store.delete([job.id]) == 1
    assert await store.expired() == []


async def test_blocked_job_is_stored_failed(store: JobStore) -> None:
    blocked = Failure(FailureCode.MODERATION, "content policy: blocked")
    job, _ = await store.create(new_job(failed_with=blocked))
    assert job.status == Status.FAILED and job.error == "content policy: blocked"
    assert job.failure == FailureCode.MODERATION
    assert await store.claim("w", None, 30) is None


async def test_other_keys_cannot_read(store: JobStore) -> None:
    job, _ = await store.create(new_job())
    assert await store.get(job.id, api_key_id="key_a") is not None
    assert await store.get(job.id, api_key_id="key_b") is None


async def test_api_keys_are_hashed_and_revocable(store: JobStore) -> None:
    keys = KeyStore(store.database)
    record, plaintext = await keys.create("alice")
    assert (await keys.authenticate(plaintext)).id == record.id
    assert await keys.authenticate(plaintext + "x") is None
    from sqlalchemy import text

    async with store.database.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT key_hash FROM api_keys"))).scalar_one()
    assert plaintext not in stored and len(stored) == 64
    assert (await keys.revoke(record.id)).revoked_at is not None
    assert await keys.authenticate(plaintext) is None


def test_state_machine_edges() -> None:
    assert states.can_move(Status.QUEUED, Status.PROCESSING)
    assert states.can_move(Status.PROCESSING, Status.COMPLETED)
    assert not states.can_move(Status.QUEUED, Status.COMPLETED)
    assert not states.can_move(Status.COMPLETED, Status.FAILED)
    assert not states.can_move(Status.FAILED, Status.QUEUED)


async def test_key_cache_forgets_on_revoke_in_this_process(store: JobStore) -> None:
    keys = KeyStore(store.database, cache_seconds=60)
    other_process = KeyStore(store.database, cache_seconds=60)
    record, plaintext = await keys.create("cached")
    assert (await keys.authenticate(plaintext)).id == record.id
    assert (await other_process.authenticate(plaintext)).id == record.id
    await keys.revoke(record.id)
    assert await keys.authenticate(plaintext) is None
    # Documented: another process keeps a cached key until its cache entry runs out.
    assert (await other_process.authenticate(plaintext)) is not None
    assert await KeyStore(store.database).authenticate(plaintext) is None


def _count_key_lookups(store: JobStore) -> list[str]:
    """The key lookups (`SELECT ... WHERE key_hash = ...`) run on the store's database."""
    seen: list[str] = []

    def count(_conn, _cursor, statement: str, *_args) -> None:
        if "FROM api_keys" in statement and "key_hash" in statement:
            seen.append(statement)

    sa.event.listen(store.database.engine.sync_engine, "before_cursor_execute", count)
    return seen


async def test_concurrent_requests_with_one_key_share_one_lookup(store: JobStore) -> None:
    keys = KeyStore(store.database, cache_seconds=60)
    record, plaintext = await keys.create("busy")
    lookups = _count_key_lookups(store)
    found = await asyncio.gather(*(keys.authenticate(plaintext) for _ in range(32)))
    assert {key.id for key in found} == {record.id}
    assert (await keys.authenticate(plaintext)).id == record.id  # from the cache
    assert len(lookups) == 1
    # An unknown key: concurrent callers share its lookup too, and it is not remembered.
    wrong = plaintext + "x"
    assert await asyncio.gather(*(keys.authenticate(wrong) for _ in range(8))) == [None] * 8
    assert await keys.authenticate(wrong) is None
    assert len(lookups) == 3


async def test_a_cancelled_caller_does_not_fail_the_others_sharing_its_lookup(
    store: JobStore,
) -> None:
    keys = KeyStore(store.database, cache_seconds=60)
    record, plaintext = await keys.create("shared")
    first = asyncio.create_task(keys.authenticate(plaintext))
    second = asyncio.create_task(keys.authenticate(plaintext))
    await asyncio.sleep(0)  # one loop pass: both are waiting on the one lookup
    first.cancel()
    assert (await second).id == record.id
    assert first.cancelled()


async def test_a_lookup_that_began_before_a_revocation_is_not_remembered(
    store: JobStore,
) -> None:
    from sqlalchemy.util import await_

    keys = KeyStore(store.database, cache_seconds=60)
    record, plaintext = await keys.create("racing")
    read, release = asyncio.Event(), asyncio.Event()

    def hold(_conn, _cursor, statement: str, *_args) -> None:
        # After the row is read (the key still active), before the lookup returns: the hook
        # runs in SQLAlchemy's greenlet, so it can wait on the loop without blocking it.
        if "FROM api_keys" in statement and "key_hash" in statement and not release.is_set():
            read.set()
            await_(release.wait())

    engine = store.database.engine.sync_engine
    sa.event.listen(engine, "after_cursor_execute", hold)
    try:
        lookup = asyncio.create_task(keys.authenticate(plaintext))
        await asyncio.wait_for(read.wait(), 30)
        await keys.revoke(record.id)
        assert not lookup.done()
        release.set()
        assert (await lookup).id == record.id  # it began before the revocation
    finally:
        release.set()
        sa.event.remove(engine, "after_cursor_execute", hold)
    assert await keys.authenticate(plaintext) is None  # but it did not fill the cache


async def test_each_package_migrates_its_own_tables(database_url: str) -> None:
    """A store that knows only the jobs tables leaves the webhook tables to whoever registers
    them; a later process that does creates them then."""
    url = Settings(database_url=database_url).resolved_database_url()
    jobs_only = JobStore.open(url)
    try:
        assert await jobs_only.migrate() == {"jobs": schema.MIGRATIONS.latest}
        assert not await _has_table(jobs_only, "webhook_events")
    finally:
        await jobs_only.close()
    both = JobStore.open(url, migrations=(schema.MIGRATIONS, webhook_tables.MIGRATIONS))
    try:
        assert await both.migrate() == {"jobs": schema.MIGRATIONS.latest, "webhooks": 1}
        assert await _has_table(both, "webhook_events")
    finally:
        await both.close()


async def _has_table(store: JobStore, name: str) -> bool:
    async with store.database.connect() as conn:
        return await conn.run_sync(lambda sync: sa.inspect(sync).has_table(name))


async def test_migration_6_gives_queued_jobs_tickets_in_claim_order(database_url: str) -> None:
    import sqlalchemy as sa

    from videoserve import clock
    from videoserve.db.database import migrations_table

    url = Settings(database_url=database_url).resolved_database_url()
    store = JobStore.open(url)
    try:
        async with store.database.transaction() as conn:
            await conn.run_sync(lambda c: migrations_table.create(c, checkfirst=True))
            for version, step in schema.MIGRATIONS.steps[:5]:  # the schema before tickets
                await conn.run_sync(step)
                await conn.execute(
                    migrations_table.insert().values(
                        package="jobs", version=version, applied_at=clock.now()
                    )
                )
            for i, (model, status) in enumerate(
                [("a", "QUEUED"), ("a", "COMPLETED"), ("b", "QUEUED"), ("a", "QUEUED")]
            ):
                await conn.execute(
                    sa.text(
                        "INSERT INTO jobs (id, api_key_id, model, served_by, params, status,"
                        " progress, attempt, max_attempts, cancel_requested, created_at)"
                        " VALUES (:id, 'k', :m, :m, '{}', :s, 0, 0, 1, false, :t)"
                    ),
                    {"id": f"old{i}", "m": model, "s": status, "t": float(i)},
                )
        await store.migrate()
        await store.start()
        olds = [await store.get(f"old{i}") for i in range(4)]
        assert all(j is not None for j in olds)
        assert [j.ticket for j in olds if j is not None] == [1, None, 1, 2]
        positions = [await store.queue_position(olds[i]) for i in (0, 2, 3)]  # type: ignore[arg-type]
        assert positions == [1, 1, 2]
        new, _ = await store.create(new_job("a"))  # the counter continues after them
        assert await store.queue_position(new) == 3
    finally:
        await store.close()


async def test_migration_13_keeps_queued_jobs_in_age_order_at_normal_priority(
    database_url: str,
) -> None:
    """Jobs and keys from before scheduling: normal priority, start tag 0, share 1; the claim
    then takes the old jobs by age, and a new one after them."""
    from videoserve import clock
    from videoserve.db.database import migrations_table

    url = Settings(database_url=database_url).resolved_database_url()
    store = JobStore.open(url)
    try:
        async with store.database.transaction() as conn:
            await conn.run_sync(lambda c: migrations_table.create(c, checkfirst=True))
            for version, step in schema.MIGRATIONS.steps[:12]:  # the schema before 13
                await conn.run_sync(step)
                await conn.execute(
                    migrations_table.insert().values(
                        package="jobs", version=version, applied_at=clock.now()
                    )
                )
            await conn.execute(
                sa.text(
                    "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, created_at)"
                    " VALUES ('key_old', 'old', 'h', 'vs_old', false, 0)"
                )
            )
            for i in (1, 0):  # inserted out of age order
                await conn.execute(
                    sa.text(
                        "INSERT INTO jobs (id, api_key_id, model, served_by, params, status,"
                        " progress, attempt, max_attempts, cancel_requested, created_at)"
                        " VALUES (:id, 'key_old', 'm', 'm', '{}', 'QUEUED', 0, 0, 1, false, :t)"
                    ),
                    {"id": f"old{i}", "t": float(i)},
                )
        await store.migrate()
        await store.start()
        key = await KeyStore(store.database).get("key_old")
        assert key is not None and (key.share, key.max_priority, key.max_running) == (1.0, 1, None)
        new, _ = await store.create(new_job("m", api_key_id="key_old"))
        order = []
        while (got := await store.claim("w", ["m"], 30)) is not None:
            order.append((got[0].id, got[0].priority))
        assert order == [("old0", 1), ("old1", 1), (new.id, 1)]
    finally:
        await store.close()


async def test_a_requeued_job_keeps_its_tags_and_is_claimed_next(store: JobStore) -> None:
    keys = KeyStore(store.database)
    heavy = (await keys.create("heavy"))[0].id
    light = (await keys.create("light", scheduling=Scheduling(share=3)))[0].id
    first, _ = await store.create(new_job(api_key_id=heavy, priority=Priority.HIGH))
    for owner in (heavy, light, heavy):
        await store.create(new_job(api_key_id=owner))
    claimed = await store.claim("w", None, 30)
    assert claimed is not None and claimed[0].id == first.id
    assert await store.release(claimed[1])  # a draining worker hands it back
    again = await store.claim("w2", None, 30)
    assert again is not None and again[0].id == first.id
    assert (again[0].priority, again[0].start_tag) == (first.priority, first.start_tag)


@pytest.mark.parametrize("charged", [False, True], ids=["uncharged", "charged"])
async def test_every_field_a_submit_sets_reaches_its_column(store: JobStore, charged) -> None:
    """The columns a submit writes follow `NewJob`: each field named like a column of `jobs`
    is stored as given, on every submit path (PostgreSQL's one-statement charged insert, its
    stamping INSERT, SQLite's transaction), so a new field needs no list of its own."""
    from videoserve.jobs import ledger
    from videoserve.jobs.store_records import STORED_AS_IS

    record, _ = await KeyStore(store.database).create("fields", credits=100.0)
    new = new_job(
        api_key_id=record.id,
        params={"prompt": "every field"},
        max_attempts=3,
        input_key="jobs/x/input.png",
        idempotency_key="idem-" + secrets.token_hex(4),
        request_hash="h" * 16,
        webhook_url="https://example.com/hook",
        priority=Priority.HIGH,
        execution_timeout=42.0,
        remixed_from="video_" + secrets.token_hex(8),
        charge=ledger.Charge(seconds=4.0, price_per_second=1.0) if charged else None,
    )
    _, created = await store.create(new)
    assert created
    async with store.database.connect() as conn:
        row = (await conn.execute(sa.select(schema.jobs).where(schema.jobs.c.id == new.id))).one()
    stored = {name: getattr(row, name) for name in STORED_AS_IS}
    assert stored == {name: getattr(new, name) for name in STORED_AS_IS}
    assert row.cost == (4.0 if charged else None)
    assert row.start_tag is not None and row.expected_seconds is not None


async def test_concurrent_submits_read_a_models_job_seconds_once(store: JobStore) -> None:
    """Fair share's expected job seconds, read when lapsed: one read for any number of
    concurrent submits (each on a connection of its own was 17 more aiosqlite threads and a
    tenth of the submit rate), the stale value served while a refresh runs."""
    from sqlalchemy import event

    reads: list[str] = []

    def counted(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "FROM jobs" in statement and "ORDER BY jobs.finished_at DESC" in statement:
            reads.append(statement)

    engine = store.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", counted)
    try:
        fair = store.fair
        first = await asyncio.gather(*(fair.expected_seconds("tiny-t2v") for _ in range(32)))
        assert len(reads) == 1 and set(first) == {fair.default_job_seconds}, reads
        fair._estimates["tiny-t2v"] = (0.0, 7.0)  # lapsed: the next asks refresh it
        again = await asyncio.gather(*(fair.expected_seconds("tiny-t2v") for _ in range(32)))
        assert set(again) == {7.0}  # the stale value, while the one refresh runs
        await eventually(lambda: _settled(fair))
        assert len(reads) == 2, reads
        assert await fair.expected_seconds("tiny-t2v") == fair.default_job_seconds
    finally:
        event.remove(engine, "before_cursor_execute", counted)


async def _settled(fair) -> bool:  # type: ignore[no-untyped-def]
    return not fair._reading
