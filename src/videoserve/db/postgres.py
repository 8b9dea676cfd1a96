"""PostgreSQL's single statements straight on asyncpg, from one pool (`PgPool`).

Why: through SQLAlchemy's async engine a statement costs this process far more CPU than the
statement itself: a pool checkout through the greenlet adapter (~65 us), parameter
construction, the execution context and the Row (~200 us more for a submit's INSERT). On an
asyncpg connection the same statement, compiled once, costs a fraction of that. So every
one-statement read and write (`Executor.first`, `write_one`, and the poll's `row_reader`)
runs here; SQLAlchemy still builds and compiles the statements (with the engine's own asyncpg
dialect, so the SQL is exactly what the engine would send) and still runs what earns it:
multi-statement transactions (`run_transaction`, `Database.transaction`), migrations and DDL.

A statement runs here from its second use on (the same statement object: the stores build
theirs once); one built anew per call would be compiled per call, which costs more than the
engine's cache, so it goes to the engine. So do statements this module cannot run exactly
as the engine would: expanding `IN` parameters, Python-side column defaults, and result
types that need converting (anything but text, integers, floats, booleans and JSON, whose
codec is set on each connection as SQLAlchemy's dialect sets it).

The pool connects as the engine does, from the same URL (`dialects.asyncpg_connect_args`,
which the LISTEN connection uses too), and each connection gets the engine's session settings
(`dialects.POSTGRES_SETTINGS`). Its errors are the engine's: asyncpg's integrity and data
errors become SQLAlchemy's `IntegrityError` and `DataError` (the stores catch those: an
idempotency race, a value the database cannot store), a lost or refused connection an
`OperationalError` (answered 503 with `Retry-After`; a refused connect stays the OS's
`ConnectionError`, as with the engine); asyncpg's pool then replaces the connection.
"""

from __future__ import annotations

import asyncio
import json
import operator
from collections.abc import Awaitable, Callable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, make_url

from videoserve import errors
from videoserve.db import dialects

# Statements seen once, waiting for a second use (then compiled); cleared when full, so
# statements built per call cannot grow it.
_SEEN_LIMIT = 512
_ENGINE = object()  # a statement the engine runs (see the module's docstring)


