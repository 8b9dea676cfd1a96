"""How a database runs statements: one executor per URL, chosen once (`for_url`).

Every store's reads and writes go through the four operations of `Executor` (by way of
`Database`): a one-statement read, a prepared one-row read for the status poll, a
one-statement write, and a write transaction. Each kind of database does them the cheapest
way it allows, and only here is that decided:

- a SQLite file (`SqliteFileExecutor`): reads on a DB-API connection in the event loop, writes
  on one writer thread (`db/sqlite.py`: each aiosqlite call was a hop of its own);
- PostgreSQL (`PostgresExecutor`): single statements on one asyncpg pool, compiled once by
  SQLAlchemy (`db/postgres.py`: they skip its execution and result machinery); write
  transactions on SQLAlchemy's asyncpg engine;
- anything else (`:memory:` SQLite in tests): the SQLAlchemy engine (`EngineExecutor`).

Multi-statement async work (migrations, bulk enqueues, advisory locks) takes a connection of
the engine itself (`Database.transaction`, `Database.connect`): that is where SQLAlchemy
earns its place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from videoserve.db.postgres import PgPool
from videoserve.db.sqlite import SqliteWriter, SyncReader, is_sqlite_file

T = TypeVar("T")
RowReader = Callable[[dict[str, Any]], Awaitable[tuple[Any, ...] | None]]


class Executor(Protocol):
    """The four ways a store runs statements."""

    async def first(self, query: sa.Executable, params: dict[str, Any] | None) -> sa.Row | None:
        """One row of a single-statement read."""
        ...

    def row_reader(self, query: sa.Select) -> RowReader:
        """`query` (one row of strings and numbers) prepared once; a call returns its first
        row as a tuple, or None."""
        ...

    async def write_one(
        self, statement: sa.Executable, params: dict[str, Any] | None
    ) -> sa.Row | None:
        """One writing statement on its own, atomically (no BEGIN); its first returned row."""
        ...

    async def run_transaction(self, work: Callable[[Connection], T]) -> T:
        """`work`'s synchronous statements as one write transaction, committed when it
        returns; its result."""
        ...

    async def close(self) -> None: ...


class EngineExecutor:
    """Everything through SQLAlchemy's async engine (`read_engine`: autocommit)."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine) -> None:
        self.engine = engine
        self.read_engine = read_engine

    async def first(self, query: sa.Executable, params: dict[str, Any] | None) -> sa.Row | None:
        async with self.read_engine.connect() as conn:
            return (await conn.execute(query, params)).first()

    def row_reader(self, query: sa.Select) -> RowReader:
        async def through_the_engine(params: dict[str, Any]) -> tuple[Any, ...] | None:
            row = await self.first(query, params)
            return tuple(row) if row is not None else None

        return through_the_engine

    async def write_one(
        self, statement: sa.Executable, params: dict[str, Any] | None
    ) -> sa.Row | None:
        async with self.read_engine.connect() as conn:
            row = (await conn.execute(statement, params)).first()
            await conn.commit()  # ends SQLAlchemy's own transaction; the database's is done
        return row

    async def run_transaction(self, work: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    async def close(self) -> None:
        """The engines are the `Database`'s: it disposes of them."""


class PostgresExecutor(EngineExecutor):
    """Single statements on one asyncpg pool (`PgPool`: reads, writes and the poll's reads),
    compiled once by SQLAlchemy; transactions, and the statements the pool cannot run as the
    engine would, on the engine."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine, pool: PgPool) -> None:
        super().__init__(engine, read_engine)
        self.pool = pool

    # The pool's rows are `postgres.Row`s, not `sa.Row`s: a tuple with the column attributes,
    # `_fields` and `_mapping` the stores read of a row (test_pg_pool checks them), hence the
    # two ignores below.
    async def first(self, query: sa.Executable, params: dict[str, Any] | None) -> sa.Row | None:
        compiled = self.pool.compiled_for(query, params or {})
        if compiled is None:
            return await super().first(query, params)
        return await self.pool.fetch_one(compiled, params or {})  # type: ignore[return-value]

    def row_reader(self, query: sa.Select) -> RowReader:
        return self.pool.prepared(query)

    async def write_one(
        self, statement: sa.Executable, params: dict[str, Any] | None
    ) -> sa.Row | None:
        compiled = self.pool.compiled_for(statement, params or {})
        if compiled is None:
            return await super().write_one(statement, params)
        return await self.pool.fetch_one(compiled, params or {})  # type: ignore[return-value]

    async def close(self) -> None:
        await self.pool.close()


class SqliteFileExecutor:
    """Reads in the event loop (`SyncReader`), writes on the one writer thread
    (`SqliteWriter`): one hop a write transaction, however many statements."""

    def __init__(self, reader: SyncReader, writer: SqliteWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def first(self, query: sa.Executable, params: dict[str, Any] | None) -> sa.Row | None:
        return self.reader.first(query, params)

    def row_reader(self, query: sa.Select) -> RowReader:
        run = self.reader.prepared(query)

        async def in_the_loop(params: dict[str, Any]) -> tuple[Any, ...] | None:
            return run(params)

        return in_the_loop

    async def write_one(
        self, statement: sa.Executable, params: dict[str, Any] | None
    ) -> sa.Row | None:
        return await self.writer.first(statement, params)

    async def run_transaction(self, work: Callable[[Connection], T]) -> T:
        return await self.writer.transaction(work)

    async def close(self) -> None:
        self.reader.dispose()
        self.writer.dispose()


def for_url(url: str, engine: AsyncEngine, read_engine: AsyncEngine, *, pool_size: int) -> Executor:
    """The executor for `url`, over the `Database`'s engines; `pool_size`: PostgreSQL's
    asyncpg pool."""
    if is_sqlite_file(url):
        return SqliteFileExecutor(SyncReader(url), SqliteWriter(url))
    pool = PgPool.for_url(url, engine.dialect, size=pool_size)
    if pool is not None:
        return PostgresExecutor(engine, read_engine, pool)
    return EngineExecutor(engine, read_engine)
