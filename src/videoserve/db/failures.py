"""Which database failures mean what, read from the drivers' codes (never their wording).

Here so that the API's error mapping knows no driver: only `db/` imports one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

_PG_DISK_FULL = "53100"  # SQLSTATE disk_full (asyncpg's DiskFullError)


def database_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL or PostgreSQL's SQLSTATE 53100 anywhere in `exc`'s chain."""
    for cause in _chain(exc):
        if isinstance(cause, sqlite3.Error) and cause.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return True
        if getattr(cause, "sqlstate", None) == _PG_DISK_FULL:
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the driver error SQLAlchemy wraps (`orig`), and what each was raised from."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        cause = pending.pop()
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        for nested in (getattr(cause, "orig", None), cause.__cause__, cause.__context__):
            if isinstance(nested, BaseException):
                pending.append(nested)
