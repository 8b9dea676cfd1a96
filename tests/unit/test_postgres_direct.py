"""Every direct asyncpg connection connects as the engine does: from the same URL, one way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from videoserve.db.dialects import SQLALCHEMY_ONLY_OPTIONS, asyncpg_connect_args


def test_connect_args_follow_the_url_and_leave_out_sqlalchemy_only_options() -> None:
    url = "postgresql+asyncpg://app:s3cret@db.internal:6432/videos?ssl=require"
    assert asyncpg_connect_args(url + "&prepared_statement_cache_size=0") == {
        "host": "db.internal",
        "port": 6432,
        "user": "app",
        "password": "s3cret",
        "database": "videos",
        "ssl": "require",
    }
    # A Unix socket named in the query, as libpq and SQLAlchemy take it.
    socket = asyncpg_connect_args("postgresql+asyncpg://app@/videos?host=/var/run/postgresql")
    assert socket == {"user": "app", "database": "videos", "host": "/var/run/postgresql"}


def engine_connect_kwargs(url: str) -> dict[str, Any]:
    """What the engine hands `asyncpg.connect` for `url` (caught before any socket opens)."""
    seen: dict[str, Any] = {}

    async def connect(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise ConnectionRefusedError("caught before connecting")

    async def run() -> None:
        engine = create_async_engine(url, connect_args={"async_creator_fn": connect})
        try:
            with pytest.raises(ConnectionRefusedError):
                async with engine.connect():
                    pass
        finally:
            await engine.dispose()

    asyncio.run(run())
    return seen


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:s3cret@db.internal:6432/videos?ssl=require"
        "&prepared_statement_cache_size=0",
        "postgresql+asyncpg://app@/videos?host=/var/run/postgresql",
        "postgresql+asyncpg://app@/videos?host=h1:5433&host=h2:5434&command_timeout=5",
        "postgresql+asyncpg://postgres@127.0.0.1/test",
    ],
)
def test_the_engine_connects_with_the_same_arguments(url: str) -> None:
    # If SQLAlchemy changes what it passes to asyncpg (or which options it keeps for itself),
    # this fails, rather than the reader and the listener quietly connecting another way.
    assert engine_connect_kwargs(url) == asyncpg_connect_args(url)
    assert not set(asyncpg_connect_args(url)) & set(SQLALCHEMY_ONLY_OPTIONS)


def test_the_compiler_exposes_what_the_asyncpg_pool_reads() -> None:
    """`db/postgres.py` compiles statements with the engine's dialect and reads the compiled
    form's parameter order, bound values, binds, and the markers that send a statement back to
    the engine. If SQLAlchemy renames or changes one, this fails by name."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import asyncpg

    table = sa.Table(
        "t",
        sa.MetaData(),
        sa.Column("id", sa.String(8), primary_key=True),
        sa.Column("doc", sa.JSON),
        sa.Column("flag", sa.Boolean, default=False),
    )
    dialect = asyncpg.dialect()
    insert = (
        table.insert()
        .values(id=sa.bindparam("id"), doc=sa.bindparam("doc"), flag=True)
        .returning(table.c.id, table.c.doc)
    )
    compiled = insert.compile(dialect=dialect, column_keys=["id", "doc"])
    assert compiled.string.startswith("INSERT INTO t (id, doc, flag) VALUES ($1::VARCHAR")
    assert tuple(compiled.positiontup) == ("id", "doc", "flag")
    assert compiled.params["flag"] is True  # a value bound in the statement itself
    assert compiled.binds["doc"].type.dialect_impl(dialect).bind_processor(dialect)({"a": 1}) == (
        '{"a": 1}'
    )
    assert [d["name"] for d in insert.returning_column_descriptions] == ["id", "doc"]
    assert not (compiled.post_compile_params or compiled.insert_prefetch)
    # Each marker that sends a statement to the engine, seen where it should be.
    assert table.insert().compile(dialect=dialect, column_keys=["id"]).insert_prefetch
    expanding = sa.select(table.c.id).where(table.c.id.in_(sa.bindparam("ids", expanding=True)))
    assert expanding.compile(dialect=dialect).post_compile_params
    assert hasattr(compiled, "literal_execute_params") and hasattr(compiled, "update_prefetch")
