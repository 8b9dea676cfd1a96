"""PostgreSQL's poll read straight on asyncpg, from a small pool of its own.

Why: through SQLAlchemy's async engine a one-row read by primary key cost ~260 us of this
process's CPU (a pool checkout through the greenlet adapter ~65 us, the execution and the Row
most of the rest); on an asyncpg connection the same statement costs ~50 us. The status poll
is the most frequent request by far, so its read (`jobs/job_status.py`) runs here; everything
else stays on the engine. As `db.sqlite` does for a SQLite file: only for queries whose
columns and parameters need no type conversion (strings, numbers).

The pool is small and fixed (`POOL_SIZE` connections beside the engine's), opened on first
use. It connects as the engine does, from the same URL (`dialects.asyncpg_connect_args`, which
the LISTEN connection uses too), and each connection gets the engine's session settings
(`dialects.POSTGRES_SETTINGS`).
A connection that breaks (a restarted server) fails its read, which the poll answers 503 with
`Retry-After`, as the engine's disconnects are; asyncpg's pool then replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from videoserve import errors
from videoserve.db import dialects

POOL_SIZE = 4  # a read takes ~0.1 ms of wall time: four serve tens of thousands a second


class PgReader:
    """Single-statement reads of one PostgreSQL database, on asyncpg directly."""

    def __init__(self, url: str) -> None:
        self._connect = dialects.asyncpg_connect_args(url)
        self._pool: Any = None
        self._opening: asyncio.Future[Any] | None = None  # one open, however many ask

    @classmethod
    def for_url(cls, url: str) -> PgReader | None:
        return cls(url) if make_url(url).get_backend_name() == "postgresql" else None

    async def _open(self) -> Any:
        import asyncpg  # the engine's driver; imported where it is used, as SQLAlchemy does

        if self._opening is None:
            self._opening = asyncio.ensure_future(
                asyncpg.create_pool(
                    min_size=1, max_size=POOL_SIZE, init=_configure, **self._connect
                )
            )
        opening = self._opening
        try:
            self._pool = await asyncio.shield(opening)
        except Exception:
            if self._opening is opening:
                self._opening = None  # the database is down, say: the next read tries again
            raise
        return self._pool

    def prepared(
        self, query: sa.Select
    ) -> Callable[[dict[str, Any]], Awaitable[tuple[Any, ...] | None]]:
        """`query` compiled once to SQL text; a call runs it and returns its first row as a
        plain tuple (None: no row)."""
        compiled = query.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
        sql = compiled.string
        names = tuple(compiled.positiontup or ())
        bound = {name: value for name, value in compiled.params.items() if value is not None}

        async def run(params: dict[str, Any]) -> tuple[Any, ...] | None:
            try:
                pool = self._pool if self._pool is not None else await self._open()
                async with pool.acquire() as conn:
                    row = await conn.fetchrow(
                        sql, *[params.get(name, bound.get(name)) for name in names]
                    )
            except Exception as exc:
                if _unreachable(exc):  # answered 503, as the engine's own disconnects are
                    raise errors.ServiceUnavailable(
                        f"the job database is unavailable; retry shortly ({exc})", retry_after=2
                    ) from exc
                raise
            return tuple(row) if row is not None else None

        return run

    async def close(self) -> None:
        opening, self._opening, self._pool = self._opening, None, None
        if opening is None:
            return
        if not opening.done():
            opening.cancel()  # still connecting: nothing to close
            return
        if opening.cancelled() or opening.exception() is not None:
            return
        pool = opening.result()
        try:  # gracefully: a poll's read is done in a fraction of a millisecond
            await asyncio.wait_for(pool.close(), 5)
        except Exception:
            pool.terminate()  # a connection hung on a server that is gone, say


def _unreachable(exc: Exception) -> bool:
    """A lost or refused connection (the server restarting, say), not a fault of the read:
    OS and asyncpg interface errors, SQLSTATE classes 08 (connection) and 57 (operator
    intervention: shutdown, cannot connect now), and timeouts."""
    import asyncpg

    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in ("08", "57")


async def _configure(conn: Any) -> None:
    for name, value in dialects.POSTGRES_SETTINGS.items():
        await conn.execute(f"SET {name} = {value}")
