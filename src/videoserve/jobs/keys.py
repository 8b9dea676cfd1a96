"""API keys: created once, shown once, stored as a SHA-256 hash.

A plain SHA-256 (not a slow password hash) is right here: keys are 32 random bytes, so there
is nothing to brute-force, and every request must verify one cheaply.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from videoserve import clock
from videoserve.db.database import Database
from videoserve.jobs import fairness, ledger, schema, text
from videoserve.jobs.records import ApiKey

KEY_PREFIX = "vs_"
MAX_NAME_CHARS = 200  # api_keys.name
ANONYMOUS = ApiKey(
    id="anonymous", name="anonymous (auth off)", prefix="", is_admin=True, created_at=0
)

keys = schema.api_keys


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _record(row: Any) -> ApiKey:  # a SQLAlchemy Row: columns as attributes
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        is_admin=bool(row.is_admin),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        unlimited=bool(row.unlimited),
        share=float(row.share),
        max_priority=int(row.max_priority),
        max_running=row.max_running,
    )


class KeyStore:
    """API keys in the job database.

    `authenticate` remembers a valid key for `cache_seconds`, so a polling client costs no
    key lookup per request. A revocation therefore takes up to that long to reach other
    processes (this process forgets at once); unknown keys are never cached.

    The cache is keyed by the plaintext, not by its hash: hashing was a twentieth of a poll's
    CPU under load, and the plaintext is in this process's memory anyway while a request
    carries it; the cache holds a valid key's at most `cache_seconds` longer.

    Concurrent requests with the same key share one lookup. Why: when a busy key's entry
    expired, every request in flight missed at once (32 lookups for one key under 32 polling
    connections, every `cache_seconds`), which was a twentieth of a poll benchmark's CPU.
    """

    def __init__(self, database: Database, *, cache_seconds: float = 0.0) -> None:
        self._database = database
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey]] = {}  # plaintext -> (until, key)
        self._lookups: dict[str, asyncio.Future[ApiKey | None]] = {}
        # Bumped by `revoke`: a lookup that began before it does not fill the cache.
        self._generation = 0

    async def create(
        self,
        name: str,
        *,
        admin: bool = False,
        credits: float | None = None,
        scheduling: Scheduling | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key; returns its record and the plaintext, which is never stored.

        Without `credits` the key is unlimited; with them, it starts with that grant.
        `scheduling`: its share, priority bound and running cap (default 1, normal, none)."""
        text.check_field("name", name, MAX_NAME_CHARS)  # the same answer on both databases
        chosen = (scheduling or Scheduling()).checked()
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        values = {
            "id": key_id,
            "name": name,
            "key_hash": hash_key(plaintext),
            "prefix": plaintext[:10],
            "is_admin": admin,
            "created_at": clock.now(),
            "revoked_at": None,
            "balance": 0.0,
            "unlimited": credits is None,
            "share": 1.0 if chosen.share is None else chosen.share,
            "max_priority": int(chosen.max_priority or fairness.Priority.NORMAL),
            "max_running": chosen.max_running or None,
            "finish_tag": 0.0,
        }
        async with self._database.transaction() as conn:
            await conn.execute(keys.insert().values(**values))
            if credits is not None:
                await ledger.grant(conn, key_id, credits, "initial credits")
        return _record(_Values(values)), plaintext

    async def credit(
        self, key_id_or_prefix: str, amount: float, note: str = "grant"
    ) -> float | None:
        """Grant credits (negative: an adjustment) as one ledger row; the new balance, or None
        when no key has this id or prefix."""
        match = sa.or_(keys.c.id == key_id_or_prefix, keys.c.prefix == key_id_or_prefix)
        async with self._database.transaction() as conn:
            key_id = (await conn.execute(sa.select(keys.c.id).where(match))).scalar()
            if key_id is None:
                return None
            return await ledger.grant(conn, key_id, amount, note)

    async def update(self, key_id_or_prefix: str, scheduling: Scheduling) -> ApiKey | None:
        """Change a key's share, priority bound or running cap (those given; a running cap
        of 0 removes the key's own); its record, or None when no key matches. Other
        processes see it within their key cache's seconds."""
        chosen = scheduling.checked()
        values: dict[str, Any] = {}
        if chosen.share is not None:
            values["share"] = chosen.share
        if chosen.max_priority is not None:
            values["max_priority"] = int(chosen.max_priority)
        if chosen.max_running is not None:
            values["max_running"] = chosen.max_running or None
        match = sa.or_(keys.c.id == key_id_or_prefix, keys.c.prefix == key_id_or_prefix)
        statement = keys.update().where(match).returning(*keys.c)
        if not values:
            raise ValueError("nothing to update: give a share, a priority bound or a running cap")
        async with self._database.transaction() as conn:
            row = (await conn.execute(statement.values(**values))).first()
        if row is None:
            return None
        self._generation += 1
        self._cache = {d: v for d, v in self._cache.items() if v[1].id != row.id}
        return _record(row)

    async def balance(self, key_id: str) -> float | None:
        """The key's cached ledger sum; None for an unknown key."""
        return await ledger.balance(self._database, key_id)

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._database.connect() as conn:
            row = (await conn.execute(sa.select(keys).where(keys.c.id == key_id))).first()
        return _record(row) if row else None

    async def authenticate(self, plaintext: str) -> ApiKey | None:
        """The active key with this plaintext, or None."""
        cached = self._cache.get(plaintext)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._lookups.get(plaintext)
        if pending is None:
            pending = self._lookups[plaintext] = asyncio.ensure_future(self._remember(plaintext))
            pending.add_done_callback(lambda done: self._lookup_done(plaintext, done))
        # Shielded: one caller's cancellation (a client gone) does not fail the others.
        return await asyncio.shield(pending)

    def cached_until(self, plaintext: str) -> float | None:
        """When (`time.monotonic()`) this process stops trusting its cached answer for the key
        and looks it up again; None when nothing is cached. A long-lived request (an event
        stream) re-authenticates then, and so sees a revocation no later than a poll would."""
        cached = self._cache.get(plaintext)
        return cached[0] if cached is not None else None

    async def _remember(self, plaintext: str) -> ApiKey | None:
        generation = self._generation
        record = await self._lookup(hash_key(plaintext))
        if record is not None and self._cache_seconds > 0 and generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[plaintext] = (time.monotonic() + self._cache_seconds, record)
        return record

    def _lookup_done(self, plaintext: str, done: asyncio.Future[ApiKey | None]) -> None:
        self._lookups.pop(plaintext, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may be gone; each present one raises it

    async def _lookup(self, digest: str) -> ApiKey | None:
        query = sa.select(keys).where(keys.c.key_hash == digest, keys.c.revoked_at.is_(None))
        async with self._database.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row else None

    async def list(self) -> list[ApiKey]:
        async with self._database.connect() as conn:
            rows = (await conn.execute(sa.select(keys).order_by(keys.c.created_at))).all()
        return [_record(r) for r in rows]

    async def revoke(self, key_id_or_prefix: str) -> ApiKey | None:
        """Revoke by id (key_...) or by the key's shown prefix; None if no active key matches."""
        match = sa.or_(keys.c.id == key_id_or_prefix, keys.c.prefix == key_id_or_prefix)
        async with self._database.transaction() as conn:
            row = (
                await conn.execute(
                    keys.update()
                    .where(match, keys.c.revoked_at.is_(None))
                    .values(revoked_at=clock.now())
                    .returning(*keys.c)
                )
            ).first()
        if row:
            self._generation += 1
            self._cache = {d: v for d, v in self._cache.items() if v[1].id != row.id}
        return _record(row) if row else None

    async def count(self) -> int:
        async with self._database.connect() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(keys))).scalar_one()
            )


@dataclass(frozen=True)
class Scheduling:
    """A key's scheduling settings; None: unchanged (an update) or the default (a create)."""

    share: float | None = None  # weight in fair share, > 0
    max_priority: fairness.Priority | None = None
    max_running: int | None = None  # PROCESSING jobs at once; 0: no cap of its own

    def checked(self) -> Scheduling:
        """Itself, or `ValueError` naming the bad value."""
        if self.share is not None and not (0 < self.share <= MAX_SHARE):
            raise ValueError(f"share must be above 0 and at most {MAX_SHARE:g} (got {self.share})")
        if self.max_running is not None and self.max_running < 0:
            raise ValueError(f"max running must be 0 (no cap) or more (got {self.max_running})")
        return self


MAX_SHARE = 1_000_000.0


class _Values:
    """Attribute access over a dict, so a just-inserted row builds the same record."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)
