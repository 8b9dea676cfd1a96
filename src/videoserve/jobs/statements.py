"""The hot path's statements, built once per store: submit, poll, claim, heartbeat, complete.

Why: building a SQLAlchemy expression costs 0.1-0.3 ms of Python every time (more than the
database round trip it describes), and these run for every job and every poll. Built once
with bound parameters, each execution is a cache hit in SQLAlchemy's compiled cache.

Every worker write is fenced by the lease (job id, attempt, token), and every UPDATE names its
allowed source states, as in `store`. Writes carry their own wake-ups (`Notifier.returning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from videoserve.jobs import ledger, schema, tickets
from videoserve.jobs.database import Database
from videoserve.jobs.records import Lease
from videoserve.jobs.states import Status, sources

jobs = schema.jobs

QUEUED_TOPIC = "queued"
FINISHED_TOPIC = "jobs:finished"  # any job reached COMPLETED or FAILED


def job_topic(job_id: str) -> str:
    return f"job:{job_id}"


# The same topic computed by the database for the row a statement changed.
_ROW_TOPIC = sa.literal("job:") + jobs.c.id


def holds(lease: Lease) -> dict[str, Any]:
    """Parameters for `HOLDS`: the lease a worker's write must still hold."""
    return {"lease_job": lease.job_id, "lease_attempt": lease.attempt, "held_token": lease.token}


HOLDS = sa.and_(
    jobs.c.id == sa.bindparam("lease_job"),
    jobs.c.attempt == sa.bindparam("lease_attempt"),
    jobs.c.lease_token == sa.bindparam("held_token"),
    jobs.c.status == Status.PROCESSING.value,
)


# The parameter prefix of `charged_insert`'s job columns (its other parameters: the charge's).
NEW_PREFIX = "new_"
# The columns a queued submit sets (`JobStore.create`); the others keep their defaults (NULL:
# a JSON column bound to None would store JSON null), and the ticket comes from the counter.
SUBMITTED = (
    "id",
    "api_key_id",
    "model",
    "served_by",
    "params",
    "input_key",
    "status",
    "progress",
    "attempt",
    "max_attempts",
    "cancel_requested",
    "created_at",
    "idempotency_key",
    "request_hash",
    "webhook_url",
    "cost",
)
_SUBMITTED = [jobs.c[name] for name in SUBMITTED]


def charged_insert(database: Database) -> sa.Insert:
    """PostgreSQL: charge the key, record the charge, take the model's next ticket and insert
    the queued job, in one statement (no row returned: the key may not pay, nothing written).

        WITH taken AS (UPDATE api_keys ... RETURNING id),
             recorded AS (INSERT INTO credit_ledger SELECT ... FROM taken),
             next_number AS (INSERT INTO job_queues SELECT ... FROM taken ON CONFLICT ...)
        INSERT INTO jobs SELECT :new_id, ..., last_ticket FROM next_number RETURNING ...

    Why: as a transaction this was four round trips (BEGIN, charge, insert, COMMIT), with the
    key's row and the model's counter row locked from the second to the fourth, and every
    concurrent submit of that key or model waiting on them. As one autocommit statement the
    locks are held for one statement and its commit. Parameters: the job's columns prefixed
    with `NEW_PREFIX`, `tickets.QUEUE_PARAM`, and `ledger.charge_params`."""
    taken = ledger.TAKE.cte("taken")
    recorded = ledger.recorded(taken).cte("recorded")
    number = database.numbered_for(tickets.COUNTER, tickets.QUEUE_PARAM, taken)
    row = [sa.bindparam(NEW_PREFIX + c.name, type_=c.type) for c in _SUBMITTED]
    return (
        jobs.insert()
        .add_cte(taken, recorded, number)
        .from_select(
            [*(c.name for c in _SUBMITTED), "ticket"],
            sa.select(*row, number.c[tickets.COUNTER.last.name]),
        )
    )


