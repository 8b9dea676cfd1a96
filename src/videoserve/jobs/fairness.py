"""Scheduling: priority classes and fair share across keys, as tags the claim orders by.

The claim takes the queued job with the highest priority class, then the smallest start tag,
then the oldest (`statements.HotStatements._build_claim`, one indexed statement). The tags are
stamped at submit, so a claim and a poll cost what they did before:

Start-time fair queuing (Goyal et al., 1996). Each key keeps a finish tag `F`; the system
keeps a virtual time `V`, the largest start tag a claim has taken (one row, `fair_clock`,
raised with GREATEST so concurrent claims never lower it). A new job of key k gets

    S = max(V, F_k)              its start tag
    F_k = S + expected / share_k

where `expected` is the model's recent mean job seconds (else a configured default). A key
that was idle re-enters at V, so it cannot bank credit; a key with a flood queued has tags far
ahead of V, so a light key's next job sorts before the flood's rest and runs as soon as a
worker is free. When a job ends, its key's F moves by (actual - expected) / share, so a key
whose jobs run long pays for it in its later jobs.

Policy `fifo` (the baseline) stamps S = the submit time instead: within a priority class the
claim then takes the oldest first, as before fair share. V follows claims either way, so a
switch between the policies needs no migration.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from videoserve import clock, errors
from videoserve.db.database import Database
from videoserve.jobs import ledger, scaling, schema

log = logging.getLogger("videoserve.jobs")

HEADER = "X-Queue-Priority"
keys = schema.api_keys
fair_clock = schema.fair_clock

# How long a model's expected job seconds are reused before being read again.
_ESTIMATE_TTL_SECONDS = 30.0
# How long a claim on PostgreSQL trusts its knowledge of whether any key has its own cap.
_KEY_CAPS_TTL_SECONDS = 2.0


class Priority(enum.IntEnum):
    """A job's priority class: higher classes are claimed first."""

    LOW = 0  # never counted as demand for autoscaling
    NORMAL = 1  # the default
    HIGH = 2

    @property
    def label(self) -> str:
        return self.name.lower()


PRIORITY_NAMES = {p.label: p for p in Priority}
LABELS = tuple(p.label for p in Priority)  # by value: what a status shows


class SchedulingPolicy(enum.StrEnum):
    FAIR = "fair"  # fair share across keys within a priority class
    FIFO = "fifo"  # oldest first within a priority class


def parse_priority(value: str | None) -> Priority | None:
    """The header's class; None when absent. `InvalidRequest` naming the allowed values."""
    if value is None:
        return None
    found = PRIORITY_NAMES.get(value.strip().lower())
    if found is None:
        raise errors.InvalidRequest(
            f"{HEADER}: must be one of low, normal, high (got {value!r})", param=HEADER
        )
    return found


def check_bound(priority: Priority, bound: Priority, *, admin: bool) -> None:
    """`Forbidden` naming the key's bound when `priority` is above it (admin keys: any)."""
    if not admin and priority > bound:
        raise errors.Forbidden(
            f"{HEADER}: this API key may ask for at most '{bound.label}' priority "
            f"(asked for '{priority.label}')"
        )


@dataclass(frozen=True)
class Stamp:
    """What a submit writes into its job's row."""

    priority: int
    start_tag: float
    expected_seconds: float | None


# The parameters of the key's stamp (`FairShare.stamp_cte`, `stamp_in`, `stamp_many`): the
# key whose finish tag moves, and the expected seconds of the jobs it stamps.
STAMP_KEY = "fair_key"
STAMP_COST = "fair_cost"


