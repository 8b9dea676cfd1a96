"""PostgreSQL's one asyncpg pool (`PgPool`): single statements straight on asyncpg, and the
connections SQLAlchemy's engine runs its transactions on, lent from the same pool.

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

The engine owns no connection of its own: each checkout borrows one of the pool's
(`PgPool.lend`, the engine's `async_creator`, with SQLAlchemy's `NullPool`) and closing it
gives it back, so a process holds at most `pool_size` connections, and single statements and
transactions wait in one queue. The statements SQLAlchemy prepares on a borrowed connection
come from asyncpg's statement cache of that connection (`_Lent.prepare`), so they stay
prepared from one checkout to the next, as on the engine's own pooled connections before.

The pool connects from the URL as the engine's dialect would (`dialects.asyncpg_connect_args`,
which the LISTEN connection uses too), and each connection gets the session settings
(`dialects.POSTGRES_SETTINGS`) and JSON codecs once, when it opens. A single statement's
errors are the engine's: asyncpg's integrity and data errors become SQLAlchemy's
`IntegrityError` and `DataError` (the stores catch those: an idempotency race, a value the
database cannot store), a lost or refused connection an `OperationalError` (answered 503
with `Retry-After`; a refused connect stays the OS's `ConnectionError`, as with the engine);
asyncpg's pool then replaces the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import weakref
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
    """A process's one asyncpg pool for a PostgreSQL database: its single statements run
    here, and its engine's transactions borrow connections from it (`lend`)."""

    def __init__(self, url: str, *, size: int) -> None:
        self._connect = dialects.asyncpg_connect_args(url)
        self._dialect: Dialect | None = None  # the engine's: `compile_with`
        self._size = size
        self._pool: Any = None
        self._opening: asyncio.Future[Any] | None = None  # one open, however many ask
        self._seen: dict[int, sa.Executable] = {}
        # By statement identity (and parameter names, which decide an INSERT's columns);
        # the statement is kept with it, so its id cannot be reused while cached.
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[sa.Executable, Any]] = {}

    @classmethod
    def for_url(cls, url: str, *, size: int) -> PgPool | None:
        """The pool for a PostgreSQL URL (None for any other)."""
        if make_url(url).get_backend_name() != "postgresql":
            return None
        return cls(url, size=size)

    def compile_with(self, dialect: Dialect) -> None:
        """Compile statements with the engine's dialect, so their SQL is the engine's. (The
        engine is made after the pool: it borrows the pool's connections.)"""
        self._dialect = dialect

    @property
    def dialect(self) -> Dialect:
        assert self._dialect is not None, "PgPool.compile_with(engine.dialect) first"
        return self._dialect

    async def lend(self) -> Any:
        """One of the pool's connections for a checkout of SQLAlchemy's engine (its
        `async_creator`); the engine's close of it gives it back."""
        pool = self._pool if self._pool is not None else await self._open()
        return _Lent(pool, await pool.acquire())

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
        compiled = _compile(statement, self.dialect, keys)  # once, for the check and the run
        ready = _Compiled(compiled, self.dialect) if _runs_here(statement, compiled) else None
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
        compiled = _Compiled(_compile(query, self.dialect, ()), self.dialect)
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


class _Lent:
    """A pool connection lent to the engine for one checkout: what SQLAlchemy's asyncpg
    adapter calls on a connection, passed through, except that closing gives it back to the
    pool, statements come from the connection's statement cache, and codecs are not set
    again."""

    __slots__ = ("__weakref__", "_conn", "_lost", "_pool")

    def __init__(self, pool: Any, conn: Any) -> None:
        self._pool = pool
        self._conn = conn
        # If SQLAlchemy drops the connection without closing it (its close rolls back first,
        # and on a connection the server dropped that raises before the close is reached),
        # the pool would lose the slot for good: terminating it frees the slot.
        self._lost = weakref.finalize(self, _terminate, conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def set_type_codec(self, *_args: Any, **_kwargs: Any) -> None:
        """Nothing: `_configure` set the engine's JSON codecs when the connection opened, and
        setting one again would empty asyncpg's statement cache, which the single
        statements on this connection use."""

    async def prepare(self, query: str, *, name: str | None = None, **kwargs: Any) -> Any:
        """The statement, prepared on this connection by an earlier checkout if one did.

        Why asyncpg's private `_prepare(use_cache=True)` (tests/unit/test_library_internals.py
        names it): SQLAlchemy's statement cache lives and dies with one checkout now, and
        the public `prepare` always prepares anew, a round trip more for every statement of
        every transaction; statements prepared that way are also invalid after the pool's
        release, so they cannot be kept across checkouts by us."""
        if name is not None or kwargs:  # a name of the URL's choosing: prepared as asked
            return await self._conn.prepare(query, name=name, **kwargs)
        return _Prepared(await self._conn._prepare(query, use_cache=True), self._conn)

    def is_closed(self) -> bool:
        """Closed, or taken back by the pool when its socket closed mid-statement (asyncpg
        then refuses every call on it, this one included)."""
        import asyncpg

        try:
            return bool(self._conn.is_closed())
        except asyncpg.InterfaceError:
            return True

    async def close(self, *, timeout: float | None = None) -> None:
        if self._lost.detach() is not None:  # once, however often SQLAlchemy asks
            await self._pool.release(self._conn, timeout=timeout)

    def terminate(self) -> None:
        self._lost()  # asyncpg frees the pool's slot; it opens a new connection when asked


def _terminate(conn: Any) -> None:
    """End a lent connection now; one the pool has already taken back is left alone."""
    import asyncpg

    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class _Prepared:
    """A cached statement; one the server says is stale (a migration changed its result's
    type) makes the pool forget its statements, so the next use prepares afresh, as
    SQLAlchemy's cache did on that error (asyncpg's own `fetch` does it itself)."""

    __slots__ = ("_conn", "_statement")

    def __init__(self, statement: Any, conn: Any) -> None:
        self._statement = statement
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._statement, name)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        import asyncpg

        try:
            return await self._statement.fetch(*args, **kwargs)
        except asyncpg.InvalidCachedStatementError:
            await self._conn.reload_schema_state()
            raise


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
    advisory locks released): our statements change no session state (no SET but
    `_configure`'s, no LISTEN but on the notifier's own connection, no cursors, advisory
    locks only for a transaction, `Database.advisory_lock`), and `RESET ALL` undid
    `_configure`'s settings after a connection's first use (`plan_cache_mode` back to `auto`,
    the generic-plan trap `dialects.POSTGRES_SETTINGS` describes), while costing a round trip
    on every release, on every poll's read."""


async def _configure(conn: Any) -> None:
    """Each new connection: the engine's session settings, and JSON and JSONB passed as text
    and returned parsed, as SQLAlchemy's asyncpg dialect sets up a connection (`_Lent` keeps
    it from doing so again on each checkout)."""
    for name, value in dialects.POSTGRES_SETTINGS.items():
        await conn.execute(f"SET {name} = {value}")
    await conn.set_type_codec(
        "json", encoder=str.encode, decoder=_json_text, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(  # binary JSONB starts with its format's version byte, 1
        "jsonb",
        encoder=lambda text: b"\x01" + text.encode(),
        decoder=lambda value: _json_text(value[1:]),
        schema="pg_catalog",
        format="binary",
    )
