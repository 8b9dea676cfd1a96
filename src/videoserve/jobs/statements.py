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

from videoserve.db.database import Database
from videoserve.jobs import fairness, ledger, schema, tickets
from videoserve.jobs.records import Lease
from videoserve.jobs.states import Status, sources
from videoserve.jobs.store_records import SUBMITTED

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
# The columns a queued submit sets (`store_records.SUBMITTED`, derived from `NewJob`); the
# others keep their defaults (NULL: a JSON column bound to None would store JSON null), and
# the ticket comes from the counter.
_SUBMITTED = [jobs.c[name] for name in SUBMITTED]


def charged_insert(database: Database, fair: fairness.FairShare | None = None) -> sa.Insert:
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
    with `NEW_PREFIX`, `tickets.QUEUE_PARAM`, and `ledger.charge_params`.

    With `fair`, the charge's UPDATE stamps the key's finish tag too and the job's start tag
    comes from it (`FairShare.stamp_charge`; bind `Plan.params`, not `start_tag`)."""
    take = ledger.TAKE if fair is None else fair.stamp_charge()
    taken = take.cte("taken")
    recorded = ledger.recorded(taken).cte("recorded")
    number = database.numbered_for(tickets.COUNTER, tickets.QUEUE_PARAM, taken)
    start = None if fair is None else sa.select(taken.c.start_tag).scalar_subquery()
    return (
        jobs.insert()
        .add_cte(taken, recorded, number)
        .from_select(
            [*(c.name for c in _SUBMITTED), "ticket"],
            sa.select(*_submitted_row(start), number.c[tickets.COUNTER.last.name]),
        )
    )


def stamped_insert(database: Database, fair: fairness.FairShare) -> sa.Insert:
    """PostgreSQL under fair share: a queued, uncharged submit that stamps its key, takes
    its model's next ticket and inserts the job, in one statement.

        WITH stamped AS (UPDATE api_keys SET finish_tag = ... RETURNING start_tag),
             next_number AS (INSERT INTO job_queues ... ON CONFLICT ... RETURNING last_ticket)
        INSERT INTO jobs SELECT :new_id, ..., coalesce(stamped's tag, V), last_ticket

    Bound like `charged_insert` (`NEW_PREFIX`ed columns, `tickets.QUEUE_PARAM`, and
    `fairness.Plan.params`), not by column name: SQLAlchemy turns every parameter named like
    a column of a CTE's UPDATE (`id`, `created_at`) into a SET of that column."""
    stamped = fair.stamp_cte()
    number = database.next_number(tickets.COUNTER, tickets.QUEUE_PARAM)
    ticket = sa.select(number.c[tickets.COUNTER.last.name]).scalar_subquery()
    return (
        jobs.insert()
        .add_cte(stamped, number)
        .from_select(
            [*(c.name for c in _SUBMITTED), "ticket"],
            sa.select(*_submitted_row(fair.start_tag(stamped)), ticket),
        )
    )


def _submitted_row(start_tag: sa.ColumnElement[Any] | None) -> list[sa.ColumnElement[Any]]:
    """A submitted job's columns as `NEW_PREFIX`ed parameters; `start_tag` when the statement
    computes it."""
    return [
        sa.bindparam(NEW_PREFIX + c.name, type_=c.type)
        if start_tag is None or c.name != "start_tag"
        else start_tag
        for c in _SUBMITTED
    ]


def submitted_params(values: dict[str, Any], served_by: str) -> dict[str, Any]:
    """The parameters of `charged_insert`'s and `stamped_insert`'s job columns (the start
    tag, where the statement computes it, is left out) and of its model's queue."""
    params = {NEW_PREFIX + name: values[name] for name in SUBMITTED if name in values}
    params[tickets.QUEUE_PARAM] = served_by
    return params


# A job that starts over (claimed, handed back, requeued) shows no phase until its worker says.
NO_LIVE_STATE: dict[str, Any] = dict.fromkeys(schema.LIVE_COLUMNS)


class HotStatements:
    """The prebuilt statements of one store (they embed its notifier's wake-ups)."""

    def __init__(
        self, database: Database, *, capped: bool, fair: fairness.FairShare | None = None
    ) -> None:
        self._database = database
        notifier = database.notifier
        self._capped = capped
        # By (restricted to some models, warm: only the models the worker has loaded).
        self._claims: dict[tuple[bool, bool], sa.Update] = {}
        # A queued job takes its model's next ticket in its INSERT (see `tickets`).
        queued = tickets.insert(database)
        # Under fair share, PostgreSQL's submit stamps its key in the INSERT too; SQLite's
        # stamps it in the same transaction (`FairShare.stamp_in`).
        self.stamps_in_insert = fair is not None and database.writable_ctes
        if fair is not None and database.writable_ctes:
            queued = stamped_insert(database, fair)
        self.insert = queued.returning(*jobs.c, *notifier.returning(QUEUED_TOPIC))
        # PostgreSQL: a charged submit as ONE statement (see `charged_insert`).
        self.charged_insert = (
            charged_insert(database, fair).returning(*jobs.c, *notifier.returning(QUEUED_TOPIC))
            if database.writable_ctes
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
            lease_expires_at=sa.bindparam("expires"),
            progress=sa.bindparam("new_progress"),
            **{name: sa.bindparam(f"new_{name}") for name in schema.LIVE_COLUMNS},
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

    def insert_params(
        self, values: dict[str, Any], served_by: str, plan: fairness.Plan
    ) -> dict[str, Any]:
        """The parameters of `insert` for a queued job's columns `values` (which name its
        queue in `tickets.QUEUE_PARAM`)."""
        if self.stamps_in_insert:
            return submitted_params(values, served_by) | plan.params
        return values

    def claim(self, served_by: Sequence[str] | None, *, warm: bool = False) -> sa.Update:
        """Take the oldest claimable job (of `served_by`'s models) with a fresh lease.

        Parameters: now, expires, token, worker, models (when `served_by`), cap (when capped);
        with `warm`, also warm (the models the worker has loaded) and skip_before (see
        `_prefer_warm`).
        """
        variant = (served_by is not None, warm)
        if variant not in self._claims:
            self._claims[variant] = self._build_claim(*variant)
        return self._claims[variant]

    def _build_claim(self, with_models: bool, warm: bool = False) -> sa.Update:
        oldest = (
            sa.select(jobs.c.id)
            .where(
                jobs.c.status.in_([s.value for s in sources(Status.PROCESSING)]),
                # Never hand out a job past its start deadline (the sweep fails it `expired`).
                sa.or_(
                    jobs.c.start_deadline.is_(None), jobs.c.start_deadline > sa.bindparam("now")
                ),
            )
            # Priority class, then fair share's start tag, then age (see `fairness`).
            .order_by(*fairness.claim_order(jobs))
            .limit(1)
        )
        if with_models:
            oldest = oldest.where(jobs.c.served_by.in_(sa.bindparam("models", expanding=True)))
        if warm:
            oldest = _prefer_warm(oldest, with_models)
        # The key's PROCESSING count as a subquery of the claim: exact on SQLite (one writer
        # at a time); on PostgreSQL the store serialises capped claims (see claim). Counted
        # only for a key with a cap (its own `max_running`, else the server's `cap`).
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
        key_cap = (
            sa.select(schema.api_keys.c.max_running)
            .where(schema.api_keys.c.id == jobs.c.api_key_id)
            .scalar_subquery()
        )
        cap = sa.func.coalesce(key_cap, sa.bindparam("cap")) if self._capped else key_cap
        oldest = oldest.where(sa.case((cap.is_(None), sa.true()), else_=busy < cap))
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
                **NO_LIVE_STATE,
                start_deadline=None,  # started in time: a later requeue never expires it
                started_at=sa.func.coalesce(jobs.c.started_at, sa.bindparam("now")),
            )
            .returning(*jobs.c, *self._notifier.returning(_ROW_TOPIC))
        )


