"""SQLite's hot path without aiosqlite: reads in the event loop, writes in one thread.

Why: through aiosqlite every statement is several hops to its thread and back (cursor,
execute, fetch, commit, close), and each hop waits for the GIL while the loop is busy: ~1 ms
apiece under load, more than the statement itself. Here a read is one call in the loop, and a
write is one hop to a thread that runs the whole statement, or the whole transaction of a
submit's charge (`SqliteWriter.transaction`: BEGIN IMMEDIATE, the statements, COMMIT).

Only for a SQLite file (`:memory:` would be another database per connection). The other
transactions (cancellation, refunds of the worker's side, migrations) stay on the aiosqlite
engine; they and this writer queue on SQLite's write lock with the busy timeout, and neither
waits in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url

from videoserve.db import dialects

T = TypeVar("T")


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
        self._dbapi: Any = None  # the driver's connection under it, once asked for

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dialects.run_pragmas(dbapi_connection, pragmas)

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def dbapi_connection(self) -> Any:
        """The driver's own connection (a `sqlite3.Connection`) under the kept one; kept
        beside it, as three attribute hops through SQLAlchemy were a poll's too."""
        if self._dbapi is None:
            self._dbapi = self._connection().connection.dbapi_connection
        return self._dbapi

    def first(self, statement: sa.Executable, params: dict[str, Any] | None) -> sa.Row | None:
        try:
            return self._connection().execute(statement, params).first()
        except sa.exc.DBAPIError:
            self.close()  # the next statement starts on a fresh connection
            raise

    def transaction(self, work: Callable[[sa.Connection], T]) -> T:
        """`work`'s statements between BEGIN IMMEDIATE and COMMIT; rolled back if it raises.

        The connection is in autocommit (the driver sends no BEGIN of its own), so the
        transaction is exactly the one begun here: the write lock is taken at BEGIN, as on
        the aiosqlite engine, and waits there (busy timeout) rather than failing at COMMIT."""
        conn = self._connection()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.DBAPIError:
            self.close()
            raise
        try:
            result = work(conn)
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            try:
                conn.exec_driver_sql("ROLLBACK")
            except sa.exc.DBAPIError:
                self.close()  # nothing to roll back (COMMIT failed after ending it), or broken
            raise
        return result

    def close(self) -> None:
        self._dbapi = None
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
        self._kept = _KeptConnection(url, dialects.SQLITE_READER_PRAGMAS)

    @classmethod
    def for_url(cls, url: str) -> SyncReader | None:
        """A reader for a SQLite file database; None elsewhere (PostgreSQL, `:memory:`)."""
        return cls(url) if is_sqlite_file(url) else None

    def first(self, query: sa.Executable, params: dict[str, Any] | None = None) -> sa.Row | None:
        return self._kept.first(query, params)

    def prepared(self, query: sa.Select) -> Callable[[dict[str, Any]], tuple[Any, ...] | None]:
        """`query` compiled once to SQL text, run on the DB-API cursor: its first row as a
        plain tuple.

        Why: SQLAlchemy's execution (parameter processing, result metadata, the Row) costs
        several times the ~10 us the read itself takes, on a path run for every poll. Only for
        queries whose columns and parameters need no type conversion on SQLite (strings,
        numbers): nothing converts them here."""
        # Named parameters: the caller's dict goes to the driver as it is.
        compiled = query.compile(dialect=sqlite.dialect(paramstyle="named"))
        sql = compiled.string
        # Values bound in the statement itself (`status == "QUEUED"`), under the caller's.
        bound = {name: value for name, value in compiled.params.items() if value is not None}

        def run(params: dict[str, Any]) -> tuple[Any, ...] | None:
            try:
                # A cursor per read, dropped at once: that resets the statement, so no read
                # snapshot outlives the call (a kept cursor would hold one until its next use).
                dbapi = self._kept.dbapi_connection()
                row: tuple[Any, ...] | None = dbapi.execute(
                    sql, bound | params if bound else params
                ).fetchone()
            except Exception:
                self._kept.close()  # the next read starts on a fresh connection
                raise
            return row

        return run

    def dispose(self) -> None:
        self._kept.close()


class SqliteWriter:
    """Writes of a SQLite file, each statement or transaction in one hop to a dedicated thread.

    One thread: SQLite has one writer at a time anyway, and a statement waiting on the write
    lock (another process's transaction, the busy timeout) waits there, not in the loop.
    """

    def __init__(self, url: str) -> None:
        # The aiosqlite engine's pragmas: synchronous is per connection, so it sets its own.
        self._kept = _KeptConnection(url, dialects.SQLITE_PRAGMAS)
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

    async def transaction(self, work: Callable[[sa.Connection], T]) -> T:
        """Run `work` (synchronous statements on the given connection) as one transaction,
        committed when it returns; its result. One hop, however many statements."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._kept.transaction, work)

    def dispose(self) -> None:
        self._thread.submit(self._kept.close).result()
        self._thread.shutdown(wait=True)
