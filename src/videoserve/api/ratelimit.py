"""Per-key rate limits: a pure-ASGI middleware over the `limits` library (moving windows).

Two separate buckets per caller, so a client polling its jobs is never cut off because it
submitted (the `segmind` SDK never retries a poll: one 429 during `wait()` fails the job):

- `submit`: the calls that create a job (`POST /v2/{model}`, `POST /v1/{model}`,
  `POST /v1/videos`, `POST /v1/videos/{id}/remix`, extensions, edits, and
  `POST /v1/videos/characters`, which costs a decode), limited by `VIDEOSERVE_RATE_LIMIT`
  (empty: no limit).
- `status`: every other call under `/v1/` and `/v2/` (polls, results, lists, cancels), limited
  by `VIDEOSERVE_STATUS_RATE_LIMIT`. Pages, docs, signed file links, health and `/metrics`
  are not limited.

A POST is a submit when its path names a configured model (`/v1/NAME`, `/v2/NAME`) or is one
of the Videos API's creating paths; a POST to an unknown name is a 404 and counts as `status`.
The caller is identified without a database read: by a hash of the presented key (`x-api-key`
or `Authorization: Bearer`), else by the client's address. A bad key is limited under its own
hash until the 401 answers it.
Counts live in this process's memory (`MemoryWindows`, exact moving windows of our own), or in
Redis with `VIDEOSERVE_REDIS_URL` so that every
API process shares them. If Redis fails, limiting pauses for a few seconds (logged) rather than
failing requests: the limits protect capacity, and the job database stays the source of truth.

Every limited answer carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (epoch seconds when a slot frees); a refusal is 429 with `Retry-After`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from videoserve import errors
from videoserve.api import credentials, guard
from videoserve.api.errors import error_response
from videoserve.errors import RateLimited
from videoserve.settings import Settings

log = logging.getLogger("videoserve.api")

Bucket = Literal["submit", "status"]

# `\Z`, not `$` (which also matches before a final newline); matched with `match`.
_MODEL_PATH = re.compile(r"/v[12]/([^/]+)\Z")  # POST /v1/{model}, POST /v2/{model}
# OpenAI create, remix, extensions, edits and characters: the calls that cost a GPU or a decode.
_VIDEOS_PATH = re.compile(r"/v1/videos(/[^/]+/remix|/extensions|/edits|/characters)?/?\Z")
LIMITED_PREFIXES = ("/v1/", "/v2/")
STORAGE_PAUSE_SECONDS = 5.0


@dataclass(frozen=True)
class Verdict:
    """One limit's answer for one call."""

    allowed: bool
    item: RateLimitItem
    remaining: int
    reset_at: float  # epoch seconds when the oldest counted call leaves the window

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.item.amount),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """`headers`, as ASGI header pairs."""
        return [(name.lower().encode(), value.encode()) for name, value in self.headers().items()]

    def message(self) -> str:
        return f"rate limit exceeded: {self.item}; retry in {self.retry_after} s"


class RateLimits:
    """The two buckets over one storage."""

    def __init__(self, settings: Settings) -> None:
        self.items: dict[Bucket, list[RateLimitItem]] = {
            "submit": parse_many(settings.rate_limit) if settings.rate_limit else [],
            "status": parse_many(settings.status_rate_limit) if settings.status_rate_limit else [],
        }
        self._pool = None
        if settings.redis_url:
            import redis.asyncio

            # Our own pool, so that shutdown can close its connections; short timeouts, so a
            # dead Redis costs a request a second at most before limiting pauses.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0
            )
            url = settings.redis_url
            storage = storage_from_string(
                url if url.startswith("async+") else "async+" + url,
                implementation="redispy",
                # limits types **options as scalars, but redispy storage takes a pool object.
                connection_pool=self._pool,  # type: ignore[arg-type]
                key_prefix=settings.rate_limit_prefix,
            )
            self.limiter: MovingWindowRateLimiter | None = MovingWindowRateLimiter(storage)
        else:
            self.limiter = None
        self._memory = MemoryWindows()
        self._paused_until = 0.0
        self._active = any(self.items.values())  # asked on every request

    @property
    def active(self) -> bool:
        return self._active

    async def hit(self, bucket: Bucket, identity: str) -> Verdict | None:
        """Count one call; the tightest limit's verdict, or None when nothing limits it."""
        items = self.items[bucket]
        if not items or time.monotonic() < self._paused_until:
            return None
        if self.limiter is None:
            return self._memory.hit(items, bucket, identity)
        verdicts = []
        try:
            for item in items:
                allowed = await self.limiter.hit(item, bucket, identity)
                stats = await self.limiter.get_window_stats(item, bucket, identity)
                verdict = Verdict(allowed, item, stats.remaining, stats.reset_time)
                if not allowed:
                    return verdict
                verdicts.append(verdict)
        except Exception as exc:  # Redis down or restarting
            log.warning(
                "rate limiting paused for %gs: its storage failed: %s", STORAGE_PAUSE_SECONDS, exc
            )
            self._paused_until = time.monotonic() + STORAGE_PAUSE_SECONDS
            return None
        return min(verdicts, key=lambda v: v.remaining)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()


