"""The recipes behind `database.Database`: engines and wake-ups for SQLite and PostgreSQL.

Only `database` uses this module; the stores ask the `Database` for what differs.

- Engines: SQLite runs in WAL mode with a busy timeout, and every write transaction starts
  with `BEGIN IMMEDIATE` so two writers queue on the lock instead of failing at commit.
- Single statements (reads, and writes that are one atomic UPDATE or INSERT) run on an
  autocommit engine: no BEGIN/COMMIT round trips. On a SQLite file they bypass aiosqlite
  (`db.sqlite`).
- Wake-ups ride in the writing statement on PostgreSQL (`pg_notify` in RETURNING, see
  `Notifier.returning`), so a one-statement write is one round trip.
- Claiming, locks and insert-or-skip: see `Database`.
- Wake-ups: `LISTEN/NOTIFY` on PostgreSQL; on SQLite only in-process events (a worker in
  another process falls back to a slow poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger("videoserve.jobs")

NOTIFY_CHANNEL = "videoserve_events"
# Execution option: this connection runs single autocommit statements (no BEGIN IMMEDIATE).
AUTOCOMMIT = "videoserve_autocommit"


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def writes_in_ctes(dialect: Any) -> bool:
    """Whether one statement may modify data in a CTE and use the result (PostgreSQL's
    data-modifying WITH); asked by code that holds only a connection."""
    return dialect.name == "postgresql"


DEFAULT_POOL_SIZE = 20

# Plan every statement for its own parameters and the table as it is now. Why: asyncpg
# prepares each statement once per connection, and after five runs PostgreSQL may switch it
# to a generic plan that it keeps until the table is next analysed. A plan made while the
# jobs table held 50 rows (a sequential scan: cheapest over two pages) stayed in use behind
# 100,000 queued jobs: 46 ms a poll instead of 1 ms, and without autovacuum (or before it
# runs, after a burst of submits) nothing replaces it. A custom plan costs ~0.1 ms of
# planning and sees the table's current size. Set with SET on each new connection, not as a
# startup parameter, which connection poolers such as PgBouncer refuse by default.
POSTGRES_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


# Every connection that may write a SQLite file (the aiosqlite engine's, the fast path's
# writer) runs these when it opens: WAL, so readers never wait for the writer; NORMAL sync,
# safe in WAL mode (and per connection, so each sets it); a busy timeout, so a writer queues
# on the lock instead of failing.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",
)
# The fast path's reader in the event loop: it refuses writes (one could wait on our own
# write transaction and deadlock the loop) and waits for a lock at most a second.
SQLITE_READER_PRAGMAS = ("PRAGMA query_only=ON", "PRAGMA busy_timeout=1000")


def run_pragmas(dbapi_connection: Any, pragmas: tuple[str, ...]) -> None:
    """Run `pragmas` on a new sqlite3 connection (from a "connect" event)."""
    cursor = dbapi_connection.cursor()
    for pragma in pragmas:
        cursor.execute(pragma)
    cursor.close()


# What SQLAlchemy's asyncpg adapter takes out of the connect arguments before it calls
# `asyncpg.connect` (its own options: its statement cache, say). Left in, asyncpg would refuse
# them as keywords, or, in a DSN, send them to the server as settings, which it refuses.
SQLALCHEMY_ONLY_OPTIONS = (
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
    "async_creator_fn",
)


def asyncpg_connect_args(url: str) -> dict[str, Any]:
    """The keyword arguments of `asyncpg.connect` for a PostgreSQL URL, exactly as the engine
    connects: for every asyncpg connection of ours that is not the engine's (the poll's reader
    pool, the LISTEN connection), so all of them reach the same server the same way.

    Why the dialect's own `create_connect_args`: it is what the engine runs (host, port, user,
    password, database, the query's options, a Unix socket or several hosts in the query);
    a second parser would drift from it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed!r}")
    parsed = parsed.set(drivername="postgresql+asyncpg")
    _, args = parsed.get_dialect()().create_connect_args(parsed)
    return {name: value for name, value in args.items() if name not in SQLALCHEMY_ONLY_OPTIONS}


