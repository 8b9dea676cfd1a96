"""PostgreSQL's single statements on the one asyncpg pool (`db/postgres.py`), through
`Database`: the same rows and the same errors as the engine gives, and the statements the
pool must leave to the engine left there. Over the real PostgreSQL (skipped when none is
reachable)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from videoserve.db.database import Database
from videoserve.db.postgres import Row
from videoserve.settings import Settings

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.String(8), primary_key=True),
    sa.Column("doc", sa.JSON, nullable=True),
    sa.Column("flag", sa.Boolean, nullable=False, default=False),
    sa.Column("size", sa.Float, nullable=True),
    sa.Column("count", sa.Integer, nullable=False, server_default=sa.text("0")),
)
INSERT = (
    things.insert()
    .values(
        id=sa.bindparam("id"),
        doc=sa.bindparam("doc"),
        flag=sa.bindparam("flag"),
        size=sa.bindparam("size"),
    )
    .returning(*things.c)
)
READ = sa.select(*things.c).where(things.c.id == sa.bindparam("id"))


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(Settings(database_url=postgres_url).resolved_database_url())
    async with db.transaction() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield db
    finally:
        await db.close()


def insert_params(id_: str) -> dict[str, object]:
    return {"id": id_, "doc": {"a": [1, "two", None]}, "flag": True, "size": 1.5}


async def test_a_statements_second_use_runs_on_the_pool_with_the_engines_row(
    database: Database,
) -> None:
    by_engine = await database.write_one(INSERT, insert_params("a"))
    by_pool = await database.write_one(INSERT, insert_params("b"))
    assert by_engine is not None and by_pool is not None
    assert not isinstance(by_engine, Row) and isinstance(by_pool, Row)  # where each ran
    assert by_pool._fields == by_engine._fields == ("id", "doc", "flag", "size", "count")
    assert tuple(by_pool)[1:] == tuple(by_engine)[1:] == ({"a": [1, "two", None]}, True, 1.5, 0)
    assert by_pool.doc == {"a": [1, "two", None]} and by_pool.count == 0  # a column, not a method
    assert by_pool._mapping["flag"] is True

    # None in a JSON column is JSON null, as the engine stores it (not SQL NULL).
    nulls = sa.select(sa.func.count()).where(things.c.doc.is_(None))
    for id_ in ("n1", "n2"):  # the engine's, then the pool's
        await database.write_one(INSERT, insert_params(id_) | {"doc": None})
        assert (await database.first(nulls, {}) or (None,))[0] == 0
        stored = await database.first(READ, {"id": id_})
        assert stored is not None and stored.doc is None

    first = await database.first(READ, {"id": "b"})
    again = await database.first(READ, {"id": "b"})
    assert isinstance(again, Row) and tuple(again) == tuple(first or ())
    assert await database.first(READ, {"id": "nobody"}) is None


async def test_the_pool_raises_the_engines_errors(database: Database) -> None:
    await database.write_one(INSERT, insert_params("dup"))  # the engine's first use
    await database.write_one(INSERT, insert_params("c"))  # compiled for the pool
    with pytest.raises(sa.exc.IntegrityError):
        await database.write_one(INSERT, insert_params("dup"))  # primary key taken
    with pytest.raises(sa.exc.DataError):  # too long for String(8): the server refuses it
        await database.write_one(INSERT, insert_params("much-too-long"))
    with pytest.raises(sa.exc.DataError):  # not valid text (NUL): the server refuses it
        await database.write_one(INSERT, insert_params("a\x00b"))
    bump = things.update().values(count=sa.bindparam("n")).returning(things.c.count)
    await database.write_one(bump, {"n": 1})
    with pytest.raises(sa.exc.DataError):  # out of int4's range: asyncpg refuses to send it
        await database.write_one(bump, {"n": 2**40})
    # The pool's connection is still good after each.
    assert await database.write_one(INSERT, insert_params("d")) is not None


async def test_statements_the_pool_cannot_run_exactly_stay_on_the_engine(
    database: Database,
) -> None:
    for i in range(3):
        await database.write_one(INSERT, insert_params(f"e{i}"))
    expanding = sa.select(sa.func.count()).where(
        things.c.id.in_(sa.bindparam("ids", expanding=True))
    )
    for _ in range(3):  # an IN list's parameters are rendered per call
        row = await database.first(expanding, {"ids": ["e0", "e2", "nobody"]})
        assert row is not None and not isinstance(row, Row) and row[0] == 2
    defaulted = things.insert().returning(things.c.flag)  # `flag`'s default: Python-side
    for i in range(3):
        row = await database.write_one(defaulted, {"id": f"f{i}"})
        assert row is not None and not isinstance(row, Row) and row.flag is False
    for _ in range(3):  # a statement built anew each call: compiled by the engine's cache
        fresh = sa.select(things.c.id).where(things.c.id == sa.bindparam("id"))
        row = await database.first(fresh, {"id": "e1"})
        assert row is not None and not isinstance(row, Row) and row.id == "e1"


async def test_every_use_of_a_pooled_connection_keeps_the_engines_session_settings(
    database: Database,
) -> None:
    # asyncpg's default release ran RESET ALL, which put `plan_cache_mode` back to `auto`
    # after a connection's first statement (the generic-plan trap of db/dialects.py).
    setting = sa.select(sa.func.current_setting("plan_cache_mode").label("mode"))
    reader = database.row_reader(setting)
    seen = {await reader({}) for _ in range(5)}
    for _ in range(5):  # the engine's first use, then the pool's
        row = await database.first(setting, {})
        seen.add(None if row is None else tuple(row))
    assert seen == {("force_custom_plan",)}


SLOW_PID = sa.select(sa.func.pg_backend_pid().label("pid"), sa.func.pg_sleep(0.02))


async def test_connections_the_server_closed_are_replaced_on_both_paths(
    postgres_url: str,
) -> None:
    # As when the server restarts: every connection of the pool is cut at once. A statement
    # that meets a cut connection before its socket has closed fails as a lost connection
    # (a DBAPIError: the API answers 503), nothing else; the pools replace the connections
    # (asyncpg's when it next lends one, the engine's when a disconnect invalidates it), and
    # both paths then run on new ones.
    db = Database(Settings(database_url=postgres_url).resolved_database_url(), pool_size=4)

    def in_a_transaction(conn: sa.Connection) -> int:
        return int(conn.execute(SLOW_PID).scalar_one())

    async def single() -> int:
        row = await db.first(SLOW_PID, {})
        assert row is not None
        return int(row[0])

    cut = sa.text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    other = Database(Settings(database_url=postgres_url).resolved_database_url())
    try:
        await single()  # its first use runs on the engine; the pool's from then on
        before = set(await asyncio.gather(*(single() for _ in range(8))))
        assert len(before) == 4  # every connection of the pool open and used
        async with other.connect() as conn:  # a connection of its own, not the pool's
            assert (await conn.execute(cut)).scalar_one() >= 4
        after: list[int] = []
        lost = 0
        async with asyncio.timeout(30):
            while len(after) < 10:
                try:
                    after.append(await db.run_transaction(in_a_transaction))
                    after.append(await single())
                except sa.exc.DBAPIError:
                    lost += 1
                    assert lost <= 8, "the pool kept lending cut connections"
        assert not set(after) & before  # all on new connections
    finally:
        await other.close()
        await db.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_database_fails_alike_on_both_paths() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    db = Database(Settings(database_url=url).resolved_database_url())
    raised = []
    try:
        for _ in range(2):  # the engine's first use, then the pool's
            with pytest.raises(ConnectionError) as caught:  # the API answers 503
                await db.first(READ, {"id": "a"})
            raised.append(type(caught.value))
    finally:
        await db.close()
    assert raised[0] is raised[1]
