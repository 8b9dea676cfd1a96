"""A status poll's read: the columns a poll shows, read afresh from the database every time.

Why not `JobStore.get`: a poll shows a job's state and timestamps, never its parameters or its
result, and decoding those two JSON columns into a `Job` cost more than the read itself. So a
poll reads only its columns, with one statement built once; on a SQLite file it runs straight
on the DB-API cursor of the event loop's read connection (`Database.row_reader`), without
SQLAlchemy's per-execution work, which was most of a poll's database time. Nothing is cached:
every poll sees the job's current row. On PostgreSQL it runs on asyncpg directly, on the pool
of single statements (`db/postgres.py: PgPool`), for the same reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa

from videoserve.db.database import Database
from videoserve.jobs import schema, tickets
from videoserve.jobs.failures import FailureCode
from videoserve.jobs.states import Status

jobs = schema.jobs


class JobStatus(NamedTuple):
    """What a status poll shows of a job (the same names as on `Job`).

    A NamedTuple, not a frozen dataclass: as immutable, and built in a fifth of the time (a
    frozen dataclass sets each of its 13 fields through `object.__setattr__`), once a poll."""

    id: str
    api_key_id: str  # owner; other keys get 404
    model: str
    served_by: str
    status: Status
    progress: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    error: str | None
    failure: FailureCode | None
    ticket: int | None
    phase: str | None
    step: int | None
    steps: int | None
    preview_step: int | None
    priority: int  # class: 0 low, 1 normal, 2 high (`fairness.Priority`)
    # Not on `Job`: while QUEUED, the lowest ticket of its model's queue, read with the job
    # (`tickets.own_queue_head`); its position is `tickets.position(ticket, queue_head)`.
    queue_head: int | None


# Not `id`: the caller has it (the read is by it), and every column read costs a poll ~0.2 us
# (the driver describes each one afresh on every execution).
_COLUMNS = (
    jobs.c.api_key_id,
    jobs.c.model,
    jobs.c.served_by,
    jobs.c.status,
    jobs.c.progress,
    jobs.c.created_at,
    jobs.c.started_at,
    jobs.c.finished_at,
    jobs.c.expires_at,
    jobs.c.error,
    jobs.c.failure,
    jobs.c.ticket,
    jobs.c.phase,
    jobs.c.step,
    jobs.c.steps,
    jobs.c.preview_step,
    jobs.c.priority,
    tickets.own_queue_head().label("queue_head"),
)
if JobStatus._fields[1:] != tuple(column.name for column in _COLUMNS):  # read by position
    raise RuntimeError(
        "job_status: _COLUMNS, JobStatus and _record must list the same names in order"
    )
# The same liveness rule as `JobStore.get`: an expired job answers 404 before the sweep runs.
_READ = sa.select(*_COLUMNS).where(
    jobs.c.id == sa.bindparam("job_id"),
    sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > sa.bindparam("now")),
)


# Lookups, not `Status(value)`: the enum's call goes through `EnumMeta.__call__` (a tenth of
# a microsecond each, twice a poll).
_STATUSES = {status.value: status for status in Status}
_FAILURES = {code.value: code for code in FailureCode}


# `tuple.__new__`, not `JobStatus(...)` or `JobStatus._make`: a NamedTuple's constructor is a
# Python function taking 19 arguments by name; this builds the same tuple in half the time.
_new = tuple.__new__
_STATUS_AT = JobStatus._fields.index("status")
_FAILURE_AT = JobStatus._fields.index("failure")


def _record(job_id: str, row: Any) -> JobStatus:
    # The row after the id, two columns converted in place: about half `_make`'s time with
    # slices; unpacking into 19 named locals was ~50 ns faster, not worth two lists of names.
    values = [job_id, *row]
    values[_STATUS_AT] = _STATUSES[values[_STATUS_AT]]
    failure = values[_FAILURE_AT]
    if failure is not None:
        values[_FAILURE_AT] = _FAILURES[failure]
    return _new(JobStatus, values)


class StatusReader:
    """Reads one job's `JobStatus` by id."""

    def __init__(self, database: Database) -> None:
        self._read = database.row_reader(_READ)

    async def read(self, job_id: str, now: float) -> JobStatus | None:
        """The job's status columns, unless it does not exist or has expired."""
        row = await self._read({"job_id": job_id, "now": now})
        return _record(job_id, row) if row is not None else None
