"""The store's other half: cancelling, and the housekeeping every process runs (leases that
expired, start deadlines passed, retention). Each is one transaction whose WHERE holds the
rule, so any number of processes may run them at once and each job moves exactly once.

A base class of `JobStore` (which supplies the database, notifier, policy and observer), apart
so that neither half passes a few hundred lines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from videoserve import clock
from videoserve.db.database import Database
from videoserve.jobs import deadlines, ledger, schema, tickets
from videoserve.jobs.failures import CANCELLED_MESSAGE, FailureCode
from videoserve.jobs.records import Job
from videoserve.jobs.statements import FINISHED_TOPIC, NO_LIVE_STATE, QUEUED_TOPIC, job_topic
from videoserve.jobs.states import TERMINAL, Status, sources
from videoserve.jobs.store_records import Observer, Policy

log = logging.getLogger("videoserve.jobs")
jobs = schema.jobs

DELETED_UNFINISHED = "refund: deleted before it finished"


class Sweeps:
    """Cancel, reap, expire and delete: the store's transitions no worker's lease fences."""

    database: Database
    notifier: Any
    policy: Policy
    observer: Observer

    async def get(self, job_id: str, *, api_key_id: str | None = None) -> Job | None:
        raise NotImplementedError  # the store's

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
                        **NO_LIVE_STATE,
                    )
                    .returning(jobs.c.id)
                )
            ).all()
            topics = [job_topic(r.id) for r in (*failed, *requeued)]
            if failed:
                topics.append(FINISHED_TOPIC)
            if requeued or (failed and self.policy.max_running_per_key):
                topics.append(QUEUED_TOPIC)
            await self._send(conn, topics)
        self._committed(topics, refunds, failed_jobs)
        for r in requeued:
            log.warning("job %s lost its worker; requeued", r.id)
        for r in failed:
            log.error("job %s lost its worker too many times; failed", r.id)
        return len(requeued), len(failed)

    async def expire_unstarted(self, retention_seconds: float) -> list[Job]:
        """Fail (`expired`, refunded) every QUEUED job past its start deadline; returns them.

        One UPDATE whose WHERE holds the rule, so any number of processes may run it at once:
        each job moves (and is refunded) exactly once, and a claim racing it either took the
        job first (it is no longer QUEUED) or finds it FAILED."""
        now = clock.now()
        statement = (
            jobs.update()
            .where(jobs.c.status == Status.QUEUED.value, jobs.c.start_deadline <= now)
            .where(jobs.c.status.in_([s.value for s in sources(Status.FAILED)]))
            .values(
                status=Status.FAILED.value,
                error=deadlines.EXPIRED_MESSAGE,
                failure=FailureCode.EXPIRED.value,
                finished_at=now,
                expires_at=now + retention_seconds,
            )
            .returning(*jobs.c)
        )
        async with self.database.transaction() as conn:
            expired = [Job.from_row(r) for r in (await conn.execute(statement)).all()]
            refunds = [await self._refund(conn, job) for job in expired]
            topics = [job_topic(job.id) for job in expired]
            if expired:
                topics.append(FINISHED_TOPIC)
            await self._send(conn, topics)
        self._committed(topics, refunds, expired)
        for job in expired:
            log.info("job %s expired before any worker started it", job.id)
        return expired

    async def _send(self, conn: Any, topics: Sequence[str]) -> None:
        """Inside a sweep's transaction: its wake-ups, delivered with the commit."""
        for topic in topics:
            await self.notifier.send(conn, topic)

    def _committed(
        self, topics: Sequence[str], refunds: Sequence[float], finished: Sequence[Job]
    ) -> None:
        """After a sweep's commit: wake this process's waiters, tell the observer of the
        refunds and of the jobs that ended."""
        for topic in topics:
            self.notifier.after_commit(topic)
        for amount in refunds:
            if amount:
                self.observer.credits("refund", amount)
        for job in finished:
            self.observer.finished(job)

    async def next_start_deadline(self) -> float | None:
        """The soonest start deadline of a QUEUED job (one seek on ix_jobs_start_deadline)."""
        query = (
            sa.select(jobs.c.start_deadline)
            .where(jobs.c.status == Status.QUEUED.value, jobs.c.start_deadline.is_not(None))
            .order_by(jobs.c.start_deadline)
            .limit(1)
        )
        row = await self.database.first(query)
        return None if row is None else float(row[0])

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


_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