class MemoryWindows:
    """Exact moving windows in this process's memory: the call times of each limit and
    caller in a deque, trimmed as calls leave the window.

    Ours, not `limits`' memory storage: that one inserts each call at the front of a list
    (O(n) in the calls in the window), takes a lock and builds key strings, twice per call
    (the hit and the stats): 7-33 us a call at the default 6,000/minute, a third of a poll's
    whole cost. This is a deque append and a comparison. Callers that stopped calling are
    swept every `SWEEP_SECONDS`, so memory follows the active callers."""

    SWEEP_SECONDS = 60.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # (bucket, identity, the limit's place in the bucket's list) -> (the limit's window in
        # seconds, its calls' times); a bucket's limits are fixed for the process's life.
        self._calls: dict[tuple[str, str, int], tuple[float, collections.deque[float]]] = {}
        self._next_sweep = clock() + self.SWEEP_SECONDS

    def hit(self, items: list[RateLimitItem], bucket: str, identity: str) -> Verdict:
        """Count one call against every limit; the tightest verdict (a refusal counts nothing)."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        windows = []
        for place, item in enumerate(items):
            key = (bucket, identity, place)
            window = self._calls.get(key)
            if window is None:
                window = self._calls[key] = (float(item.get_expiry()), collections.deque())
            expiry, calls = window
            while calls and calls[0] < now - expiry:  # as `limits`: a call at the edge counts
                calls.popleft()
            if len(calls) >= item.amount:
                return Verdict(False, item, 0, calls[0] + expiry)
            windows.append((item, expiry, calls))
        verdicts = []
        for item, expiry, calls in windows:
            calls.append(now)
            verdicts.append(Verdict(True, item, item.amount - len(calls), calls[0] + expiry))
        return min(verdicts, key=lambda v: v.remaining)

    def __len__(self) -> int:
        """How many (caller, limit) windows are held."""
        return len(self._calls)

    def _sweep(self, now: float) -> None:
        stale = [
            key
            for key, (expiry, calls) in self._calls.items()
            if not calls or calls[-1] < now - expiry
        ]
        for key in stale:
            del self._calls[key]
        self._next_sweep = now + self.SWEEP_SECONDS


# Where a layer that counted the call already (`api.polls`) leaves its verdict (None: nothing
# limited it), so that a call it passes on is counted once, not twice.
COUNTED = "videoserve.rate_limit_verdict"


class RateLimitMiddleware:
    """Counts each API call in its bucket; 429 once a limit is spent."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if (
            scope["type"] != "http"
            or not self.limits.active
            or not scope["path"].startswith(LIMITED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        state = scope.get("state") or {}
        if COUNTED in state:
            verdict = state[COUNTED]
        else:
            try:
                caller = identity(scope)
            except errors.InvalidRequest as exc:
                await guard.refuse(scope, receive, send, 400, exc.message, None)
                return
            verdict = await self.limits.hit(_bucket(scope), caller)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        headers = verdict.headers()
        if not verdict.allowed:
            response = error_response(
                429,
                verdict.message(),
                headers,
                code=RateLimited.code,
                retry_after=verdict.retry_after,
            )
            await response(scope, receive, send)
            return
        extra = verdict.header_pairs()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*(message.get("headers") or []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.limits.close()
            await send(message)

        return wrapped


def _bucket(scope: Scope) -> Bucket:
    if scope["method"] != "POST":
        return "status"
    path = scope["path"]
    if _VIDEOS_PATH.match(path):
        return "submit"
    named = _MODEL_PATH.match(path)
    if named is None:
        return "status"
    # Only a configured model name creates a job (POST /v1/webhooks does not). scope["app"]
    # is the FastAPI app, set before any middleware runs; its services hold the registry.
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    if services is None:
        return "submit"
    return "submit" if named.group(1) in services.registry.names() else "status"


def identity(scope: Scope) -> str:
    """Who is counted: the same key that authentication will read (`credentials`)."""
    return identity_of(credentials.presented_key(scope.get("headers") or []), scope)


def identity_of(presented: str | None, scope: Scope) -> str:
    """`identity`, for a caller whose presented key has been read already."""
    if presented:
        # Salted, so the names in Redis are not the stored key hashes.
        salted = b"videoserve-rate-limit:" + presented.encode("latin-1")
        return "key:" + hashlib.sha256(salted).hexdigest()[:32]
    client = scope.get("client")
    return "ip:" + (client[0] if client else "unknown")
