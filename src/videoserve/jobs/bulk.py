"""Backlogs made in bulk (benchmarks, imports): many queued jobs in one transaction.

Apart from `store` because nothing on a request's path uses it: it shares the submit's row
builders (`store_records`) and fair share's stamps, and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

from videoserve import clock
from videoserve.db.database import Database
from videoserve.jobs import fairness, tickets
from videoserve.jobs.schema import jobs
from videoserve.jobs.statements import QUEUED_TOPIC
from videoserve.jobs.store_records import NewJob, queued_row, stamped


async def enqueue_many(
    database: Database, fair: fairness.FairShare, new_jobs: Sequence[NewJob]
) -> int:
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
    # Each key's jobs of a model take consecutive tags, in id order (see `fairness`).
    stamps: dict[str, fairness.Stamp] = {}
    for served_by, queued in by_model.items():
        runs: dict[tuple[str, fairness.Priority], list[NewJob]] = {}
        for new in queued:
            runs.setdefault((new.api_key_id, new.priority), []).append(new)
        for (key_id, priority), run in runs.items():
            tags = await fair.stamp_many(key_id, served_by, priority, len(run))
            stamps.update((new.id, tag) for new, tag in zip(run, tags, strict=True))
    async with database.transaction() as conn:
        for served_by, queued in by_model.items():
            first = await tickets.reserve(database, conn, served_by, len(queued))
            rows = [
                queued_row(new, now, first + i) | stamped(stamps[new.id])
                for i, new in enumerate(queued)
            ]
            await conn.execute(jobs.insert(), rows)
        await database.notifier.send(conn, QUEUED_TOPIC)
    database.notifier.after_commit(QUEUED_TOPIC)
    return len(new_jobs)