class HotStatements:
    """The prebuilt statements of one store (they embed its notifier's wake-ups)."""

    def __init__(self, database: Database, *, capped: bool) -> None:
        self._database = database
        notifier = database.notifier
        self._capped = capped
        self._claims: dict[bool, sa.Update] = {}  # by: restricted to some models
        # A queued job takes its model's next ticket in its INSERT (see `tickets`).
        queued = tickets.insert(database)
        self.insert = queued.returning(*jobs.c, *notifier.returning(QUEUED_TOPIC))
        # PostgreSQL: a charged submit as ONE statement (see `charged_insert`).
        self.charged_insert = (
            charged_insert(database).returning(*jobs.c, *notifier.returning(QUEUED_TOPIC))
            if database.postgres
            else None
        )
        self.queue_head = tickets.HEAD
        alive = sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > sa.bindparam("now"))
        self.get = sa.select(jobs).where(jobs.c.id == sa.bindparam("job_id"), alive)
        self.get_owned = self.get.where(jobs.c.api_key_id == sa.bindparam("owner"))
        self.queue_ahead = sa.select(sa.func.count()).where(
            jobs.c.status == Status.QUEUED.value,
            jobs.c.served_by == sa.bindparam("served_by"),
            sa.or_(
                jobs.c.created_at < sa.bindparam("created_at"),
                sa.and_(
                    jobs.c.created_at == sa.bindparam("created_at"),
                    jobs.c.id < sa.bindparam("job_id"),
                ),
            ),
        )
        lease_extended = jobs.update().where(HOLDS)
        self.heartbeat = lease_extended.values(lease_expires_at=sa.bindparam("expires")).returning(
            jobs.c.cancel_requested
        )
        self.heartbeat_progress = lease_extended.values(
            lease_expires_at=sa.bindparam("expires"), progress=sa.bindparam("new_progress")
        ).returning(jobs.c.cancel_requested, *notifier.returning(_ROW_TOPIC))
        finished_topics: list[str | sa.ColumnElement[str]] = [_ROW_TOPIC, FINISHED_TOPIC]
        if capped:
            finished_topics.append(QUEUED_TOPIC)  # a capped key may have a job to claim now
        self.complete = (
            jobs.update()
            .where(HOLDS)
            .values(
                status=Status.COMPLETED.value,
                progress=100,
                result=sa.bindparam("new_result", type_=jobs.c.result.type),
                finished_at=sa.bindparam("now"),
                expires_at=sa.bindparam("expires"),
            )
            .returning(*jobs.c, *notifier.returning(*finished_topics))
        )
        self._notifier = notifier

    def claim(self, served_by: Sequence[str] | None) -> sa.Update:
        """Take the oldest claimable job (of `served_by`'s models) with a fresh lease.

        Parameters: now, expires, token, worker, models (when `served_by`), cap (when capped).
        """
        with_models = served_by is not None
        if with_models not in self._claims:
            self._claims[with_models] = self._build_claim(with_models)
        return self._claims[with_models]

    def _build_claim(self, with_models: bool) -> sa.Update:
        oldest = (
            sa.select(jobs.c.id)
            .where(jobs.c.status.in_([s.value for s in sources(Status.PROCESSING)]))
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(1)
        )
        if with_models:
            oldest = oldest.where(jobs.c.served_by.in_(sa.bindparam("models", expanding=True)))
        if self._capped:
            # The key's PROCESSING count as a subquery of the claim: exact on SQLite (one
            # writer at a time); on PostgreSQL the store serialises capped claims (see claim).
            running = jobs.alias("running")
            busy = (
                sa.select(sa.func.count())
                .select_from(running)
                .where(
                    running.c.api_key_id == jobs.c.api_key_id,
                    running.c.status == Status.PROCESSING.value,
                )
                .scalar_subquery()
            )
            oldest = oldest.where(busy < sa.bindparam("cap"))
        oldest = self._database.claim_subquery(oldest)
        return (
            jobs.update()
            .where(jobs.c.id == oldest.scalar_subquery(), jobs.c.status == Status.QUEUED.value)
            .values(
                status=Status.PROCESSING.value,
                attempt=jobs.c.attempt + 1,
                lease_token=sa.bindparam("token"),
                lease_expires_at=sa.bindparam("expires"),
                worker_id=sa.bindparam("worker"),
                progress=0,
                started_at=sa.func.coalesce(jobs.c.started_at, sa.bindparam("now")),
            )
            .returning(*jobs.c, *self._notifier.returning(_ROW_TOPIC))
        )
