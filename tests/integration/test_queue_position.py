"""`queue_position` in the v2 status stays exact while jobs are queued and drained in order.

The server has no worker; a second process-side `JobStore` on the same database claims, as a
worker does, so the queue moves exactly when the test says. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.dialects import postgresql

from tests.conftest import LiveServer
from videoserve.jobs import job_status, ledger, tickets
from videoserve.jobs.job_status import StatusReader
from videoserve.jobs.records import Job, Lease
from videoserve.jobs.store import JobStore, NewJob


class Claimer:
    """A worker's side of the store, driven step by step from a synchronous test."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self.store = self._run(self._open(url))

    async def _open(self, url: str) -> JobStore:
        store = JobStore.open(url)
        await store.start()
        return store

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return self._loop.run_until_complete(coro)

    def claim(self) -> Lease:
        claimed = self._run(self.store.claim("test-worker", None, 60))
        assert claimed is not None
        return claimed[1]

    def job(self, job_id: str) -> Job:
        job = self._run(self.store.get(job_id))
        assert job is not None
        return job

    def enqueue(self, like: Job, count: int) -> list[str]:
        """Queue `count` jobs of `like`'s key and model in bulk; their ids in claim order."""
        batch = [
            NewJob(
                id="video_" + secrets.token_hex(16),
                api_key_id=like.api_key_id,
                model=like.model,
                served_by=like.served_by,
                params={"prompt": "bulk"},
                max_attempts=3,
            )
            for _ in range(count)
        ]
        assert self._run(self.store.enqueue_many(batch)) == count
        return sorted(new.id for new in batch)

    def release(self, lease: Lease) -> None:
        assert self._run(self.store.release(lease))

    def close(self) -> None:
        self._run(self.store.close())
        self._loop.close()


@pytest.fixture
def queue(make_server) -> Iterator[tuple[LiveServer, Claimer]]:
    server = make_server(embedded_worker=False)
    claimer = Claimer(server.settings.resolved_database_url())
    yield server, claimer
    claimer.close()


def submit(server: LiveServer, n: int) -> list[str]:
    headers = {"x-api-key": server.api_key}
    return [
        httpx.post(
            f"{server.url}/v2/tiny-t2v", json={"prompt": f"job {i}"}, headers=headers
        ).json()["request_id"]
        for i in range(n)
    ]


def positions(server: LiveServer, ids: list[str]) -> list[int | None]:
    headers = {"x-api-key": server.api_key}
    bodies = [
        httpx.get(f"{server.url}/v2/requests/{i}/status", headers=headers).json() for i in ids
    ]
    return [b.get("queue_position") if b["status"] == "QUEUED" else None for b in bodies]


def test_exact_while_appended_and_drained_in_order(queue) -> None:
    server, claimer = queue
    waiting = submit(server, 5)
    assert positions(server, waiting) == [1, 2, 3, 4, 5]
    for _ in range(2):
        claimer.claim()
        waiting.pop(0)
        assert positions(server, waiting) == list(range(1, len(waiting) + 1))
    waiting += submit(server, 3)  # appended while draining
    assert positions(server, waiting) == [1, 2, 3, 4, 5, 6]
    while waiting:
        claimer.claim()
        waiting.pop(0)
        assert positions(server, waiting) == list(range(1, len(waiting) + 1))
    # An empty queue starts again at 1.
    assert positions(server, submit(server, 2)) == [1, 2]


def test_a_job_handed_back_goes_first(queue) -> None:
    server, claimer = queue
    first, *rest = submit(server, 4)
    lease = claimer.claim()
    assert positions(server, rest) == [1, 2, 3]
    claimer.release(lease)  # a draining worker hands it back: the claim takes it next
    assert positions(server, [first, *rest]) == [1, 2, 3, 4]
    claimer.claim()
    assert positions(server, rest) == [1, 2, 3]


