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
