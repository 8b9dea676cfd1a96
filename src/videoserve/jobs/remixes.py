"""Which video a remix repeats: the `remixed_from` column of `jobs`, its named statements.

Before migration 12 the source was a marker blob beside the job's files, so listing read a
blob per video. Rows made before it carry `schema.REMIX_SOURCE_UNREAD` until the job service
reads their marker once (`unread`, then `settle`); rows made since carry the id or NULL,
written by the submit's INSERT (`store_records.new_row`).
"""

from __future__ import annotations

import sqlalchemy as sa

from videoserve.db.database import Database
from videoserve.jobs import schema

jobs = schema.jobs
UNREAD = schema.REMIX_SOURCE_UNREAD

_SETTLE = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("job_id"), jobs.c.remixed_from == UNREAD)
    .values(remixed_from=sa.bindparam("source"))
    .returning(jobs.c.id)
)
_UNREAD = (
    sa.select(jobs.c.id)
    .where(jobs.c.remixed_from == UNREAD)
    .order_by(jobs.c.id)
    .limit(sa.bindparam("limit"))
)


def known(source: str | None) -> bool:
    """False for a row made before migration 12, whose source only its marker blob knows."""
    return source != UNREAD


async def unread(database: Database, limit: int) -> list[str]:
    """Up to `limit` ids of rows made before migration 12 whose marker is not read yet."""
    async with database.connect() as conn:
        return list((await conn.execute(_UNREAD, {"limit": limit})).scalars())


async def settle(database: Database, job_id: str, source_id: str | None) -> None:
    """Set an old row's source as its marker said (None: it was no remix); once only."""
    await database.write_one(_SETTLE, {"job_id": job_id, "source": source_id})