def transaction_pool_size(pool_size: int) -> int:
    """PostgreSQL: the engine's connections (transactions), beside the asyncpg pool's
    `pool_size` for single statements; together about what one pool of `pool_size` plus the
    poll's four used to be."""
    return max(2, pool_size // 4)


def create_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> AsyncEngine:
    """An async engine configured for the dialect in `url`.

    The pool is fixed (no overflow): under load, requests beyond `pool_size` wait for a
    connection instead of opening one that is closed again after one statement. That churn
    (a PostgreSQL connection costs several milliseconds to open) halved the poll rate.
    Nothing holds one connection while asking for another, so waiting cannot deadlock."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=pool_size, max_overflow=0
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # No pool_pre_ping: it costs a round trip on every checkout. A connection that died
        # with a restarted server fails its statement with a disconnect error, which makes
        # SQLAlchemy invalidate the whole pool; the request answers 503 (api/errors.py), a
        # worker retries (worker/runner.py), and the next checkout connects afresh.
        # Single statements run on the executor's asyncpg pool of `pool_size` (db/postgres.py);
        # the engine's pool serves the write transactions, migrations and locks: a quarter.
        engine = create_async_engine(
            url, pool_size=transaction_pool_size(pool_size), max_overflow=0
        )
        _configure_postgres(engine)
        return engine
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE below is ours to emit.
        dbapi_connection.isolation_level = None
        run_pragmas(dbapi_connection, SQLITE_PRAGMAS)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        # Reads run as single autocommit statements: no lock, no BEGIN/ROLLBACK round trips
        # (WAL lets them run beside a writer). Writes take the write lock at BEGIN.
        if not conn.get_execution_options().get(AUTOCOMMIT):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_postgres(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # On the driver's own connection, outside any transaction: a SET inside the one the
        # adapter would open could be rolled back with it when the pool resets the connection.
        for name, value in POSTGRES_SETTINGS.items():
            dbapi_connection.run_async(
                lambda conn, name=name, value=value: conn.execute(f"SET {name} = {value}")
            )


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """An engine for single statements: each commits on its own, with no transaction round
    trips. One UPDATE or INSERT is atomic by itself on both databases; on SQLite a writing
    statement takes the write lock when it starts, so the busy timeout still queues it."""
    if is_postgres(engine):
        return engine.execution_options(isolation_level="AUTOCOMMIT", **{AUTOCOMMIT: True})
    return engine.execution_options(**{AUTOCOMMIT: True})


class Notifier:
    """In-process wake-ups: `publish(topic)` wakes every `wait(topic)` in this process.

    Topics are `queued` (a job may be claimed) and `job:<id>` (that job changed state).
    Subclasses also carry them between processes.
    """

    def __init__(self) -> None:
        self._events: dict[str, list[asyncio.Event]] = defaultdict(list)

    async def start(self) -> None:
        """Begin receiving other processes' notifications (nothing to do in-process)."""

    async def close(self) -> None:
        """Stop receiving notifications."""

    @property
    def crosses_processes(self) -> bool:
        return False

    async def send(self, conn: AsyncConnection, topic: str) -> None:
        """Announce `topic` to other processes from inside the writing transaction."""

    def returning(self, *topics: str | sa.ColumnElement[str]) -> list[sa.ColumnElement[Any]]:
        """Columns to add to a writing statement's RETURNING so that it announces `topics`
        itself, saving a round trip; each is sent only for a row the statement changed."""
        return []

    def after_commit(self, topic: str) -> None:
        """Wake this process's waiters once the writing transaction has committed."""
        self._wake(topic)

    def _wake(self, topic: str) -> None:
        for waiter in self._events.pop(topic, []):
            waiter.set()

    async def wait(self, topic: str, timeout: float) -> bool:
        """Wait until `topic` is published or `timeout` passes; True if it was published."""
        waiter = asyncio.Event()
        self._events[topic].append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._events.get(topic)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._events[topic]


class PostgresNotifier(Notifier):
    """Carries topics between processes with LISTEN/NOTIFY on one dedicated connection.

    `pg_notify` inside the writing transaction is delivered only if it commits, so a worker is
    never woken for a job it cannot yet see. A lost listener connection is re-opened; while it
    is down, waiters still wake on their timeout (the caller's slow poll).
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self._connect = asyncpg_connect_args(url)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def crosses_processes(self) -> bool:
        return True

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="pg-listener")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def send(self, conn: AsyncConnection, topic: str) -> None:
        await conn.execute(
            sa.text("SELECT pg_notify(:channel, :topic)"),
            {"channel": NOTIFY_CHANNEL, "topic": topic},
        )

    def returning(self, *topics: str | sa.ColumnElement[str]) -> list[sa.ColumnElement[Any]]:
        # pg_notify in RETURNING runs once per changed row, and like any NOTIFY it is
        # delivered only when the statement's transaction commits.
        return [
            sa.func.pg_notify(sa.literal(NOTIFY_CHANNEL), topic).label(f"_notify_{i}")
            for i, topic in enumerate(topics)
        ]

    async def _listen_forever(self) -> None:
        import asyncpg

        def on_notify(_conn, _pid, _channel, payload: str) -> None:
            self._wake(payload)

        backoff = 0.2
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(**self._connect)
                await connection.add_listener(NOTIFY_CHANNEL, on_notify)
                self._ready.set()
                backoff = 0.2
                # Wake everyone once: anything published while we were away is caught up by
                # the waiters re-reading the database.
                self._wake("queued")
                while not connection.is_closed():
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        await connection.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down or restarting
                log.warning("notification listener lost its connection: %s", exc)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def create_notifier(engine: AsyncEngine, url: str) -> Notifier:
    return PostgresNotifier(url) if is_postgres(engine) else Notifier()