@dataclass(frozen=True)
class Plan:
    """A submit's scheduling columns before its statement runs. Under `fifo` the start tag is
    known (the submit time); under `fair` the submit's own statement computes it from the
    key's finish tag (`start_tag` None), and `params` bind that stamp."""

    key_id: str
    priority: int
    expected_seconds: float | None
    start_tag: float | None

    @property
    def columns(self) -> dict[str, Any]:
        """The job's scheduling columns known now (without a start tag under `fair`)."""
        known: dict[str, Any] = {
            "priority": self.priority,
            "expected_seconds": self.expected_seconds,
        }
        if self.start_tag is not None:
            known["start_tag"] = self.start_tag
        return known

    @property
    def params(self) -> dict[str, Any]:
        """The stamp's parameters (empty when the start tag is known)."""
        if self.start_tag is not None:
            return {}
        return {STAMP_KEY: self.key_id, STAMP_COST: self.expected_seconds}


def _greatest(database: Database, *values: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    result: sa.ColumnElement[float] = database.greatest(*values)
    return result


class FairShare:
    """The tags of one store: stamped at submit, the clock advanced after a claim, and the
    key's finish tag corrected when a job ends."""

    def __init__(
        self, database: Database, policy: SchedulingPolicy, default_job_seconds: float
    ) -> None:
        self.database = database
        self.policy = policy
        self.default_job_seconds = default_job_seconds
        self._estimates: dict[str, tuple[float, float]] = {}  # model -> (until, seconds)
        self._reading: dict[str, asyncio.Future[float]] = {}  # model -> its one read
        self._advanced_to = 0.0  # the largest V this process wrote (skips needless writes)
        self._key_caps: tuple[float, bool] = (0.0, False)  # (until, any key has max_running)
        self._capping: asyncio.Future[bool] | None = None  # `keys_capped`'s one read
        self._writes: set[asyncio.Future[object]] = set()  # `_later`'s, awaited by `drain`
        virtual_time = sa.select(fair_clock.c.virtual_time).where(fair_clock.c.id == 1)
        self._virtual_time = virtual_time
        # The stamp: F = max(F, V) + cost / share, RETURNING S = F - cost / share (and the
        # share, for a bulk stamp's step), one atomic UPDATE: concurrent submits of one key
        # queue behind its row lock (PostgreSQL) or the one writer (SQLite). A submit's cost
        # is one job's expected seconds; a bulk enqueue's, its jobs' together.
        own_cost = sa.bindparam(STAMP_COST, type_=sa.Float) / keys.c.share
        self._next_finish = (
            _greatest(
                database,
                keys.c.finish_tag,
                sa.func.coalesce(virtual_time.scalar_subquery(), 0.0),
            )
            + own_cost
        )
        self._start_of_stamp = (keys.c.finish_tag - own_cost).label("start_tag")
        self._stamp = (
            keys.update()
            .where(keys.c.id == sa.bindparam(STAMP_KEY))
            .values(finish_tag=self._next_finish)
            .returning(self._start_of_stamp, keys.c.share)
        )
        self._charge_stamping = ledger.take(
            {"finish_tag": self._next_finish}, [self._start_of_stamp]
        )
        self._advance = (
            fair_clock.update()
            .where(fair_clock.c.id == 1, fair_clock.c.virtual_time < sa.bindparam("tag"))
            .values(virtual_time=sa.bindparam("tag"))
            .returning(fair_clock.c.id)  # `Database.write_one` reads a row
        )
        self._correct = (
            keys.update()
            .where(keys.c.id == sa.bindparam("key"))
            .values(finish_tag=keys.c.finish_tag + sa.bindparam("delta") / keys.c.share)
            .returning(keys.c.id)
        )

    # --- submit ------------------------------------------------------------------------------
    async def plan(self, key_id: str, served_by: str, priority: Priority) -> Plan:
        """One new job's scheduling columns; under `fair` its start tag is left to the
        submit's own statement (`stamp_cte` or `stamp_in`).

        Why not a statement of its own before the INSERT: that was a second write (on SQLite
        a second hop to the writer and a second commit) on every submit, and cost HTTP
        submits about 30 % of their rate (docs/benchmarks.md). In the submit's statement the
        tag also moves only when the job is stored: a refused submit leaves it as it was."""
        if self.policy == SchedulingPolicy.FIFO:
            return Plan(key_id, int(priority), None, clock.now())
        return Plan(key_id, int(priority), await self.expected_seconds(served_by), None)

    def stamp_cte(self, name: str = "stamped") -> sa.CTE:
        """PostgreSQL: the key's stamp as a data-modifying CTE of the submit's INSERT,
        RETURNING the job's start tag S (none when the key is not in the table)."""
        return self._stamp.cte(name)

    def stamp_charge(self) -> sa.Update:
        """The charge's UPDATE of the key's row (`ledger.take`) stamping the key too,
        RETURNING the start tag beside the key's id: on PostgreSQL a row of one statement may
        be updated once; on SQLite it saves the stamp a statement of its own (each costs the
        writer thread SQLAlchemy's execution, ~10 % of a submit's rate). A refused charge
        leaves the tag as it was."""
        return self._charge_stamping

    def stamp_and_charge(
        self, conn: Connection, plan: Plan, charge_params: dict[str, Any]
    ) -> float | None:
        """In a submit's transaction (SQLite): charge the key and stamp it in one UPDATE, then
        record the charge; the job's start tag, or None when the key cannot pay."""
        taken = ledger.charge_with(conn, self._charge_stamping, charge_params | plan.params)
        return None if taken is None else float(taken.start_tag)

    def start_tag(self, stamped: sa.CTE) -> sa.ColumnElement[float]:
        """The start tag an INSERT stores: the stamp's, else V (a key outside the table)."""
        return sa.func.coalesce(
            sa.select(stamped.c.start_tag).scalar_subquery(),
            self._virtual_time.scalar_subquery(),
            0.0,
        )

    def stamp_in(self, conn: Connection, plan: Plan) -> float:
        """In an uncharged submit's transaction on SQLite (no writing CTEs): advance the
        key's finish tag; the job's start tag."""
        row = conn.execute(self._stamp, plan.params).first()
        if row is not None:
            return float(row.start_tag)
        return float(conn.execute(self._virtual_time).scalar() or 0.0)

    async def stamp_many(
        self, key_id: str, served_by: str, priority: Priority, count: int
    ) -> list[Stamp]:
        """The tags of `count` new jobs of one key and model, in queue order (a bulk enqueue:
        written in its own statement before the jobs' INSERT)."""
        if self.policy == SchedulingPolicy.FIFO:
            now = clock.now()
            return [Stamp(int(priority), now, None)] * count
        expected = await self.expected_seconds(served_by)
        params = {STAMP_KEY: key_id, STAMP_COST: expected * count}
        row = await self.database.write_one(self._stamp, params)
        if row is None:  # a key outside the table (auth off): it shares V with itself
            start = await self.virtual_time()
            step = expected
        else:
            step = expected / float(row.share)
            start = float(row.start_tag)
        return [Stamp(int(priority), start + i * step, expected) for i in range(count)]

    async def expected_seconds(self, served_by: str) -> float:
        """The model's recent mean job seconds, else the default (re-read every 30 s).

        One read at a time per model, and a stale value is used while it runs. Why: every
        submit asks, so when the value lapsed under load each of 32 concurrent submits read
        on a connection of its own (on SQLite, an aiosqlite thread each: 17 more threads,
        and a submit rate 10 % lower)."""
        now = time.monotonic()
        cached = self._estimates.get(served_by)
        if cached is not None and cached[0] > now:
            return cached[1]
        reading = self._reading.get(served_by)
        if reading is None:
            reading = asyncio.ensure_future(self._read_expected(served_by))
            self._reading[served_by] = reading
            reading.add_done_callback(lambda _done: self._reading.pop(served_by, None))
            reading.add_done_callback(_retrieved)
        if cached is not None:
            return cached[1]
        return await asyncio.shield(reading)

    async def _read_expected(self, served_by: str) -> float:
        seconds = await scaling.recent_job_seconds(self.database, served_by)
        if seconds is None or seconds <= 0:
            seconds = self.default_job_seconds
        self._estimates[served_by] = (time.monotonic() + _ESTIMATE_TTL_SECONDS, seconds)
        return seconds

    async def virtual_time(self) -> float:
        row = await self.database.first(self._virtual_time)
        return 0.0 if row is None else float(row[0])

    # --- claim -------------------------------------------------------------------------------
    def advance_params(self, start_tag: float) -> dict[str, float] | None:
        """Parameters of `advance` after claiming a job with this tag; None when this process
        already moved V past it (nothing to write)."""
        if start_tag <= self._advanced_to:
            return None
        self._advanced_to = start_tag
        return {"tag": start_tag}

    @property
    def advance(self) -> sa.Update:
        """V = max(V, :tag): safe under any number of concurrent claims."""
        return self._advance

    def advanced(self, start_tag: float) -> None:
        """After a claim's commit: V follows the claimed job's start tag, written in the
        background (see `_later`)."""
        params = self.advance_params(start_tag)
        if params is not None:
            self._later(self.database.write_one(self._advance, params))

    def _later(self, write: Coroutine[object, object, object]) -> None:
        """Run a bookkeeping write off the worker's path. Why: a claim or a completion waited
        one more round trip for it, which on a busy PostgreSQL host cost a worker slot 5-15 %
        of its jobs per second (bench/fleet.py). Both writes only move a tag forward or by a
        delta, so their order against other statements does not matter; a crash loses one
        step of V (the next claim makes it up) or one job's correction."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Future[object]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("fair share bookkeeping write failed: %s", task.exception())

    async def drain(self) -> None:
        """Wait for the background writes (before the database closes, and in tests)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def keys_capped(self) -> bool:
        """Whether any key has its own running cap (read at most every 2 s): PostgreSQL's
        claims then serialise, as they do under the server's cap (see `JobStore.claim`).

        Every PostgreSQL submit asks; as with `expected_seconds`, one read at a time, and the
        last answer is served while it runs."""
        until, capped = self._key_caps
        if until > time.monotonic():
            return capped
        reading = self._capping
        if reading is None:
            reading = self._capping = asyncio.ensure_future(self._read_key_caps())
            reading.add_done_callback(self._caps_read)
        if until:  # answered before
            return capped
        return await asyncio.shield(reading)

    async def _read_key_caps(self) -> bool:
        capped = await self.database.first(_ANY_KEY_CAPPED) is not None
        self._key_caps = (time.monotonic() + _KEY_CAPS_TTL_SECONDS, capped)
        return capped

    def _caps_read(self, done: asyncio.Future[bool]) -> None:
        self._capping = None
        if not done.cancelled() and done.exception() is not None:
            log.warning("fair share: reading the keys' running caps failed: %s", done.exception())

    # --- end ---------------------------------------------------------------------------------
    def served(
        self, key_id: str, expected: float | None, started_at: float | None, now: float
    ) -> None:
        """A job of the key ended after running since `started_at`: F moves by
        (actual - expected) / share, so the key's next jobs pay for what this one overran
        (or gain what it saved). Written in the background (see `_later`)."""
        if self.policy == SchedulingPolicy.FIFO or expected is None or started_at is None:
            return
        delta = max(0.0, now - started_at) - expected
        if delta:
            self._later(self.database.write_one(self._correct, {"key": key_id, "delta": delta}))


_ANY_KEY_CAPPED = sa.select(keys.c.id).where(keys.c.max_running.is_not(None)).limit(1)


def _retrieved(done: asyncio.Future[float]) -> None:
    """A failed read is logged once (a submit served the stale value, or awaits the error)."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("fair share: reading a model's job seconds failed: %s", done.exception())


def claim_order(jobs: sa.Table) -> Sequence[sa.ColumnElement[object]]:
    """The claim's ORDER BY, served by ix_jobs_claim_order."""
    return (jobs.c.priority.desc(), jobs.c.start_tag, jobs.c.created_at, jobs.c.id)
