"""The one seam to the database: its executor, transactions, locks, dialect switches,
migrations.

Statements run through one executor chosen once per URL (`db/executors.py`: `first`,
`row_reader`, `write_one`, `run_transaction`); async multi-statement work takes an engine
connection (`transaction`, `connect`).

Built once per process (by the runtime, or `JobStore.open`) and handed to every store: the job
store, keys, the ledger, the worker registry, the listing and the webhook store. Only this
module and `dialects` (the engine and notifier recipes it uses) know which database is below;
the stores speak in statements and ask here for what differs: `insert_ignoring`,
`claim_subquery`, `advisory_lock`, `numbered_insert`, `numbered_for` and `reserve_numbers`.

Migrations are per package: each registers a `Migrations` list (its own tables, its own
versions), and `migrate` applies the lists it was given under one database-wide lock. So the
jobs package never imports the webhook tables; the runtime, which knows both, passes both.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from videoserve import clock
from videoserve.db import dialects, executors

log = logging.getLogger("videoserve.jobs")

Step = Callable[[Connection], None]
T = TypeVar("T")

# Lock ids that released versions already used, kept so old and new processes still exclude
# each other during a rolling upgrade; any other name hashes to its own id.
_LOCK_IDS = {
    "migrations": 0x56494445,  # "VIDE"
    "claim_cap": 0x56494443,  # "VIDC"
    "webhook_progress": 0x57484B50,  # "WHKP"
}

_tracking = sa.MetaData()
# Which version of each package's tables this database has: one row per applied step.
migrations_table = sa.Table(
    "videoserve_migrations",
    _tracking,
    sa.Column("package", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)
# The single counter every package shared before per-package migrations (read, never written).
legacy_schema_table = sa.Table(
    "videoserve_schema",
    _tracking,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Migrations:
    """One package's tables as an append-only list of versioned steps."""

    package: str
    steps: tuple[tuple[int, Step], ...]
    # The version of this package that a database at `videoserve_schema` version N had
    # reached (databases made before migrations were per package).
    from_legacy: Callable[[int], int] = lambda _version: 0

    @property
    def latest(self) -> int:
        return self.steps[-1][0] if self.steps else 0


@dataclass(frozen=True)
class Counter:
    """Numbers that count up within a group of rows (a model's queue tickets): `number` of a
    table's rows, per value of `group`. PostgreSQL keeps each group's last number in a row of
    a counters table (`key`, `last`); SQLite, whose writer is alone, reads the group's highest
    number (one seek on an index of (`group`, `number`))."""

    number: sa.Column[Any]
    group: sa.Column[Any]
    key: sa.Column[Any]
    last: sa.Column[Any]


