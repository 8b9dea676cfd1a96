"""The store's records: what a submit stores (`NewJob`) and the columns it starts with, the
operator's policy, the observer the metrics implement, and what a worker reports.

Apart from `store` so that the store's halves (`store`, `sweeps`) and their callers share
them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from videoserve.jobs import fairness, ledger, schema
from videoserve.jobs.failures import Failure
from videoserve.jobs.phases import Phase
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status


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
    # Seconds it may wait for a worker before it fails `expired` (X-Start-Timeout); None: ever.
    start_timeout: float | None = None
    priority: fairness.Priority = fairness.Priority.NORMAL  # X-Queue-Priority
    # Seconds it may run once started (X-Execution-Timeout), within its model's limit; None:
    # the model's limit.
    execution_timeout: float | None = None
    remixed_from: str | None = None  # the video a remix repeats (`remixes`)
    # An edit's or extension's duration as delivered (source, or source plus new seconds);
    # None: its `duration` parameter's.
    delivered_seconds: float | None = None


@dataclass(frozen=True)
class Policy:
    """Operator choices the store applies inside its statements."""

    max_running_per_key: int = 0  # PROCESSING jobs one key may have at once; 0: no cap
    scheduling: fairness.SchedulingPolicy = fairness.SchedulingPolicy.FAIR
    default_job_seconds: float = 60.0  # fair share's cost of a job before its model has one
    refund_content_blocks: bool = True
    refund_running_cancellations: bool = True
    # Warm routing: a worker prefers jobs of the models it has loaded, but never passes over a
    # job queued longer than this (VIDEOSERVE_WARM_SKIP_SECONDS); 0: plain oldest-first.
    warm_skip_seconds: float = 0.0


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


@dataclass(frozen=True)
class LiveState:
    """What a running job's worker reports beside its progress (see `phases`)."""

    phase: Phase | None = None
    step: int | None = None
    steps: int | None = None
    preview_step: int | None = None

    def columns(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("phase", None if self.phase is None else self.phase.value),
            ("step", self.step),
            ("steps", self.steps),
            ("preview_step", self.preview_step),
        )


# The fields of `NewJob` stored as they are: those named like a column of `jobs`. Why
# derived: a new job column a submit sets is then a column in `schema` and a field here, and
# every submit statement (`new_row`, `SUBMITTED`) follows.
STORED_AS_IS = tuple(f.name for f in fields(NewJob) if f.name in schema.jobs.c)


def new_row(new: NewJob, now: float) -> dict[str, Any]:
    """The columns every newly queued job starts with: its `STORED_AS_IS` fields, the queued
    state, and the times that follow from `now`."""
    row = {name: getattr(new, name) for name in STORED_AS_IS}
    row["priority"] = int(new.priority)
    row |= _QUEUED
    row["created_at"] = now
    row["start_deadline"] = None if new.start_timeout is None else now + new.start_timeout
    return row


# The state every new queued job starts in.
_QUEUED: dict[str, Any] = {
    "status": Status.QUEUED.value,
    "progress": 0,
    "attempt": 0,
    "cancel_requested": False,
}

# Every column a submit's INSERT sets: `new_row`'s, plus the price it charged and the
# scheduling columns (`fairness.Plan`); the rest keep their defaults.
SUBMITTED = (
    *STORED_AS_IS,
    *_QUEUED,
    "created_at",
    "start_deadline",
    "cost",
    "start_tag",
    "expected_seconds",
)


def stamped(stamp: fairness.Stamp) -> dict[str, Any]:
    """A new job's scheduling columns."""
    return {
        "priority": stamp.priority,
        "start_tag": stamp.start_tag,
        "expected_seconds": stamp.expected_seconds,
    }


def queued_row(new: NewJob, now: float, ticket: int) -> dict[str, Any]:
    """The row of a job queued in bulk (see `JobStore.enqueue_many`)."""
    return {**new_row(new, now), "ticket": ticket}
