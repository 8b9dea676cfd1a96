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
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from videoserve.jobs import clock, dialects, ledger, schema, tickets
from videoserve.jobs.database import Database, Migrations
from videoserve.jobs.failures import CANCELLED_MESSAGE, Failure, FailureCode
from videoserve.jobs.handoff import StandingClaim, StandingClaims
from videoserve.jobs.job_status import JobStatus
from videoserve.jobs.records import Job, JobResult, Lease
from videoserve.jobs.statements import (
    FINISHED_TOPIC,
    HOLDS,
    NEW_PREFIX,
    QUEUED_TOPIC,
    SUBMITTED,
    HotStatements,
    holds,
    job_topic,
)
from videoserve.jobs.states import TERMINAL, Status, sources

log = logging.getLogger("videoserve.jobs")
jobs = schema.jobs

__all__ = ["FINISHED_TOPIC", "QUEUED_TOPIC", "JobStore", "NewJob", "Policy", "job_topic"]


@dataclass(frozen=True)
class NewJob:
    """What a submit stores."""

    id: str
    api_key_id: str
    model: str
    served_by: str
    params: dict[str, Any]
    max_attempts: int
    input_key: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    # A job refused before it could run (content policy) is stored already FAILED.
    failed_with: Failure | None = None
    retention_seconds: float = 3600.0
    webhook_url: str | None = None  # per-request webhook (?webhook=URL)
    charge: ledger.Charge | None = None  # the price to deduct; None: nothing is charged


@dataclass(frozen=True)
class Policy:
    """Operator choices the store applies inside its statements."""

    max_running_per_key: int = 0  # PROCESSING jobs one key may have at once; 0: no cap
    refund_content_blocks: bool = True
    refund_running_cancellations: bool = True


