"""Credits: every grant, charge and refund is a `credit_ledger` row; a balance is their sum.

`api_keys.balance` caches that sum. It is changed only by an `UPDATE ... SET balance = balance
+/- :amount` in the same transaction that writes the ledger row, never read into Python and
written back, so concurrent submits cannot overspend and `balance == SUM(amount)` always holds.

- A charge is taken when a job is accepted, in the transaction that inserts the job: the key's
  UPDATE carries the check (`unlimited OR balance >= cost`), so on PostgreSQL the row lock
  serialises a key's submits and the check is re-evaluated on the latest balance; on SQLite the
  transaction holds the database write lock from BEGIN IMMEDIATE.
- A refund is written in the transaction that moves the job to FAILED. The unique constraint on
  `(job_id, kind)` makes it at most once per job; the insert skips a duplicate instead of
  failing, so a refund can never undo the FAILED transition it rides with.
- Unlimited keys are charged and refunded too (their balance simply goes negative), so usage,
  `spent` and the metrics read the same way for every key.

Amounts are floats: prices are per-second numbers set by the operator, and with whole-number
prices every sum is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from videoserve import clock, errors
from videoserve.db import dialects
from videoserve.db.database import Database
from videoserve.jobs import schema

ledger = schema.credit_ledger
keys = schema.api_keys

Kind = Literal["grant", "charge", "refund"]


def number(value: float) -> int | float:
    """A credit amount as people write it: 8, not 8.0."""
    value = float(value)
    return int(value) if value.is_integer() else round(value, 6)


@dataclass(frozen=True)
class Charge:
    """The price of one request: seconds x (price_per_second + steps x price_per_step_second).

    The step term lets the price follow compute: 100 steps cost 25 times the GPU time of 4."""

    seconds: float
    price_per_second: float
    steps: int = 0
    price_per_step_second: float = 0.0
    unit: str | None = None  # a flat price per thing ("character"): `seconds` counts them

    @property
    def rate(self) -> float:
        """Credits per second of this video."""
        return self.price_per_second + self.steps * self.price_per_step_second

    @property
    def amount(self) -> float:
        return self.seconds * self.rate

    def describe(self) -> str:
        if self.unit is not None:
            return f"{number(self.price_per_second)} credits per {self.unit}"
        if self.price_per_step_second:
            return (
                f"{number(self.seconds)} s x ({number(self.price_per_second)} + "
                f"{self.steps} steps x {number(self.price_per_step_second)}) credits/s"
            )
        unit = "credit" if self.price_per_second == 1 else "credits"
        return f"{number(self.seconds)} s x {number(self.price_per_second)} {unit}/s"


@dataclass(frozen=True)
class Account:
    """A key's credits as `GET /v1/account` shows them."""

    key_id: str
    name: str
    unlimited: bool
    balance: float  # the cached ledger sum
    granted: float  # grants and adjustments
    spent: float  # charges, as a positive number
    refunded: float


@dataclass(frozen=True)
class Entry:
    """One ledger row."""

    id: int
    api_key_id: str
    job_id: str | None
    kind: Kind
    amount: float
    note: str | None
    created_at: float


def insufficient(balance: float | None, charge: Charge) -> errors.InsufficientCredits:
    """The 406 a refused charge answers, with the balance and how the price was computed."""
    have = "no such key" if balance is None else f"balance {number(balance)}"
    return errors.InsufficientCredits(
        f"insufficient credits: {have}, price {number(charge.amount)} ({charge.describe()})",
        balance=None if balance is None else number(balance),
        price=number(charge.amount),
    )


async def check_affordable(database: Database, api_key_id: str, price: Charge | None) -> None:
    """`InsufficientCredits` now when the key's balance does not cover `price`.

    Advisory, before costly work (decoding an upload): the charge itself, in the
    transaction that records what was bought, still decides."""
    if price is None or price.amount <= 0:
        return
    found = await account(database, api_key_id)
    if found is not None and not found.unlimited and found.balance < price.amount:
        raise insufficient(found.balance, price)