def _prefer_warm(oldest: sa.Select[Any], with_models: bool) -> sa.Select[Any]:
    """Warm routing: the claim restricted to jobs of the models the worker has loaded
    (`warm`), unless a claimable job of any model it serves was queued before `skip_before`
    (now - VIDEOSERVE_WARM_SKIP_SECONDS): then this claim finds nothing and the worker's
    plain claim, which follows, takes that job in its turn. So a job is passed over for warm
    ones only while it is younger than the bound. The order within (the ORDER BY above) is
    the plain claim's.

    The guard is one seek along ix_jobs_queue (status, created_at) from the oldest queued job,
    stopping at the first of the worker's models: old jobs of models it does not serve are
    the only ones it steps over."""
    waited = jobs.alias("waited")
    overdue = sa.exists().where(
        waited.c.status == Status.QUEUED.value,
        waited.c.created_at < sa.bindparam("skip_before"),
        sa.or_(waited.c.start_deadline.is_(None), waited.c.start_deadline > sa.bindparam("now")),
    )
    if with_models:
        overdue = overdue.where(waited.c.served_by.in_(sa.bindparam("models", expanding=True)))
    return oldest.where(
        jobs.c.served_by.in_(sa.bindparam("warm", expanding=True)), sa.not_(overdue)
    )
