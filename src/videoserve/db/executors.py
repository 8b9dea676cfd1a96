"""How a database runs statements: one executor per URL, chosen once (`for_url`).

Every store's reads and writes go through the four operations of `Executor` (by way of
`Database`): a one-statement read, a prepared one-row read for the status poll, a
one-statement write, and a write transaction. Each kind of database does them the cheapest
way it allows, and only here is that decided:

- a SQLite file (`SqliteFileExecutor`): reads on a DB-API connection in the event loop, writes
  on one writer thread (`db/sqlite.py`: each aiosqlite call was a hop of its own);
- PostgreSQL (`PostgresExecutor`): SQLAlchemy's asyncpg engine, with the poll's reads on
  asyncpg directly (`db/postgres.py`: they skip SQLAlchemy's result machinery);
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

from videoserve.db.postgres import PgReader
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
    """The engine, and the poll's one-row reads on asyncpg directly (`PgReader`)."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine, reader: PgReader) -> None:
        super().__init__(engine, read_engine)
        self.reader = reader

    def row_reader(self, query: sa.Select) -> RowReader:
        return self.reader.prepared(query)

    async def close(self) -> None:
        await self.reader.close()


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


def for_url(url: str, engine: AsyncEngine, read_engine: AsyncEngine) -> Executor:
    """The executor for `url`, over the `Database`'s engines."""
    if is_sqlite_file(url):
        return SqliteFileExecutor(SyncReader(url), SqliteWriter(url))
    pg_reader = PgReader.for_url(url)
    if pg_reader is not None:
        return PostgresExecutor(engine, read_engine, pg_reader)
    return EngineExecutor(engine, read_engine)
