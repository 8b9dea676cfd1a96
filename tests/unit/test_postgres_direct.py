"""The poll reader connects to PostgreSQL as the engine does: from the same URL."""

from __future__ import annotations

from videoserve.jobs.postgres_direct import connect_args


def test_connect_args_follow_the_url_and_leave_out_sqlalchemy_only_options() -> None:
    url = "postgresql+asyncpg://app:s3cret@db.internal:6432/videos?ssl=require"
    assert connect_args(url + "&prepared_statement_cache_size=0") == {
        "host": "db.internal",
        "port": 6432,
        "user": "app",
        "password": "s3cret",
        "database": "videos",
        "ssl": "require",
    }
    # A Unix socket named in the query, as libpq and SQLAlchemy take it.
    socket = connect_args("postgresql+asyncpg://app@/videos?host=/var/run/postgresql")
    assert socket == {"user": "app", "database": "videos", "host": "/var/run/postgresql"}
