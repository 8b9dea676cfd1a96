"""The job store: every job operation as one atomic statement over SQLAlchemy Core.

Transitions never read-modify-write in Python: each is an UPDATE whose WHERE clause carries
the allowed source states (from `states`) and, for a worker's writes, the lease it holds
(job id, attempt, token). A zombie worker whose lease was taken over updates zero rows.

Credits ride in the same transactions (see `ledger`): a submit's charge commits with the job or
not at all, and every move to FAILED without a video carries its refund.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from videoserve import clock
from videoserve.db import dialects
from videoserve.db.database import Database, Migrations
from videoserve.jobs import bulk, deadlines, fairness, ledger, schema, tickets
from videoserve.jobs.failures import Failure
from videoserve.jobs.handoff import StandingClaim, StandingClaims
from videoserve.jobs.job_status import JobStatus
from videoserve.jobs.records import Job, JobResult, Lease
from videoserve.jobs.statements import (
    FINISHED_TOPIC,
    HOLDS,
    NO_LIVE_STATE,
    QUEUED_TOPIC,
    HotStatements,
    holds,
    job_topic,
    submitted_params,
)
from videoserve.jobs.states import Status
from videoserve.jobs.store_records import (
    Heartbeat,
    IdempotencyConflict,
    LiveState,
    NewJob,
    Observer,
    Policy,
    new_row,
)
from videoserve.jobs.sweeps import DELETED_UNFINISHED, Sweeps

log = logging.getLogger("videoserve.jobs")
jobs = schema.jobs

__all__ = [
    "DELETED_UNFINISHED",
    "FINISHED_TOPIC",
    "QUEUED_TOPIC",
    "Heartbeat",
    "IdempotencyConflict",
    "JobStore",
    "LiveState",
    "NewJob",
    "Observer",
    "Policy",
    "job_topic",
]


class JobStore(Sweeps):
    """Jobs on SQLite or PostgreSQL; one instance per process, shared by API and worker."""

    def __init__(
        self,
        database: Database,
        *,
        policy: Policy | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.database = database
        self.notifier = database.notifier
        self.policy = policy or Policy()
        self.observer = observer or Observer()
        self._first = database.first
        self._write_one = database.write_one
        self.fair = fairness.FairShare(
            database, self.policy.scheduling, self.policy.default_job_seconds
        )
        self._hot = HotStatements(
            database,
            capped=self.policy.max_running_per_key > 0,
            fair=self.fair if self.policy.scheduling == fairness.SchedulingPolicy.FAIR else None,
        )
        self._queue_head = database.row_reader(self._hot.queue_head)  # for a `Job`'s position
        # This process's idle worker slots, which a submit claims for (`handoff`).
        self.standing = StandingClaims()
        # Wakes this process's expiry loop for a deadline sooner than it planned (`deadlines`).
        self.deadline_alarm = deadlines.DeadlineAlarm()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        pool_size: int = dialects.DEFAULT_POOL_SIZE,
        policy: Policy | None = None,
        observer: Observer | None = None,
        migrations: Sequence[Migrations] = (schema.MIGRATIONS,),
    ) -> JobStore:
        """A store over a new `Database` for `url`, which it owns (started and closed with it).

        Only the jobs package's tables by default; the runtime adds the other packages'."""
        database = Database(url, pool_size=pool_size, migrations=migrations)
        return cls(database, policy=policy, observer=observer)

    async def start(self) -> None:
        await self.database.start()

    async def close(self) -> None:
        await self.fair.drain()
        await self.database.close()

    async def migrate(self) -> dict[str, int]:
        """Bring every registered package's tables up to date (see `Database.migrate`)."""
        return await self.database.migrate()

    async def ping(self) -> None:
        await self.database.ping()

    # --- submit and read ---------------------------------------------------------------------
    async def create(self, new: NewJob) -> tuple[Job, bool]:
        """Store a job durably and charge its price, atomically; returns (job, created).

        With an idempotency key already used for the same request, returns the earlier job and
        False, charging nothing. `InsufficientCredits` when the key cannot pay: nothing stored.
        A job stored FAILED (content block) is refunded in the same transaction if the policy
        says so."""
        now = clock.now()
        values: dict[str, Any] = {
            **new_row(new, now),
            "cost": new.charge.amount if new.charge is not None else None,
        }
        if new.failed_with is None:
            values[tickets.QUEUE_PARAM] = new.served_by
        else:
            values |= {
                "status": Status.FAILED.value,
                "error": new.failed_with.message,
                "failure": new.failed_with.code.value,
                "finished_at": now,
                "expires_at": now + new.retention_seconds,
            }
        if new.idempotency_key is not None:
            earlier = await self._by_idempotency_key(new.api_key_id, new.idempotency_key)
            if earlier is not None:
                return self._check_same_request(earlier, new), False
        topic = QUEUED_TOPIC if new.failed_with is None else FINISHED_TOPIC
        plan: fairness.Plan | None = None
        if new.failed_with is None:
            plan = await self.fair.plan(new.api_key_id, new.served_by, new.priority)
            values |= plan.columns
        refunded = 0.0
        offer = await self._standing_for(new)
        row: sa.Row | None
        try:
            if offer is not None:
                assert plan is not None
                row = await self._create_and_claim(new, values, plan, offer)
            elif new.charge is None and plan is not None and not self._stamp_apart(plan):
                # Nothing to charge or refund: one INSERT, announcing itself (the common case),
                # stamping its key (PostgreSQL under fair share).
                params = self._hot.insert_params(values, new.served_by, plan)
                row = await self._write_one(self._hot.insert, params)
            elif new.charge is not None and self._hot.charged_insert is not None and plan:
                # PostgreSQL: charge, stamp, ticket and insert as one statement (statements).
                params = _charged(new, values) | plan.params
                row = await self._write_one(self._hot.charged_insert, params)
                if row is None:
                    raise _Declined
            else:
                row, refunded = await self._create_with_credits(new, values, topic, plan)
        except _Declined:
            assert new.charge is not None
            # Read only to word the refusal; the decision was the UPDATE's.
            raise ledger.insufficient(
                await ledger.balance(self.database, new.api_key_id), new.charge
            ) from None
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            # Two submits with one key raced; the other one's insert won.
            earlier = await self._by_idempotency_key(new.api_key_id, new.idempotency_key)
            if earlier is None:
                raise
            return self._check_same_request(earlier, new), False
        finally:
            if offer is not None:
                offer.hand(None)  # nothing was claimed for it: the slot claims on its own
        self.notifier.after_commit(topic)
        job = Job.from_row(row)
        if job.start_deadline is not None and job.status == Status.QUEUED:
            self.deadline_alarm.noted(job.start_deadline)
        if new.charge is not None:
            self.observer.credits("charge", new.charge.amount)
        if refunded:
            self.observer.credits("refund", refunded)
        if job.status == Status.FAILED:
            self.observer.finished(job)
        return job, True

    async def _standing_for(self, new: NewJob) -> StandingClaim | None:
        """An idle slot of this process to claim for in the submit's transaction, if any.

        Not on PostgreSQL with a per-key cap, whose claims take an advisory lock first (see
        `claim`): a submit does not wait on that lock; the slot claims on its own instead."""
        if new.failed_with is not None:
            return None
        if self.database.concurrent_writers and await self._serialised_claims():
            return None
        return self.standing.take(new.served_by)

    def _stamp_apart(self, plan: fairness.Plan) -> bool:
        """Whether the submit's INSERT needs `FairShare.stamp_in` beside it in its transaction
        (fair share on SQLite, which has no writing CTEs)."""
        return plan.start_tag is None and not self._hot.stamps_in_insert

    def _insert_queued(
        self,
        conn: Connection,
        new: NewJob,
        insert: sa.Insert,
        values: dict[str, Any],
        plan: fairness.Plan | None,
    ) -> sa.Row:
        """In a submit's transaction: stamp the key (where the INSERT does not), charge the
        price (`_Declined` when the key cannot pay), insert the job; the new row."""
        if plan is not None and self._stamp_apart(plan):
            if new.charge is None:
                start = self.fair.stamp_in(conn, plan)
            else:  # the charge's UPDATE of the key stamps it too
                params = ledger.charge_params(new.api_key_id, new.id, new.charge)
                found = self.fair.stamp_and_charge(conn, plan, params)
                if found is None:
                    raise _Declined
                start = found
            return conn.execute(insert, values | {"start_tag": start}).one()
        if plan is not None and insert is self._hot.insert:
            values = self._hot.insert_params(values, new.served_by, plan)
        return _charge_and_insert(conn, new, insert, values)

    async def _create_and_claim(
        self, new: NewJob, values: dict[str, Any], plan: fairness.Plan, offer: StandingClaim
    ) -> sa.Row:
        """The submit's charge and INSERT, then the standing slot's claim, in one transaction
        (see `handoff`); hands the slot what it claimed once committed. Returns the new row."""
        claim, params, token = self._claim_statement(
            offer.worker_id, offer.served_by, offer.lease_seconds
        )
        charged_insert = self._hot.charged_insert

        def work(conn: Connection) -> tuple[sa.Row, sa.Row | None]:
            if new.charge is not None and charged_insert is not None:
                # PostgreSQL: charge, stamp and insert in one statement
                found = conn.execute(charged_insert, _charged(new, values) | plan.params).first()
                if found is None:
                    raise _Declined
                row = found
            else:
                row = self._insert_queued(conn, new, self._hot.insert, values, plan)
            claimed = conn.execute(claim, params).first()
            if claimed is not None:
                advance = self.fair.advance_params(claimed.start_tag)
                if advance is not None:
                    conn.execute(self.fair.advance, advance)
            return row, claimed

        row, claimed = await self.database.run_transaction(work)
        if claimed is not None:
            offer.hand(self._claimed(claimed, token))
        return row

    async def _create_with_credits(
        self, new: NewJob, values: dict[str, Any], topic: str, plan: fairness.Plan | None
    ) -> tuple[sa.Row, float]:
        """The submit transaction when credits move: charge, insert, and for a job stored
        FAILED its refund, all or nothing. Returns the row and the amount refunded.

        One synchronous unit (`Database.run_transaction`): on SQLite one hop to the writer
        thread for the whole transaction. The wake-up rides in the INSERT's RETURNING (on
        PostgreSQL a `pg_notify`, delivered at commit), so it costs no statement of its own."""
        if new.failed_with is None:
            insert = self._hot.insert
        else:  # never queued: no ticket, no gap in the queue
            insert = jobs.insert().returning(*jobs.c, *self.notifier.returning(topic))
        refund_blocked = new.failed_with is not None and self.policy.refund_content_blocks

        def work(conn: Connection) -> tuple[sa.Row, float]:
            row = self._insert_queued(conn, new, insert, values, plan)
            refunded = 0.0
            if refund_blocked:
                assert new.failed_with is not None
                refunded = ledger.refund_in(
                    self.database,
                    conn,
                    new.api_key_id,
                    new.id,
                    row.cost,
                    f"refund: {new.failed_with.message}",
                )
            return row, refunded

        return await self.database.run_transaction(work)

    @staticmethod
    def _check_same_request(earlier: Job, new: NewJob) -> Job:
        if earlier.request_hash != new.request_hash:
            raise IdempotencyConflict(new.idempotency_key)
        return earlier

    async def _by_idempotency_key(self, api_key_id: str, key: str) -> Job | None:
        query = sa.select(jobs).where(
            jobs.c.api_key_id == api_key_id, jobs.c.idempotency_key == key
        )
        row = await self._first(query)
        return Job.from_row(row) if row else None

    async def get(self, job_id: str, *, api_key_id: str | None = None) -> Job | None:
        """The job, unless it does not exist, has expired, or belongs to another key."""
        params: dict[str, Any] = {"job_id": job_id, "now": clock.now()}
        if api_key_id is None:
            row = await self._first(self._hot.get, params)
        else:
            row = await self._first(self._hot.get_owned, params | {"owner": api_key_id})
        return Job.from_row(row) if row else None

    async def enqueue_many(self, new_jobs: Sequence[NewJob]) -> int:
        """Queue many jobs in one transaction (`bulk`); returns how many were stored."""
        return await bulk.enqueue_many(self.database, self.fair, new_jobs)

    async def queue_position(self, job: Job | JobStatus) -> int:
        """1 for the next job a worker of its model will claim, 2 behind it, and so on.

        From the job's ticket and its queue's head: one index seek (see `tickets` for how far
        it can be off). A job queued before tickets existed is counted the old way."""
        if job.ticket is not None:
            head = await self._queue_head({"served_by": job.served_by})
            return tickets.position(job.ticket, head[0] if head is not None else None)
        params = {"served_by": job.served_by, "created_at": job.created_at, "job_id": job.id}
        row = await self._first(self._hot.queue_ahead, params)
        assert row is not None
        return int(row[0]) + 1

    async def count_by_status(self) -> dict[str, int]:
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        async with self.database.connect() as conn:
            return {status: int(n) for status, n in (await conn.execute(query)).all()}

    async def count_active(self) -> dict[tuple[str, str], int]:
        """(served_by, status) -> jobs QUEUED or PROCESSING, for the queue-depth gauges."""
        query = (
            sa.select(jobs.c.served_by, jobs.c.status, sa.func.count())
            .where(jobs.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value]))
            .group_by(jobs.c.served_by, jobs.c.status)
        )
        async with self.database.connect() as conn:
            return {(model, status): int(n) for model, status, n in (await conn.execute(query))}

    # --- the worker's side -------------------------------------------------------------------
    async def claim(
        self,
        worker_id: str,
        served_by: Sequence[str] | None,
        lease_seconds: float,
        warm: Sequence[str] = (),
    ) -> tuple[Job, Lease] | None:
        """Atomically take the oldest queued job of the given models, with a fresh lease.

        `warm`: the models among `served_by` the worker has loaded now. With
        `policy.warm_skip_seconds`, it first claims the oldest job of those alone, unless a
        job of any of its models has waited longer than that (`statements._prefer_warm`);
        finding none, it claims as usual. Only when some of its models are warm and some are
        not: otherwise the preference changes nothing, and costs no second statement.

        With `policy.max_running_per_key`, jobs of a key that already has that many PROCESSING
        are skipped. The count is a subquery of the claim, so on SQLite (one writer at a time)
        it is exact. On PostgreSQL two claimers could each count the same committed snapshot
        and both claim a job of one key, exceeding the cap; so while a cap is set, claims take
        a transaction-scoped advisory lock first, which serialises them (a claim is one short
        statement; workers claim once per video). Without a cap no lock is taken.
        """
        if self._prefers(served_by, warm):
            assert served_by is not None
            statement, params, token = self._claim_statement(
                worker_id, served_by, lease_seconds, warm
            )
            row = await self._run_claim(statement, params)
            if row is not None:
                return self._fair_claimed(row, token)
        statement, params, token = self._claim_statement(worker_id, served_by, lease_seconds)
        row = await self._run_claim(statement, params)
        return None if row is None else self._fair_claimed(row, token)

    def _fair_claimed(self, row: sa.Row, token: str) -> tuple[Job, Lease]:
        # V follows the claim, right after its commit: GREATEST keeps it monotonic under
        # concurrent claims; a crash in between costs one step of V, which the next makes up.
        self.fair.advanced(row.start_tag)
        return self._claimed(row, token)

    async def _serialised_claims(self) -> bool:
        """Whether a running cap applies (the server's, or some key's own): PostgreSQL's
        claims then take the advisory lock (see `claim`)."""
        return self.policy.max_running_per_key > 0 or await self.fair.keys_capped()

    def _prefers(self, served_by: Sequence[str] | None, warm: Sequence[str]) -> bool:
        """Whether a claim first asks for warm jobs: on, and some served models warm, some not."""
        if not self.policy.warm_skip_seconds or not warm or served_by is None:
            return False
        return not set(served_by) <= set(warm)

    async def _run_claim(self, statement: sa.Update, params: dict[str, Any]) -> sa.Row | None:
        if self.database.concurrent_writers and await self._serialised_claims():
            async with self.database.transaction() as conn:
                # Held until commit, and each statement after it sees every earlier claim.
                await self.database.advisory_lock(conn, "claim_cap")
                return (await conn.execute(statement, params)).first()
        return await self._write_one(statement, params)

    def _claim_statement(
        self,
        worker_id: str,
        served_by: Sequence[str] | None,
        lease_seconds: float,
        warm: Sequence[str] = (),
    ) -> tuple[sa.Update, dict[str, Any], str]:
        """The claim (warm-first when `warm` is given), its parameters and the new lease's
        fencing token."""
        now = clock.now()
        token = secrets.token_hex(16)
        params: dict[str, Any] = {
            "now": now,
            "expires": now + lease_seconds,
            "token": token,
            "worker": worker_id,
        }
        if served_by is not None:
            params["models"] = list(served_by)
        if self.policy.max_running_per_key > 0:
            params["cap"] = self.policy.max_running_per_key
        if warm:
            params["warm"] = list(warm)
            params["skip_before"] = now - self.policy.warm_skip_seconds
        return self._hot.claim(served_by, warm=bool(warm)), params, token

    def _claimed(self, row: sa.Row, token: str) -> tuple[Job, Lease]:
        """After a claim's commit: the job and its lease, announced and observed."""
        job = Job.from_row(row)
        self.notifier.after_commit(job_topic(job.id))
        self.observer.claimed(job)
        return job, Lease(job.id, job.attempt, token)

    async def heartbeat(
        self,
        lease: Lease,
        lease_seconds: float,
        progress: int | None = None,
        live: LiveState | None = None,
    ) -> Heartbeat:
        """Extend the lease (and record progress, with the phase, step and latest preview
        `live` says); tells the worker if it lost the job."""
        params = holds(lease) | {"expires": clock.now() + lease_seconds}
        if progress is None:
            row = await self._write_one(self._hot.heartbeat, params)
        else:
            params["new_progress"] = max(0, min(100, int(progress)))
            params |= {f"new_{name}": value for name, value in (live or LiveState()).columns()}
            row = await self._write_one(self._hot.heartbeat_progress, params)
        if row is None:
            return Heartbeat(alive=False)
        if progress is not None:
            self.notifier.after_commit(job_topic(lease.job_id))
        return Heartbeat(alive=True, cancel_requested=bool(row.cancel_requested))

    async def complete(self, lease: Lease, result: JobResult, retention_seconds: float) -> bool:
        """Mark the job COMPLETED; only the current lease holder can (the video is stored)."""
        now = clock.now()
        params = holds(lease) | {
            "new_result": result.to_json(),
            "now": now,
            "expires": now + retention_seconds,
        }
        row = await self._write_one(self._hot.complete, params)
        if row is None:
            return False
        job = Job.from_row(row)
        self._announce_finished(job, 0.0)
        self.fair.served(job.api_key_id, job.expected_seconds, job.started_at, now)
        return True

    async def fail(self, lease: Lease, failure: Failure, retention_seconds: float) -> bool:
        """Mark the job FAILED with its code and message (model error, or stopped after a
        cancel) and refund it: always for an error, for a cancellation while running if the
        policy says so."""
        now = clock.now()
        refund_cancelled = self.policy.refund_running_cancellations
        failed = await self._finish(
            lease,
            refund=lambda job: refund_cancelled or not job.cancel_requested,
            status=Status.FAILED.value,
            error=failure.message,
            failure=failure.code.value,
            finished_at=now,
            expires_at=now + retention_seconds,
        )
        if failed is not None:
            self.fair.served(failed.api_key_id, failed.expected_seconds, failed.started_at, now)
        return failed is not None

    async def release(self, lease: Lease) -> bool:
        """Hand a job back to the queue without spending an attempt (a draining worker). It
        keeps its priority and start tag: it is claimed as soon as it would have been."""
        released = await self._finish(
            lease,
            status=Status.QUEUED.value,
            ticket=tickets.requeued(),
            attempt=jobs.c.attempt - 1,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            progress=0,
            **NO_LIVE_STATE,
        )
        return released is not None

    async def _finish(
        self, lease: Lease, *, refund: Callable[[Job], bool] | None = None, **values: Any
    ) -> Job | None:
        """One fenced transition (fail, release) in a transaction that announces it, and for a
        FAILED job carries its refund when `refund(job)` says so; the job, None when the lease
        no longer held."""
        refunded = 0.0
        statement = jobs.update().where(HOLDS).values(**values).returning(*jobs.c)
        async with self.database.transaction() as conn:
            row = (await conn.execute(statement, holds(lease))).first()
            if row is None:
                return None
            job = Job.from_row(row)
            if refund is not None and refund(job):
                refunded = await self._refund(conn, job)
            for topic in self._topics(job):
                await self.notifier.send(conn, topic)
        self._announce_finished(job, refunded)
        return job

    async def wait_for_change(self, job_id: str, timeout: float) -> bool:
        return await self.notifier.wait(job_topic(job_id), timeout)

    async def wait_for_queued(self, timeout: float) -> bool:
        return await self.notifier.wait(QUEUED_TOPIC, timeout)


def _charge_and_insert(
    conn: Connection, new: NewJob, insert: sa.Insert, values: dict[str, Any]
) -> sa.Row:
    """In a submit's transaction: charge the job's price (`_Declined` when the key cannot
    pay), then insert it; the new row."""
    if new.charge is not None and not ledger.charge(conn, new.api_key_id, new.id, new.charge):
        raise _Declined
    return conn.execute(insert, values).one()


def _charged(new: NewJob, values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `HotStatements.charged_insert` for a queued, charged submit."""
    assert new.charge is not None
    params = submitted_params(values, new.served_by)
    return params | ledger.charge_params(new.api_key_id, new.id, new.charge)


class _Declined(Exception):
    """The key cannot pay; raised inside the submit transaction to roll it back."""