def test_cancelling_the_head_moves_everyone_up(queue) -> None:
    server, _ = queue
    head, *rest = submit(server, 4)
    headers = {"x-api-key": server.api_key}
    cancelled = httpx.post(f"{server.url}/v2/requests/{head}/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert positions(server, rest) == [1, 2, 3]


def test_cancelling_in_the_middle_overstates_by_at_most_the_gap(queue) -> None:
    # Documented in docs/api.md: the jobs behind a gap read one too many until the head
    # passes it; never fewer than the jobs really ahead.
    server, claimer = queue
    ids = submit(server, 4)
    headers = {"x-api-key": server.api_key}
    assert httpx.post(f"{server.url}/v2/requests/{ids[1]}/cancel", headers=headers).is_success
    assert positions(server, [ids[0], ids[2], ids[3]]) == [1, 3, 4]
    claimer.claim()  # the head passes the gap: exact again
    assert positions(server, [ids[2], ids[3]]) == [1, 2]


def test_bulk_enqueue_keeps_positions_exact(queue) -> None:
    # Jobs queued in bulk (enqueue_many) between HTTP submits: every position exact, and the
    # claim takes them in the order their positions say.
    server, claimer = queue
    waiting = submit(server, 2)
    like = claimer.job(waiting[0])
    waiting += claimer.enqueue(like, 5)
    waiting += submit(server, 2)
    waiting += claimer.enqueue(like, 300)
    last = submit(server, 1)
    waiting += last
    assert positions(server, waiting[:10]) == list(range(1, 11))
    assert positions(server, last) == [len(waiting)]
    for expected in waiting[:12]:
        assert claimer.claim().job_id == expected
    assert positions(server, [waiting[12], last[0]]) == [1, len(waiting) - 12]


def test_bulk_enqueue_takes_queued_jobs_only(queue) -> None:
    server, claimer = queue
    like = claimer.job(submit(server, 1)[0])
    charged = NewJob(
        id="video_" + secrets.token_hex(16),
        api_key_id=like.api_key_id,
        model=like.model,
        served_by=like.served_by,
        params={"prompt": "bulk"},
        max_attempts=3,
        charge=ledger.Charge(seconds=4, price_per_second=1.0),
    )
    with pytest.raises(ValueError, match="queued jobs only"):
        claimer._run(claimer.store.enqueue_many([charged]))
    assert claimer._run(claimer.store.get(charged.id)) is None


def test_cancelled_behind_a_bulk_backlog_leaves_one_gap(queue) -> None:
    # A job cancelled in the middle of a backlog: those behind it read one too many (never
    # fewer than really ahead) until the head passes it; those in front are untouched.
    server, claimer = queue
    like = claimer.job(submit(server, 1)[0])
    ids = [like.id, *claimer.enqueue(like, 3)]
    mine = submit(server, 1)[0]
    headers = {"x-api-key": server.api_key}
    assert httpx.post(f"{server.url}/v2/requests/{ids[2]}/cancel", headers=headers).is_success
    assert positions(server, [ids[0], ids[1], ids[3], mine]) == [1, 2, 4, 5]
    assert [claimer.claim().job_id for _ in range(2)] == ids[:2]
    assert positions(server, [ids[3], mine]) == [1, 2]  # the head passed the gap: exact


def test_jobs_requeued_in_one_sweep_stay_within_the_documented_bound(queue) -> None:
    # docs/api.md: k jobs handed back by one sweep read positions 1..k (in any order), and the
    # jobs behind them read at most k - 1 too few, never more than the truth; exact again
    # once those k are claimed.
    server, claimer = queue
    ids = submit(server, 5)
    for _ in range(2):  # two workers die: their leases expire at once
        assert claimer._run(claimer.store.claim("dead-worker", None, -1.0)) is not None
    assert claimer._run(claimer.store.reap_expired_leases(3600)) == (2, 0)
    lost, behind = ids[:2], ids[2:]
    assert sorted(p or 0 for p in positions(server, lost)) in ([1, 1], [1, 2])
    for truth, read in zip([3, 4, 5], positions(server, behind), strict=True):
        assert read is not None and truth - 1 <= read <= truth
    assert sorted([claimer.claim().job_id, claimer.claim().job_id]) == sorted(lost)
    assert positions(server, behind) == [1, 2, 3]


def test_postgres_sessions_plan_each_statement_for_its_parameters(queue) -> None:
    # A generic plan made while the table was tiny (a sequential scan) must not serve polls
    # behind a large backlog (see db/dialects.py): every session plans afresh.
    server, claimer = queue
    if not server.settings.resolved_database_url().startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite has no plan cache across statements")

    async def setting() -> str:
        async with claimer.store.database.connect() as conn:
            return str((await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar())

    assert claimer._run(setting()) == "force_custom_plan"


def explain(claimer: Claimer, statement: Any) -> dict[str, Any]:
    """PostgreSQL's executed plan of `statement` (its parameters bound in it)."""
    sql = str(
        statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )

    async def plan() -> Any:
        async with claimer.store.database.connect() as conn:
            return (await conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalar()

    found = claimer._run(plan())
    return dict((json.loads(found) if isinstance(found, str) else found)[0]["Plan"])


def test_postgres_reads_the_head_without_aggregating_the_queue(queue) -> None:
    # Behind a backlog queued in bulk, before any ANALYZE, PostgreSQL planned `min(ticket)` as
    # an aggregate over every queued job (8.7 ms a poll behind 10,000); the head must be an
    # index walk that stops at its first entry.
    server, claimer = queue
    if not server.settings.resolved_database_url().startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite's min() is a seek on this index")
    like = claimer.job(submit(server, 1)[0])
    claimer.enqueue(like, 2_000)
    explained = explain(claimer, tickets.HEAD.params(served_by=like.served_by))
    assert explained["Node Type"] == "Limit"
    assert explained["Plans"][0]["Actual Rows"] == 1  # one index entry read, not 2,001


def test_a_poll_reads_the_same_position_as_the_store_in_one_statement(queue) -> None:
    # The status poll reads its queue's head with the job (`tickets.own_queue_head`); the
    # store's two-read `queue_position` must agree with it after the head moved, and the
    # head is read only for a QUEUED job.
    server, claimer = queue
    ids = submit(server, 4)
    claimer.claim()
    waiting = ids[1:]
    by_store = [claimer._run(claimer.store.queue_position(claimer.job(i))) for i in waiting]
    assert positions(server, waiting) == by_store == [1, 2, 3]
    status = StatusReader(claimer.store.database)
    found = [claimer._run(status.read(i, time.time())) for i in waiting]
    assert [f.queue_head for f in found if f is not None] == [claimer.job(waiting[0]).ticket] * 3
    running = claimer._run(status.read(ids[0], time.time()))
    assert running is not None and running.queue_head is None  # read only while QUEUED


def test_postgres_reads_a_polled_jobs_head_without_aggregating_the_queue(queue) -> None:
    # The same index walk as `tickets.HEAD`, inside the poll's one statement, and only for a
    # QUEUED job: a running job's poll must not walk the queue at all.
    server, claimer = queue
    if not server.settings.resolved_database_url().startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite's plan is checked by its own walk")
    like = claimer.job(submit(server, 1)[0])
    claimer.enqueue(like, 2_000)
    read = job_status._READ.params(job_id=like.id, now=time.time())

    def subplans(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if node.get("Parent Relationship") == "SubPlan" else []
        for child in node.get("Plans", []):
            found += subplans(child)
        return found

    def walk() -> dict[str, Any]:
        (only,) = subplans(explain(claimer, read))
        return only

    queued = walk()
    assert queued["Node Type"] == "Limit" and queued["Actual Loops"] == 1
    assert queued["Plans"][0]["Actual Rows"] == 1  # one index entry read, not 2,001
    assert claimer.claim().job_id == like.id  # now PROCESSING: its poll walks no queue
    assert walk()["Actual Loops"] == 0
