"""Queue tickets: a job's place in its model's queue in O(log n), whatever the backlog.

Why: counting the queued jobs ahead of a job (`COUNT` over the queue) costs a scan of the
backlog on every poll; behind 10,000 queued jobs a poll ran at 18% of its short-queue rate.
Instead each job queued for a model takes the next ticket of that model's queue at insert,
in the INSERT itself, and a poll reads the queue's head (the smallest queued ticket, one
index seek on `ix_jobs_ticket`):

    position = ticket - head + 1

Exact while a model's jobs are claimed in the order they were queued (the claim takes the
oldest). A job that leaves the queue out of order (cancelled while queued, skipped by the
per-key running cap) leaves a gap: the jobs behind it read one too many until the head
passes it. A job handed back to the queue (lost lease, draining worker) goes in front of the
head, as the claim order puts it there; k jobs handed back by one statement share or split
the places in front, so those behind read up to k - 1 too few until the k are claimed.
docs/api.md states these bounds to users.

Tickets are per model (`served_by`) because a worker serves some models and positions are
per model. How the INSERT takes the next ticket safely differs between the databases (a
counter row on PostgreSQL, the model's highest ticket on SQLite): `Database.numbered_insert`,
`Database.numbered_for` (PostgreSQL's charged submit, whose ticket is taken only when the
charge is) and `Database.reserve_numbers` hold that difference, as the seam holds the others.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from videoserve.db.database import Counter, Database
from videoserve.jobs import schema
from videoserve.jobs.states import Status

jobs = schema.jobs
job_queues = schema.job_queues

# The parameter naming the model whose queue a new job joins (the INSERT's own `served_by`
# bind is reserved by SQLAlchemy for the VALUES clause).
QUEUE_PARAM = "queue_of"

_QUEUED = Status.QUEUED.value


# A model's tickets: `jobs.ticket` counted per `served_by` (PostgreSQL's counters: job_queues).
COUNTER = Counter(
    number=jobs.c.ticket,
    group=jobs.c.served_by,
    key=job_queues.c.served_by,
    last=job_queues.c.last_ticket,
)


def insert(database: Database) -> sa.Insert:
    """An INSERT of a queued job that takes its model's next ticket (pass `QUEUE_PARAM`)."""
    return database.numbered_insert(COUNTER, QUEUE_PARAM)


async def reserve(database: Database, conn: AsyncConnection, served_by: str, count: int) -> int:
    """The first of `count` consecutive tickets of `served_by`'s queue, taken in `conn`'s
    transaction (for a bulk enqueue). On PostgreSQL the model's counter row stays locked until
    that transaction ends: the model's submits wait for the bulk insert to commit."""
    return await database.reserve_numbers(conn, COUNTER, served_by, count)


def _end_of_queue(table: Any, *where: sa.ColumnElement[bool], last: bool = False) -> sa.Select:
    """The lowest (or highest) ticket of `table`'s rows matching `where`, as an index walk
    that stops at its first row.

    Why not `min(ticket)`: PostgreSQL rewrites min/max into this walk only when its
    statistics say the rows are many; right after a bulk insert (before autovacuum analyses
    the table) it believes there is one row and aggregates every queued job's index entry
    instead: 8.7 ms a poll behind 10,000 queued, against 0.06 ms for the walk."""
    ticket = table.c.ticket
    return (
        sa.select(ticket)
        .where(*where, ticket.is_not(None))
        .order_by(ticket.desc() if last else ticket)
        .limit(1)
    )


def requeued() -> sa.ColumnElement[Any]:
    """The ticket of a job handed back to the queue: just in front of its model's head (the
    claim takes it next), or the model's last ticket when nothing else is queued."""
    ahead = jobs.alias("ahead")
    same_model = ahead.c.served_by == jobs.c.served_by
    head = _end_of_queue(ahead, same_model, ahead.c.status == _QUEUED).scalar_subquery()
    last = _end_of_queue(ahead, same_model, last=True).scalar_subquery()
    return sa.func.coalesce(head - 1, last)


def own_queue_head() -> sa.ColumnElement[Any]:
    """In a read of `jobs`: while the row is QUEUED, the head of its model's queue (NULL
    otherwise). A status poll reads it with the job: one statement where a queued poll took
    two, and the job and its head from one snapshot.

    Its constants are written into the SQL, not bound: each bound parameter cost every poll,
    QUEUED or not, about 0.2 us on SQLite (four of them made a completed job's poll 4 %
    slower); what is left costs a poll of another status about what one more column does."""
    ahead = jobs.alias("ahead")
    queued = sa.literal_column(f"'{_QUEUED}'", sa.String)
    head = (
        sa.select(ahead.c.ticket)
        .where(
            ahead.c.served_by == jobs.c.served_by,
            ahead.c.status == queued,
            ahead.c.ticket.is_not(None),
        )
        .order_by(ahead.c.ticket)
        .limit(sa.literal_column("1", sa.Integer))
        .offset(sa.literal_column("0", sa.Integer))  # SQLite writes an OFFSET: a bound 0 else
        .scalar_subquery()
    )
    return sa.case((jobs.c.status == queued, head))


# The head of a model's queue: one seek on ix_jobs_ticket.
HEAD = _end_of_queue(jobs, jobs.c.served_by == sa.bindparam("served_by"), jobs.c.status == _QUEUED)


def position(ticket: int, head: int | None) -> int:
    """1 for the next job to be claimed; never below 1 (the head may move between the
    poll's reads)."""
    return max(1, ticket - (head if head is not None else ticket) + 1)