# --- writes: each runs inside the caller's transaction --------------------------------------
def charge(conn: Connection, api_key_id: str, job_id: str, price: Charge) -> bool:
    """Deduct the price if the key may spend it and record the charge; False when refused.

    Synchronous: the submit runs its whole transaction as one unit (`Database.run_transaction`,
    on SQLite one hop to the writer thread). On PostgreSQL the deduction and its ledger row
    are one statement (a data-modifying CTE): one round trip less while the key's row is
    locked, which every concurrent submit of that key waits on."""
    params = charge_params(api_key_id, job_id, price)
    if dialects.writes_in_ctes(conn.dialect):
        return conn.execute(_TAKE_AND_RECORD, params).first() is not None
    return charge_with(conn, TAKE, params) is not None


def charge_with(conn: Connection, take: sa.Update, params: dict[str, Any]) -> sa.Row | None:
    """`charge` with a `take` of the caller's (`take(also, returning)`: the submit's fair-share
    stamp rides in the same UPDATE of the key's row); its returned row, None when refused.
    `params`: `charge_params` and what `take` adds."""
    taken = conn.execute(take, params).first()
    if taken is not None:
        conn.execute(_RECORD, params)
    return taken


def charge_params(api_key_id: str, job_id: str, price: Charge) -> dict[str, Any]:
    """The parameters of the charge's statements (`TAKE` and `recorded`)."""
    return {
        "key_id": api_key_id,
        "price": price.amount,
        "job_id": job_id,
        "charged": -price.amount,
        "note": price.describe(),
        "now": clock.now(),
    }


# Built once: the charge runs on every submit (see `statements` for why that matters).
# TAKE deducts the price where the key may spend it (RETURNING the key's id: no row, refused).
def take(
    also: dict[str, Any] | None = None, returning: Sequence[sa.ColumnElement[Any]] = ()
) -> sa.Update:
    """TAKE, setting `also` on the key's row too and RETURNING `returning` beside its id (the
    submit's fair-share stamp: one statement may update a row once). Built anew each time:
    SQLAlchemy keeps a statement's exported columns once a CTE was made of it, so one derived
    from TAKE would not show the added RETURNING."""
    return (
        keys.update()
        .where(keys.c.id == sa.bindparam("key_id"))
        .where(sa.or_(keys.c.unlimited, keys.c.balance >= sa.bindparam("price")))
        .values(balance=keys.c.balance - sa.bindparam("price"), **(also or {}))
        .returning(keys.c.id, *returning)
    )


TAKE = take()
_RECORD = ledger.insert().values(
    api_key_id=sa.bindparam("key_id"),
    job_id=sa.bindparam("job_id"),
    kind="charge",
    amount=sa.bindparam("charged"),
    note=sa.bindparam("note"),
    created_at=sa.bindparam("now"),
)


def recorded(taken: sa.CTE) -> sa.Insert:
    """The charge's ledger row for each row of `taken` (TAKE as a CTE): none when refused.

    PostgreSQL only (a data-modifying CTE); the submit folds it into the job's INSERT."""
    return ledger.insert().from_select(
        ["api_key_id", "job_id", "kind", "amount", "note", "created_at"],
        sa.select(
            taken.c.id,
            sa.bindparam("job_id", type_=sa.String),
            sa.literal("charge", type_=sa.String),
            sa.bindparam("charged", type_=sa.Float),
            sa.bindparam("note", type_=sa.Text),
            sa.bindparam("now", type_=sa.Float),
        ),
    )


_taken = TAKE.cte("taken")
# WITH taken AS (UPDATE api_keys ... RETURNING id) INSERT INTO credit_ledger SELECT ... FROM
# taken: no row (and no ledger entry) when the key may not spend the price.
_TAKE_AND_RECORD = recorded(_taken).add_cte(_taken).returning(ledger.c.id)


def _refund_entry(
    database: Database, api_key_id: str, job_id: str, cost: float, note: str
) -> sa.Insert:
    return (
        database.insert_ignoring(ledger, conflict=["job_id", "kind"])
        .values(
            api_key_id=api_key_id,
            job_id=job_id,
            kind="refund",
            amount=cost,
            note=note[:500],
            created_at=clock.now(),
        )
        .returning(ledger.c.id)
    )


