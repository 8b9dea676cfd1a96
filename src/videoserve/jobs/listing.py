"""Listing a key's jobs page by page, newest first or oldest first; and whether any finished
job has its own webhook URL (the webhook dispatcher's cheap first look).

Keyset pagination on (created_at, id): a page starts strictly after the cursor job's position,
so jobs submitted while a client pages through never shift or repeat what it has seen, and each
page is one indexed range scan (`ix_jobs_key_created`) however deep the client goes.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from videoserve import clock, errors
from videoserve.db.database import Database
from videoserve.jobs import schema, text
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status

jobs = schema.jobs

Order = Literal["asc", "desc"]
MAX_LIMIT = 100

# One seek of the partial index `ix_jobs_request_webhook` (in the loop on SQLite).
_FINISHED_WITH_OWN_WEBHOOK = (
    sa.select(jobs.c.id)
    .where(
        jobs.c.webhook_url.is_not(None),
        jobs.c.status.in_([Status.COMPLETED.value, Status.FAILED.value]),
    )
    .limit(1)
)


async def any_finished_with_own_webhook(database: Database) -> bool:
    """Whether any finished job has its own webhook URL (`?webhook=`)."""
    return await database.first(_FINISHED_WITH_OWN_WEBHOOK) is not None


def _owned_and_live(api_key_id: str | None) -> sa.ColumnElement[bool]:
    live = sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > clock.now())
    if api_key_id is None:  # an admin key lists every key's jobs
        return live
    return sa.and_(live, jobs.c.api_key_id == api_key_id)


async def list_jobs(
    database: Database,
    api_key_id: str | None,
    *,
    after: str | None = None,
    limit: int = 20,
    order: Order = "desc",
) -> tuple[list[Job], bool]:
    """One page of the key's unexpired jobs and whether more follow.

    `after` is the id of the last job of the previous page; an id the key cannot see (unknown,
    expired, another key's) is an `InvalidRequest` rather than a silently empty page.
    `api_key_id=None` lists every key's jobs (for admin keys).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidRequest(
            f"limit: must be from 1 to {MAX_LIMIT} (got {limit})", param="limit"
        )
    if after is not None and not text.could_be_id(after):
        raise errors.InvalidRequest(
            "after: not an id this server issues (the id of the last video of a page)",
            param="after",
        )
    visible = _owned_and_live(api_key_id)
    query = sa.select(jobs).where(visible)
    newest_first = order == "desc"
    async with database.connect() as conn:
        if after is not None:
            cursor = (
                await conn.execute(
                    sa.select(jobs.c.created_at, jobs.c.id).where(visible, jobs.c.id == after)
                )
            ).first()
            if cursor is None:
                raise errors.InvalidRequest(
                    f"after: no video '{after}' to continue from (it may have expired)",
                    param="after",
                )
            if newest_first:
                past_cursor = sa.tuple_(jobs.c.created_at, jobs.c.id) < (cursor[0], cursor[1])
            else:
                past_cursor = sa.tuple_(jobs.c.created_at, jobs.c.id) > (cursor[0], cursor[1])
            query = query.where(past_cursor)
        if newest_first:
            query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        else:
            query = query.order_by(jobs.c.created_at.asc(), jobs.c.id.asc())
        # One row more than asked says whether another page follows, without a COUNT.
        rows = (await conn.execute(query.limit(limit + 1))).all()
    page = [Job.from_row(row) for row in rows[:limit]]
    return page, len(rows) > limit