def lock_id(name: str) -> int:
    """The PostgreSQL advisory lock id for a named lock (stable across processes)."""
    return _LOCK_IDS.get(name, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Database:
    """The engines of one database and everything that differs between SQLite and PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = dialects.DEFAULT_POOL_SIZE,
        migrations: Sequence[Migrations] = (),
    ) -> None:
        self.url = url
        self.engine = dialects.create_engine(url, pool_size=pool_size)
        # Single statements (reads, one-statement writes) run here: autocommit, no BEGIN.
        self.read_engine = dialects.autocommit(self.engine)
        self.notifier = dialects.create_notifier(self.engine, url)
        self.migrations = tuple(migrations)
        self.postgres = dialects.is_postgres(self.engine)
        # The differences the stores may ask about, as capabilities (never "which database").
        # Two transactions may write at once (PostgreSQL); SQLite has one writer at a time.
        self.concurrent_writers = self.postgres
        # One statement may modify data in a CTE and use the result (PostgreSQL).
        self.writable_ctes = dialects.writes_in_ctes(self.engine.dialect)
        # How statements run on this database, chosen once (see db/executors.py).
        self.executor = executors.for_url(url, self.engine, self.read_engine, pool_size=pool_size)

    # --- connections ---------------------------------------------------------------------------
    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a write transaction (`BEGIN IMMEDIATE` on SQLite), committed on exit."""
        return self.engine.begin()

    def connect(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for single autocommit statements: no transaction round trips."""
        return self.read_engine.connect()

    async def first(
        self, query: sa.Executable, params: dict[str, Any] | None = None
    ) -> sa.Row | None:
        """One row of a single-statement read (synchronously on a SQLite file)."""
        return await self.executor.first(query, params)

    def row_reader(self, query: sa.Select) -> executors.RowReader:
        """`query`, a one-row read of columns that need no type conversion (strings, numbers),
        prepared the cheapest way this database allows; a call returns its first row as a
        tuple, or None. For the status poll's reads."""
        return self.executor.row_reader(query)

    async def write_one(
        self, statement: sa.Executable, params: dict[str, Any] | None = None
    ) -> sa.Row | None:
        """Run one writing statement on its own, atomically: one round trip, no BEGIN."""
        return await self.executor.write_one(statement, params)

    async def run_transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work`'s statements (synchronous, on the connection it is given) as one write
        transaction, committed when it returns; its result. On a SQLite file the whole
        transaction is one hop to the writer thread."""
        return await self.executor.run_transaction(work)

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # --- dialect switches ----------------------------------------------------------------------
    async def advisory_lock(self, conn: AsyncConnection, name: str, key: str | None = None) -> None:
        """Hold the named lock (per `key`, if given) until `conn`'s transaction ends.

        PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to take, as every write
        transaction began with `BEGIN IMMEDIATE` and so already holds the database's lock."""
        if not self.postgres:
            return
        if key is None:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id(name)})
        else:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:id, hashtext(:key))"),
                {"id": lock_id(name), "key": key},
            )

    def insert_ignoring(self, table: sa.Table, conflict: Sequence[str] | None = None) -> Any:
        """`INSERT ... ON CONFLICT [(conflict columns)] DO NOTHING` on this dialect (returns
        the insert to build on)."""
        module = postgresql if self.postgres else sqlite
        return module.insert(table).on_conflict_do_nothing(index_elements=conflict)

    def greatest(self, *values: Any) -> Any:
        """The largest of the values in one row: GREATEST on PostgreSQL, SQLite's scalar max."""
        return sa.func.greatest(*values) if self.postgres else sa.func.max(*values)

    def claim_subquery(self, select: sa.Select) -> sa.Select:
        """The oldest-claimable-row SELECT, made safe for concurrent claimers on this dialect:
        `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers anyway."""
        return select.with_for_update(skip_locked=True) if self.postgres else select

    def numbered_insert(self, counter: Counter, group_param: str) -> sa.Insert:
        """An INSERT into `counter.number`'s table whose row takes its group's next number,
        in the statement itself (bind `group_param` to the group).

        PostgreSQL: concurrent inserts would read the same maximum, so the number comes from
        the group's counter row, bumped in a data-modifying CTE of the same INSERT (the row
        lock serialises one group's inserts for the length of one statement). SQLite: the
        group's highest number + 1, as one writer runs at a time."""
        table = counter.number.table
        assert isinstance(table, sa.Table)
        group: sa.BindParameter[Any] = sa.bindparam(group_param)
        if self.postgres:
            bumped = self.next_number(counter, group_param)
            number = sa.select(bumped.c[counter.last.name]).scalar_subquery()
            return table.insert().add_cte(bumped).values({counter.number.name: number})
        prior = table.alias("prior")
        number = (
            sa.select(sa.func.coalesce(sa.func.max(prior.c[counter.number.name]), 0) + 1)
            .where(prior.c[counter.group.name] == group)
            .scalar_subquery()
        )
        return table.insert().values({counter.number.name: number})

    def next_number(self, counter: Counter, group_param: str) -> sa.CTE:
        """PostgreSQL: a CTE bumping the group's counter, RETURNING the number taken in
        `counter.last` (for an INSERT that selects its number from it)."""
        assert self.postgres, "next_number is PostgreSQL's (SQLite: numbered_insert)"
        group: sa.BindParameter[Any] = sa.bindparam(group_param, type_=counter.key.type)
        return (
            postgresql.insert(counter.key.table)
            .values({counter.key.name: group, counter.last.name: 1})
            .on_conflict_do_update(
                index_elements=[counter.key], set_={counter.last.name: counter.last + 1}
            )
            .returning(counter.last)
            .cte("next_number")
        )

    def numbered_for(self, counter: Counter, group_param: str, rows: sa.CTE) -> sa.CTE:
        """PostgreSQL: a CTE bumping the group's counter once if `rows` (a CTE) has a row,
        RETURNING the number taken in `counter.last`; with no row it takes nothing (no gap).

        For an INSERT that must happen only when another write of the same statement did
        (the submit's charge): the job selects its number FROM this CTE."""
        assert self.postgres, "numbered_for is PostgreSQL's (SQLite: numbered_insert)"
        group: sa.BindParameter[Any] = sa.bindparam(group_param, type_=counter.key.type)
        return (
            postgresql.insert(counter.key.table)
            .from_select(
                [counter.key.name, counter.last.name],
                # WHERE true: without it, PostgreSQL would read ON CONFLICT as a join's ON.
                sa.select(group, sa.literal(1, type_=counter.last.type))
                .select_from(rows)
                .where(sa.true()),
            )
            .on_conflict_do_update(
                index_elements=[counter.key], set_={counter.last.name: counter.last + 1}
            )
            .returning(counter.last)
            .cte("next_number")
        )

    async def reserve_numbers(
        self, conn: AsyncConnection, counter: Counter, group: Any, count: int
    ) -> int:
        """Take the next `count` numbers of `group` inside `conn`'s transaction; returns the
        first (the rows inserted in that transaction carry first .. first + count - 1)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if self.postgres:
            bumped = (
                postgresql.insert(counter.key.table)
                .values({counter.key.name: group, counter.last.name: count})
                .on_conflict_do_update(
                    index_elements=[counter.key], set_={counter.last.name: counter.last + count}
                )
                .returning(counter.last)
            )
            last = (await conn.execute(bumped)).scalar_one()
            return int(last) - count + 1
        # The transaction began with BEGIN IMMEDIATE: no other writer until it ends.
        highest = sa.select(sa.func.max(counter.number)).where(counter.group == group)
        return int((await conn.execute(highest)).scalar() or 0) + 1

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Migrate, then begin receiving other processes' notifications."""
        await self.migrate()
        await self.notifier.start()

    async def close(self) -> None:
        await self.notifier.close()
        await self.executor.close()
        await self.engine.dispose()

    async def migrate(self) -> dict[str, int]:
        """Bring every registered package's tables to its latest version; safe to run from many
        processes at once. Returns each package's version."""
        versions: dict[str, int] = {}
        async with self.transaction() as conn:
            await self.advisory_lock(conn, "migrations")
            await conn.run_sync(lambda sync: migrations_table.create(sync, checkfirst=True))
            legacy = await _legacy_version(conn)
            for package in self.migrations:
                versions[package.package] = await _migrate_package(conn, package, legacy)
        return versions


async def _legacy_version(conn: AsyncConnection) -> int:
    exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(legacy_schema_table.name))
    if not exists:
        return 0
    found = await conn.execute(sa.select(sa.func.max(legacy_schema_table.c.version)))
    return int(found.scalar() or 0)


async def _migrate_package(conn: AsyncConnection, package: Migrations, legacy: int) -> int:
    t = migrations_table
    done = (
        await conn.execute(
            sa.select(sa.func.max(t.c.version)).where(t.c.package == package.package)
        )
    ).scalar()
    if done is None:
        done = package.from_legacy(legacy)
        if done:  # record what the shared counter had already applied
            await conn.execute(
                t.insert().values(package=package.package, version=done, applied_at=clock.now())
            )
    for version, step in package.steps:
        if version <= done:
            continue
        await conn.run_sync(step)
        await conn.execute(
            t.insert().values(package=package.package, version=version, applied_at=clock.now())
        )
        log.info("database: %s tables migrated to version %d", package.package, version)
        done = version
    return int(done)