def _give_back(api_key_id: str, cost: float) -> sa.Update:
    return keys.update().where(keys.c.id == api_key_id).values(balance=keys.c.balance + cost)


async def refund(
    database: Database,
    conn: AsyncConnection,
    api_key_id: str,
    job_id: str,
    cost: float | None,
    note: str,
) -> float:
    """Give a failed job's charge back, once; returns the amount refunded (0 if none)."""
    if cost is None:  # nothing was charged (auth off, or a job from before credits existed)
        return 0.0
    row = (await conn.execute(_refund_entry(database, api_key_id, job_id, cost, note))).first()
    if row is None:  # already refunded
        return 0.0
    await conn.execute(_give_back(api_key_id, cost))
    return cost


def refund_in(
    database: Database,
    conn: Connection,
    api_key_id: str,
    job_id: str,
    cost: float | None,
    note: str,
) -> float:
    """`refund` inside a synchronous transaction (`Database.run_transaction`)."""
    if cost is None:
        return 0.0
    if conn.execute(_refund_entry(database, api_key_id, job_id, cost, note)).first() is None:
        return 0.0
    conn.execute(_give_back(api_key_id, cost))
    return cost


async def grant(conn: AsyncConnection, api_key_id: str, amount: float, note: str) -> float | None:
    """Add credits (negative: an adjustment) to a key; its new balance, None if no such key."""
    row = (
        await conn.execute(
            keys.update()
            .where(keys.c.id == api_key_id)
            .values(balance=keys.c.balance + amount)
            .returning(keys.c.balance)
        )
    ).first()
    if row is None:
        return None
    await conn.execute(
        ledger.insert().values(
            api_key_id=api_key_id,
            job_id=None,
            kind="grant",
            amount=amount,
            note=note,
            created_at=clock.now(),
        )
    )
    return float(row.balance)


# --- reads -----------------------------------------------------------------------------------
async def balance(database: Database, api_key_id: str) -> float | None:
    row = await database.first(_BALANCE, {"key_id": api_key_id})
    return None if row is None else float(row[0])


_BALANCE = sa.select(keys.c.balance).where(keys.c.id == sa.bindparam("key_id"))


async def account(database: Database, api_key_id: str) -> Account | None:
    """The key's balance and its ledger totals by kind; None for an unknown key."""
    totals = (
        sa.select(ledger.c.kind, sa.func.sum(ledger.c.amount))
        .where(ledger.c.api_key_id == api_key_id)
        .group_by(ledger.c.kind)
    )
    async with database.connect() as conn:
        key = (await conn.execute(sa.select(keys).where(keys.c.id == api_key_id))).first()
        if key is None:
            return None
        sums = {kind: float(total or 0) for kind, total in (await conn.execute(totals)).all()}
    return Account(
        key_id=key.id,
        name=key.name,
        unlimited=bool(key.unlimited),
        balance=float(key.balance),
        granted=sums.get("grant", 0.0),
        spent=-sums.get("charge", 0.0),
        refunded=sums.get("refund", 0.0),
    )


async def refunds_for(database: Database, job_ids: list[str]) -> dict[str, float]:
    """job id -> amount refunded, for the jobs that got a refund."""
    if not job_ids:
        return {}
    query = sa.select(ledger.c.job_id, ledger.c.amount).where(
        ledger.c.kind == "refund", ledger.c.job_id.in_(job_ids)
    )
    async with database.connect() as conn:
        return {job_id: float(amount) for job_id, amount in (await conn.execute(query)).all()}


async def entries(database: Database, api_key_id: str) -> list[Entry]:
    """The key's ledger, oldest first."""
    query = (
        sa.select(ledger)
        .where(ledger.c.api_key_id == api_key_id)
        .order_by(ledger.c.created_at, ledger.c.id)
    )
    async with database.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        Entry(
            id=r.id,
            api_key_id=r.api_key_id,
            job_id=r.job_id,
            kind=r.kind,
            amount=float(r.amount),
            note=r.note,
            created_at=r.created_at,
        )
        for r in rows
    ]
