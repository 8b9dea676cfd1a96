"""SQLite's hot path without aiosqlite: reads in the event loop, one-statement writes in one
thread.

Why: through aiosqlite every statement is several hops to its thread and back (cursor,
execute, fetch, commit, close), and each hop waits for the GIL while the loop is busy: ~1 ms
apiece under load, more than the statement itself. Here a read is one call in the loop, and a
write is one hop to a thread that runs the whole statement.

Only for a SQLite file (`:memory:` would be another database per connection). Transactions of
several statements (credits, cancellation, migrations) stay on the aiosqlite engine; they and
this writer queue on SQLite's write lock with the busy timeout, and neither waits in the loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url


def is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


class _KeptConnection:
    """One autocommit connection, kept open: a pool checkout and return per statement cost
    more than the statement. In autocommit each statement takes its own snapshot and lock;
    nothing is held between statements."""

    def __init__(self, url: str, pragmas: tuple[str, ...]) -> None:
        parsed = make_url(url).set(drivername="sqlite+pysqlite")
        self.engine = sa.create_engine(
            parsed, connect_args={"check_same_thread": False}, isolation_level="AUTOCOMMIT"
        )
        self._conn: sa.Connection | None = None

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            for pragma in pragmas:
                cursor.execute(pragma)
            cursor.close()

    def first(self, statement: sa.Executable, params: dict[str, Any] | None) -> sa.Row | None:
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            return self._conn.execute(statement, params).first()
        except sa.exc.DBAPIError:
            self.close()  # the next statement starts on a fresh connection
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()


class SyncReader:
    """Single-statement reads of a SQLite file, run synchronously in the event loop.

    A read by primary key takes ~20 us in the calling thread. In WAL mode a reader never
    waits for the writer (only a RESTART/TRUNCATE checkpoint could hold it, and we run the
    default passive ones), so the loop is not blocked. `query_only` makes the connection
    refuse writes: a write here could wait on our own aiosqlite transaction and deadlock the
    loop.
    """

    def __init__(self, url: str) -> None:
        self._kept = _KeptConnection(url, ("PRAGMA query_only=ON", "PRAGMA busy_timeout=1000"))

    @classmethod
    def for_url(cls, url: str) -> SyncReader | None:
        """A reader for a SQLite file database; None elsewhere (PostgreSQL, `:memory:`)."""
        return cls(url) if is_sqlite_file(url) else None

    def first(self, query: sa.Executable, params: dict[str, Any] | None = None) -> sa.Row | None:
        return self._kept.first(query, params)

    def dispose(self) -> None:
        self._kept.close()


class SqliteWriter:
    """One-statement writes of a SQLite file, each in one hop to a dedicated thread.

    One thread: SQLite has one writer at a time anyway, and a statement waiting on the write
    lock (another process's transaction, the busy timeout) waits there, not in the loop.
    """

    def __init__(self, url: str) -> None:
        # synchronous is per connection: NORMAL, as on the aiosqlite engine (safe in WAL mode).
        self._kept = _KeptConnection(
            url, ("PRAGMA busy_timeout=30000", "PRAGMA synchronous=NORMAL")
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")

    @classmethod
    def for_url(cls, url: str) -> SqliteWriter | None:
        """A writer for a SQLite file database; None elsewhere (PostgreSQL, `:memory:`)."""
        return cls(url) if is_sqlite_file(url) else None

    async def first(
        self, statement: sa.Executable, params: dict[str, Any] | None = None
    ) -> sa.Row | None:
        """Run the statement, committed on its own; its first returned row."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._kept.first, statement, params)

    def dispose(self) -> None:
        self._thread.submit(self._kept.close).result()
        self._thread.shutdown(wait=True)