class Observer:
    """Told what the store committed (the metrics subclass it); by default, nothing happens.

    Called after the commit, in the process that made the change; must not block or raise."""

    def claimed(self, job: Job) -> None:
        """A worker took the job (its `attempt` says which time)."""

    def finished(self, job: Job) -> None:
        """The job reached COMPLETED or FAILED."""

    def credits(self, kind: ledger.Kind, amount: float) -> None:
        """Credits were charged or refunded."""


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learns: whether the lease still holds, and whether to stop."""

    alive: bool
    cancel_requested: bool = False


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class JobStore:
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
        self._hot = HotStatements(database, capped=self.policy.max_running_per_key > 0)
        self._queue_head = database.row_reader(self._hot.queue_head)  # a poll's second read
        # This process's idle worker slots, which a submit claims for (`handoff`).
        self.standing = StandingClaims()

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
            **_new_row(new, now),
            "idempotency_key": new.idempotency_key,
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
        refunded = 0.0
        offer = self._standing_for(new)
        row: sa.Row | None
        try:
            if offer is not None:
                row = await self._create_and_claim(new, values, offer)
            elif new.charge is None and new.failed_with is None:
                # Nothing to charge or refund: one INSERT, announcing itself (the common case).
                row = await self._write_one(self._hot.insert, values)
            elif self._hot.charged_insert is not None and new.failed_with is None:
                # PostgreSQL: charge, ticket and insert as one statement (see statements).
                row = await self._write_one(self._hot.charged_insert, _charged(new, values))
                if row is None:
                    raise _Declined
            else:
                row, refunded = await self._create_with_credits(new, values, topic)
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
        if new.charge is not None:
            self.observer.credits("charge", new.charge.amount)
        if refunded:
            self.observer.credits("refund", refunded)
        if job.status == Status.FAILED:
            self.observer.finished(job)
        return job, True

    def _standing_for(self, new: NewJob) -> StandingClaim | None:
        """An idle slot of this process to claim for in the submit's transaction, if any.

        Not on PostgreSQL with a per-key cap, whose claims take an advisory lock first (see
        `claim`): a submit does not wait on that lock; the slot claims on its own instead."""
        if new.failed_with is not None:
            return None
        if self.policy.max_running_per_key and self.database.postgres:
            return None
        return self.standing.take(new.served_by)

    async def _create_and_claim(
        self, new: NewJob, values: dict[str, Any], offer: StandingClaim
    ) -> sa.Row:
        """The submit's charge and INSERT, then the standing slot's claim, in one transaction
        (see `handoff`); hands the slot what it claimed once committed. Returns the new row."""
        claim, params, token = self._claim_statement(
            offer.worker_id, offer.served_by, offer.lease_seconds
        )
        charged_insert = self._hot.charged_insert

        def work(conn: Connection) -> tuple[sa.Row, sa.Row | None]:
            if new.charge is not None and charged_insert is not None:
                # PostgreSQL: charge and insert in one statement
                found = conn.execute(charged_insert, _charged(new, values)).first()
                if found is None:
                    raise _Declined
                row = found
            else:
                row = _charge_and_insert(conn, new, self._hot.insert, values)
            return row, conn.execute(claim, params).first()

        row, claimed = await self.database.run_transaction(work)
        if claimed is not None:
            offer.hand(self._claimed(claimed, token))
        return row

    async def _create_with_credits(
        self, new: NewJob, values: dict[str, Any], topic: str
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
            row = _charge_and_insert(conn, new, insert, values)
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
        """Queue many jobs in one transaction, each with its model's next ticket; returns how
        many were stored.

        For backlogs made in bulk (benchmarks, imports): jobs to queue only, so nothing is
        charged, refused or deduplicated here (`create` does that per submit). The jobs of one
        call share `created_at`, and the claim then takes them in id order: their tickets
        follow that order, so queue positions stay exact."""
        if not new_jobs:
            return 0
        for new in new_jobs:
            if new.failed_with is not None or new.charge is not None or new.idempotency_key:
                raise ValueError(
                    f"enqueue_many stores queued jobs only: job {new.id} has a failure, a charge "
                    "or an idempotency key (submit it with create)"
                )
        now = clock.now()
        by_model: dict[str, list[NewJob]] = {}
        for new in sorted(new_jobs, key=lambda new: new.id):
            by_model.setdefault(new.served_by, []).append(new)
        async with self.database.transaction() as conn:
            for served_by, queued in by_model.items():
                first = await tickets.reserve(self.database, conn, served_by, len(queued))
                rows = [_queued_row(new, now, first + i) for i, new in enumerate(queued)]
                await conn.execute(jobs.insert(), rows)
            await self.notifier.send(conn, QUEUED_TOPIC)
        self.notifier.after_commit(QUEUED_TOPIC)
        return len(new_jobs)

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

    async def count_live_workers(self, stale_after: float) -> int:
        """Workers (the `workers` table `WorkerRegistry` keeps) heard from recently."""
        workers = schema.workers
        query = sa.select(sa.func.count()).where(
            workers.c.last_heartbeat >= clock.now() - stale_after
        )
        async with self.database.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    # --- the worker's side -------------------------------------------------------------------
    async def claim(
        self, worker_id: str, served_by: Sequence[str] | None, lease_seconds: float
    ) -> tuple[Job, Lease] | None:
        """Atomically take the oldest queued job of the given models, with a fresh lease.

        With `policy.max_running_per_key`, jobs of a key that already has that many PROCESSING
        are skipped. The count is a subquery of the claim, so on SQLite (one writer at a time)
        it is exact. On PostgreSQL two claimers could each count the same committed snapshot
        and both claim a job of one key, exceeding the cap; so while a cap is set, claims take
        a transaction-scoped advisory lock first, which serialises them (a claim is one short
        statement; workers claim once per video). Without a cap no lock is taken.
        """
        statement, params, token = self._claim_statement(worker_id, served_by, lease_seconds)
        if self.policy.max_running_per_key > 0 and self.database.postgres:
            async with self.database.transaction() as conn:
                # Held until commit, and each statement after it sees every earlier claim.
                await self.database.advisory_lock(conn, "claim_cap")
                row = (await conn.execute(statement, params)).first()
        else:
            row = await self._write_one(statement, params)
        return None if row is None else self._claimed(row, token)

    def _claim_statement(
        self, worker_id: str, served_by: Sequence[str] | None, lease_seconds: float
    ) -> tuple[sa.Update, dict[str, Any], str]:
        """The claim, its parameters and the new lease's fencing token."""
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
        return self._hot.claim(served_by), params, token

    def _claimed(self, row: sa.Row, token: str) -> tuple[Job, Lease]:
        """After a claim's commit: the job and its lease, announced and observed."""
        job = Job.from_row(row)
        self.notifier.after_commit(job_topic(job.id))
        self.observer.claimed(job)
        return job, Lease(job.id, job.attempt, token)

    async def heartbeat(
        self, lease: Lease, lease_seconds: float, progress: int | None = None
    ) -> Heartbeat:
        """Extend the lease (and record progress); tells the worker if it lost the job."""
        params = holds(lease) | {"expires": clock.now() + lease_seconds}
        if progress is None:
            row = await self._write_one(self._hot.heartbeat, params)
        else:
            params["new_progress"] = max(0, min(100, int(progress)))
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
        self._announce_finished(Job.from_row(row), 0.0)
        return True

    async def fail(self, lease: Lease, failure: Failure, retention_seconds: float) -> bool:
        """Mark the job FAILED with its code and message (model error, or stopped after a
        cancel) and refund it: always for an error, for a cancellation while running if the
        policy says so."""
        now = clock.now()
        refund_cancelled = self.policy.refund_running_cancellations
        return await self._finish(
            lease,
            refund=lambda job: refund_cancelled or not job.cancel_requested,
            status=Status.FAILED.value,
            error=failure.message,
            failure=failure.code.value,
            finished_at=now,
            expires_at=now + retention_seconds,
        )

    async def release(self, lease: Lease) -> bool:
        """Hand a job back to the queue without spending an attempt (a draining worker)."""
        return await self._finish(
            lease,
            status=Status.QUEUED.value,
            ticket=tickets.requeued(),
            attempt=jobs.c.attempt - 1,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            progress=0,
        )

    def _topics(self, job: Job) -> tuple[str, ...]:
        """What a worker's transition of `job` announces."""
        if job.status.value not in _TERMINAL_VALUES:
            return (job_topic(job.id), QUEUED_TOPIC)  # handed back: claimable again
        if self.policy.max_running_per_key:  # a capped key may have a job to claim now
            return (job_topic(job.id), FINISHED_TOPIC, QUEUED_TOPIC)
        return (job_topic(job.id), FINISHED_TOPIC)

    def _announce_finished(self, job: Job, refunded: float) -> None:
        """After the commit: wake this process's waiters and tell the observer."""
        for topic in self._topics(job):
            self.notifier.after_commit(topic)
        if refunded:
            self.observer.credits("refund", refunded)
        if job.status.value in _TERMINAL_VALUES:
            self.observer.finished(job)

    async def _finish(
        self, lease: Lease, *, refund: Callable[[Job], bool] | None = None, **values: Any
    ) -> bool:
        """One fenced transition (fail, release) in a transaction that announces it, and for a
        FAILED job carries its refund when `refund(job)` says so."""
        refunded = 0.0
        statement = jobs.update().where(HOLDS).values(**values).returning(*jobs.c)
        async with self.database.transaction() as conn:
            row = (await conn.execute(statement, holds(lease))).first()
            if row is None:
                return False
            job = Job.from_row(row)
            if refund is not None and refund(job):
                refunded = await self._refund(conn, job)
            for topic in self._topics(job):
                await self.notifier.send(conn, topic)
        self._announce_finished(job, refunded)
        return True

    async def request_cancel(self, job_id: str, api_key_id: str, retention_seconds: float) -> Job:
        """Cancel: a queued job fails at once (refunded); a running one is asked to stop at its
        next step (its refund comes with `fail`)."""
        now = clock.now()
        failed = jobs.c.status.in_([s.value for s in sources(Status.FAILED)])
        refunded = 0.0
        async with self.database.transaction() as conn:
            row = (
                await conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.api_key_id == api_key_id)
                    .where(jobs.c.status == Status.QUEUED.value, failed)
                    .values(
                        status=Status.FAILED.value,
                        error=CANCELLED_MESSAGE,
                        failure=FailureCode.CANCELLED.value,
                        finished_at=now,
                        expires_at=now + retention_seconds,
                    )
                    .returning(*jobs.c)
                )
            ).first()
            cancelled = Job.from_row(row) if row is not None else None
            if cancelled is not None:
                refunded = await self._refund(conn, cancelled)
            await conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.api_key_id == api_key_id)
                .where(jobs.c.status == Status.PROCESSING.value)
                .values(cancel_requested=True)
            )
            await self.notifier.send(conn, job_topic(job_id))
            await self.notifier.send(conn, FINISHED_TOPIC)
        self.notifier.after_commit(job_topic(job_id))
        self.notifier.after_commit(FINISHED_TOPIC)
        if refunded:
            self.observer.credits("refund", refunded)
        if cancelled is not None:
            self.observer.finished(cancelled)
        job = await self.get(job_id, api_key_id=api_key_id)
        if job is None:
            raise KeyError(job_id)
        return job

    # --- maintenance -------------------------------------------------------------------------
    async def reap_expired_leases(self, retention_seconds: float) -> tuple[int, int]:
        """Requeue jobs whose worker stopped heartbeating; fail (and refund) those out of
        attempts. Returns (requeued, failed)."""
        now = clock.now()
        lost = sa.and_(
            jobs.c.status == Status.PROCESSING.value,
            jobs.c.lease_expires_at < now,
        )
        async with self.database.transaction() as conn:
            failed = (
                await conn.execute(
                    jobs.update()
                    .where(lost, jobs.c.attempt >= jobs.c.max_attempts)
                    .values(
                        status=Status.FAILED.value,
                        error=sa.literal("worker lost: the job's lease expired on each of its ")
                        + sa.cast(jobs.c.attempt, sa.String)
                        + sa.literal(" attempts (last worker: ")
                        + sa.func.coalesce(jobs.c.worker_id, "unknown")
                        + sa.literal(")"),
                        failure=FailureCode.WORKER_LOST.value,
                        finished_at=now,
                        expires_at=now + retention_seconds,
                        lease_token=None,
                    )
                    .returning(*jobs.c)
                )
            ).all()
            failed_jobs = [Job.from_row(r) for r in failed]
            refunds = [await self._refund(conn, job) for job in failed_jobs]
            requeued = (
                await conn.execute(
                    jobs.update()
                    .where(lost, jobs.c.attempt < jobs.c.max_attempts)
                    .values(
                        status=Status.QUEUED.value,
                        ticket=tickets.requeued(),
                        lease_token=None,
                        lease_expires_at=None,
                        worker_id=None,
                        progress=0,
                    )
                    .returning(jobs.c.id)
                )
            ).all()
            topics = [job_topic(r.id) for r in (*failed, *requeued)]
            if failed:
                topics.append(FINISHED_TOPIC)
            if requeued or (failed and self.policy.max_running_per_key):
                topics.append(QUEUED_TOPIC)
            for topic in topics:
                await self.notifier.send(conn, topic)
        for topic in topics:
            self.notifier.after_commit(topic)
        for amount in refunds:
            if amount:
                self.observer.credits("refund", amount)
        for job in failed_jobs:
            self.observer.finished(job)
        for r in requeued:
            log.warning("job %s lost its worker; requeued", r.id)
        for r in failed:
            log.error("job %s lost its worker too many times; failed", r.id)
        return len(requeued), len(failed)

    async def expired(self, limit: int = 100) -> list[Job]:
        """Terminal jobs past their retention, oldest first."""
        query = (
            sa.select(jobs)
            .where(
                jobs.c.expires_at.is_not(None),
                jobs.c.expires_at <= clock.now(),
                jobs.c.status.in_([s.value for s in TERMINAL]),
            )
            .order_by(jobs.c.expires_at)
            .limit(limit)
        )
        async with self.database.connect() as conn:
            return [Job.from_row(r) for r in (await conn.execute(query)).all()]

    async def delete(self, job_ids: Sequence[str]) -> int:
        """Delete jobs; one that had not finished is refunded in the same transaction.

        The refund lives here, not in a route, so every path that deletes an unfinished job
        (the Videos API's DELETE, an admin tool) gives the credits back exactly once: a job
        that failed first was refunded then, and `ledger.refund` never pays a job twice."""
        if not job_ids:
            return 0
        refunded = 0.0
        statement = jobs.delete().where(jobs.c.id.in_(list(job_ids))).returning(*jobs.c)
        async with self.database.transaction() as conn:
            rows = (await conn.execute(statement)).all()
            for row in rows:
                job = Job.from_row(row)
                if self._refunds_deletion(job):
                    refunded += await ledger.refund(
                        self.database, conn, job.api_key_id, job.id, job.cost, DELETED_UNFINISHED
                    )
        if refunded:
            self.observer.credits("refund", refunded)
        return len(rows)

    def _refunds_deletion(self, job: Job) -> bool:
        if job.status == Status.QUEUED:
            return True
        # A running job deleted is a running job cancelled: the same policy.
        return job.status == Status.PROCESSING and self.policy.refund_running_cancellations

    async def _refund(self, conn: Any, job: Job) -> float:
        note = f"refund: {job.error}"
        return await ledger.refund(self.database, conn, job.api_key_id, job.id, job.cost, note)

    async def wait_for_change(self, job_id: str, timeout: float) -> bool:
        return await self.notifier.wait(job_topic(job_id), timeout)

    async def wait_for_queued(self, timeout: float) -> bool:
        return await self.notifier.wait(QUEUED_TOPIC, timeout)


DELETED_UNFINISHED = "refund: deleted before it finished"
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def _new_row(new: NewJob, now: float) -> dict[str, Any]:
    """The columns every newly queued job starts with."""
    return {
        "id": new.id,
        "api_key_id": new.api_key_id,
        "model": new.model,
        "served_by": new.served_by,
        "params": new.params,
        "input_key": new.input_key,
        "status": Status.QUEUED.value,
        "progress": 0,
        "attempt": 0,
        "max_attempts": new.max_attempts,
        "cancel_requested": False,
        "created_at": now,
        "request_hash": new.request_hash,
        "webhook_url": new.webhook_url,
    }


def _queued_row(new: NewJob, now: float, ticket: int) -> dict[str, Any]:
    """The row of a job queued in bulk (see `JobStore.enqueue_many`)."""
    return {**_new_row(new, now), "ticket": ticket}


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
    params = {NEW_PREFIX + name: values[name] for name in SUBMITTED}
    params[tickets.QUEUE_PARAM] = new.served_by
    return params | ledger.charge_params(new.api_key_id, new.id, new.charge)


class _Declined(Exception):
    """The key cannot pay; raised inside the submit transaction to roll it back."""