class Row(tuple[Any, ...]):
    """A returned row: a tuple with its columns as attributes and `_fields`, as SQLAlchemy's
    `Row` (what the stores read of one). A subclass per statement names its columns."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    @classmethod
    def named(cls, fields: tuple[str, ...]) -> type[Row]:
        # Properties, not __getattr__: a column named like a tuple method ("count") wins.
        attributes: dict[str, Any] = {"__slots__": (), "_fields": fields}
        attributes |= {name: property(operator.itemgetter(i)) for i, name in enumerate(fields)}
        return type("Row", (cls,), attributes)


class _Compiled:
    """A statement compiled once for asyncpg: its SQL, its parameters in order with their
    defaults and converters, and the row class of its results (made at its first row)."""

    __slots__ = ("converters", "defaults", "names", "row_class", "sql")

    def __init__(self, compiled: Any, dialect: Dialect):
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        self.defaults = {n: value for n, value in compiled.params.items() if value is not None}
        self.converters: dict[str, Callable[[Any], Any]] = {}
        for name in self.names:
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:  # JSON to its text, a Boolean coerced
                self.converters[name] = process
        self.row_class: type[Row] | None = None

    def arguments(self, params: dict[str, Any]) -> list[Any]:
        args = []
        for name in self.names:
            value = params[name] if name in params else self.defaults.get(name)
            convert = self.converters.get(name)
            # None too, as SQLAlchemy does: a JSON column stores it as JSON null.
            args.append(value if convert is None else convert(value))
        return args

    def row(self, record: Any) -> Row:
        row_class = self.row_class
        if row_class is None:
            row_class = self.row_class = Row.named(tuple(record.keys()))
        return row_class(record.values())


def _runs_here(statement: sa.Executable, compiled: Any) -> bool:
    """Whether the statement (and `compiled`, its form for the call's parameter names) runs
    exactly as the engine would run it (module docstring)."""
    if isinstance(statement, sa.Select):
        columns = [column.type for column in statement.selected_columns]
    elif isinstance(statement, sa.Insert | sa.Update | sa.Delete):
        columns = [described["type"] for described in statement.returning_column_descriptions]
    else:
        return False
    if not all(_plain(column) for column in columns):
        return False
    return not (
        compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
    )


def _compile(statement: sa.Executable, dialect: Dialect, keys: tuple[str, ...]) -> Any:
    """The statement compiled as the engine compiles it for these parameter names."""
    return cast(sa.ClauseElement, statement).compile(dialect=dialect, column_keys=list(keys))


def _plain(kind: sa.types.TypeEngine[Any]) -> bool:
    """A result type asyncpg returns as SQLAlchemy would (JSON: the connection's codec)."""
    if isinstance(kind, sa.Float):
        return not kind.asdecimal
    if isinstance(kind, sa.Numeric):
        return False
    return isinstance(
        kind, sa.String | sa.Integer | sa.Boolean | sa.JSON | sa.types.NullType
    ) and not isinstance(kind, sa.Enum)


class PgPool:
    """One asyncpg pool for a PostgreSQL database's single statements."""

    def __init__(self, url: str, dialect: Dialect, *, size: int) -> None:
        self._connect = dialects.asyncpg_connect_args(url)
        self._dialect = dialect
        self._size = size
        self._pool: Any = None
        self._opening: asyncio.Future[Any] | None = None  # one open, however many ask
        self._seen: dict[int, sa.Executable] = {}
        # By statement identity (and parameter names, which decide an INSERT's columns);
        # the statement is kept with it, so its id cannot be reused while cached.
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[sa.Executable, Any]] = {}

    @classmethod
    def for_url(cls, url: str, dialect: Dialect, *, size: int) -> PgPool | None:
        if make_url(url).get_backend_name() != "postgresql":
            return None
        return cls(url, dialect, size=size)

    async def _open(self) -> Any:
        import asyncpg  # the engine's driver; imported where it is used, as SQLAlchemy does

        if self._opening is None:
            self._opening = asyncio.ensure_future(
                asyncpg.create_pool(
                    min_size=1,
                    max_size=self._size,
                    init=_configure,
                    reset=_keep_session,
                    **self._connect,
                )
            )
        opening = self._opening
        try:
            self._pool = await asyncio.shield(opening)
        except Exception:
            if self._opening is opening:
                self._opening = None  # the database is down, say: the next call tries again
            raise
        return self._pool

    def compiled_for(self, statement: sa.Executable, params: dict[str, Any]) -> _Compiled | None:
        """The statement compiled for this pool; None: the engine runs it (module docstring)."""
        keys = tuple(params)
        key = (id(statement), keys)
        found = self._compiled.get(key)
        if found is not None and found[0] is statement:
            return None if found[1] is _ENGINE else found[1]
        if self._seen.get(id(statement)) is not statement:  # its first use
            if len(self._seen) >= _SEEN_LIMIT:
                self._seen.clear()
            self._seen[id(statement)] = statement
            return None
        compiled = _compile(statement, self._dialect, keys)  # once, for the check and the run
        ready = _Compiled(compiled, self._dialect) if _runs_here(statement, compiled) else None
        self._compiled[key] = (statement, _ENGINE if ready is None else ready)
        return ready

    async def fetch_one(self, compiled: _Compiled, params: dict[str, Any]) -> Row | None:
        """Run the compiled statement on its own (autocommit); its first row."""
        args = compiled.arguments(params)
        try:
            pool = self._pool if self._pool is not None else await self._open()
            async with pool.acquire() as conn:
                record = await conn.fetchrow(compiled.sql, *args)
        except Exception as exc:
            raise _as_sqlalchemy(exc, compiled.sql, args) from exc
        return None if record is None else compiled.row(record)

    def prepared(
        self, query: sa.Select
    ) -> Callable[[dict[str, Any]], Awaitable[tuple[Any, ...] | None]]:
        """`query` (one row of strings and numbers) compiled once; a call runs it and returns
        its first row as a plain tuple (None: no row). The status poll's reads: its errors are
        answered 503 as they are, nothing else to convert."""
        compiled = _Compiled(_compile(query, self._dialect, ()), self._dialect)
        sql, names, defaults = compiled.sql, compiled.names, compiled.defaults

        async def run(params: dict[str, Any]) -> tuple[Any, ...] | None:
            try:
                pool = self._pool if self._pool is not None else await self._open()
                async with pool.acquire() as conn:
                    row = await conn.fetchrow(sql, *[params.get(n, defaults.get(n)) for n in names])
            except Exception as exc:
                if _unreachable(exc):  # answered 503, as the engine's own disconnects are
                    raise errors.ServiceUnavailable(
                        f"the job database is unavailable; retry shortly ({exc})", retry_after=2
                    ) from exc
                raise
            return tuple(row) if row is not None else None

        return run

    async def close(self) -> None:
        opening, self._opening, self._pool = self._opening, None, None
        if opening is None:
            return
        if not opening.done():
            opening.cancel()  # still connecting: nothing to close
            return
        if opening.cancelled() or opening.exception() is not None:
            return
        pool = opening.result()
        try:  # gracefully: a statement here is done in a millisecond or so
            await asyncio.wait_for(pool.close(), 5)
        except Exception:
            pool.terminate()  # a connection hung on a server that is gone, say


def _as_sqlalchemy(exc: Exception, sql: str, args: list[Any]) -> Exception:
    """asyncpg's error as the engine would have raised it (the stores and the API's handlers
    catch SQLAlchemy's classes). Why our own map: SQLAlchemy's translation lives in its
    dialect's private adapter. SQLSTATE class 23: integrity; 22: data; a lost or refused
    connection: operational (503 with Retry-After); any other database error: a DBAPIError."""
    import asyncpg

    if isinstance(exc, OSError | TimeoutError):
        return exc  # connecting failed: the engine raises these as they are too
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return sa.exc.IntegrityError(sql, args, exc)
    # The server's class 22, and asyncpg's own refusal of an argument before sending it
    # (a ValueError: an integer out of range, say).
    if isinstance(exc, asyncpg.DataError | ValueError):
        return sa.exc.DataError(sql, args, exc)
    if _unreachable(exc):
        return sa.exc.OperationalError(sql, args, exc)
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return sa.exc.DBAPIError(sql, args, exc)
    return exc


def _unreachable(exc: Exception) -> bool:
    """A lost or refused connection (the server restarting, say), not a fault of the
    statement: OS and asyncpg interface errors, SQLSTATE classes 08 (connection) and 57
    (operator intervention: shutdown, cannot connect now), and timeouts. Also asyncpg's
    internal client error: a connection whose server said goodbye (a FATAL message while it
    was idle) before its socket closed is out of step with asyncpg's protocol until then."""
    import asyncpg

    if isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in ("08", "57")


def _json_text(value: bytes) -> Any:
    return json.loads(value.decode())


async def _keep_session(_conn: Any) -> None:
    """What a connection needs on its way back to the pool: nothing more than asyncpg's own
    clean-up (an open transaction rolled back, listeners dropped), which runs before this.

    Why not asyncpg's default (`Connection.reset`: `RESET ALL`, `UNLISTEN *`, `CLOSE ALL`,
    advisory locks released): our statements change no session state, and `RESET ALL` undid
    `_configure`'s settings after a connection's first use (`plan_cache_mode` back to `auto`,
    the generic-plan trap `dialects.POSTGRES_SETTINGS` describes), while costing a round trip
    on every release, on every poll's read."""


async def _configure(conn: Any) -> None:
    """Each new connection: the engine's session settings, and JSON passed as text and
    returned parsed, as SQLAlchemy's asyncpg dialect sets up its own connections."""
    for name, value in dialects.POSTGRES_SETTINGS.items():
        await conn.execute(f"SET {name} = {value}")
    await conn.set_type_codec(
        "json", encoder=str.encode, decoder=_json_text, schema="pg_catalog", format="binary"
    )
