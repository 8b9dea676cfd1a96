"""Emits webhook events for finished (and running) jobs and delivers them, from the database.

Every API process runs one dispatcher; any number may run against one database. Nothing is
handed over in memory: the dispatcher finds terminal jobs that have a target and no event yet,
stores the event and its deliveries (idempotently), then claims due deliveries one at a time
with a lease. So a job finished by a worker on another host, or by a process that died right
after, still gets its event, and a restart resumes pending retries where they stood.

Failed attempts are retried with exponential backoff and jitter until the retry period
(`webhook_retry_seconds`) is over; the last retry is scheduled at the deadline itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime

import httpx
import httpx_secure

from videoserve import clock
from videoserve.jobs.records import Job
from videoserve.jobs.store import FINISHED_TOPIC, JobStore
from videoserve.resolver import Resolver
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore
from videoserve.storage.signing import UrlSigner
from videoserve.webhooks import events, urls
from videoserve.webhooks.records import AttemptResult, Delivery
from videoserve.webhooks.store import WebhookStore

log = logging.getLogger("videoserve.webhooks")

MAX_BACKOFF_SECONDS = 900.0  # retries never wait longer than this between attempts
CONCURRENCY = 8  # attempts in flight per process: one slow receiver cannot stall the rest
# A topic the job store may publish whenever a job reaches a terminal state; until it does,
# the dispatcher notices finished jobs on its poll.


def backoff(attempt: int, base: float) -> float:
    """Seconds before retry number `attempt` (1 after the first failure): doubling from
    `base`, capped, with equal jitter so receivers coming back up are not hit in lockstep."""
    delay = min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


class WebhookDispatcher:
    """Emits and delivers webhook events until stopped; see the module docstring."""

    def __init__(
        self, settings: Settings, store: JobStore, *, blobs: BlobStore, signer: UrlSigner
    ) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.signer = signer
        self.webhook_store = WebhookStore(store.database)
        self.retry_seconds = settings.webhook_retry_seconds
        self.backoff_base = settings.webhook_backoff_base_seconds
        self.timeout = settings.webhook_timeout_seconds
        self.progress_interval = settings.webhook_progress_interval_seconds
        self.allow_private = settings.allow_private_urls
        # Webhook hosts, at registration, submit and every attempt: a channel of their own.
        self.resolver = Resolver(settings.resolve_timeout_seconds)
        # Long enough for one whole attempt; a sender that dies is replaced after this.
        self.lease_seconds = 2 * self.timeout + 5.0
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        """Where output links point: there is no request to take the host from."""
        if self.settings.public_url:
            return str(self.settings.public_url).rstrip("/")
        host = str(self.settings.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.settings.port}"

    # --- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Emit and deliver until `stop` is set; attempts in flight then finish."""
        poll = self.settings.poll_interval_seconds
        prune_every = self.settings.sweep_interval_seconds
        last_prune = 0.0
        async with urls.delivery_client(
            timeout=self.timeout, allow_private=self.allow_private
        ) as client:
            try:
                while not stop.is_set():
                    wake_in = poll
                    try:
                        await self.emit()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # database down: deliveries may still be due
                        log.warning("webhook emission failed: %s", exc)
                    try:
                        # A claim is a write transaction: only when a delivery is due, not on
                        # every round (every job's end wakes one, webhooks or not).
                        due = await self.webhook_store.next_due()
                        if due is not None and due <= clock.now():
                            self._start_due(client, await self._claim_up_to(CONCURRENCY))
                            due = await self.webhook_store.next_due()
                        if due is not None and len(self._in_flight) < CONCURRENCY:
                            # A full house wakes us when an attempt ends, not on the clock.
                            wake_in = min(poll, max(0.01, due - clock.now()))
                        if time.monotonic() - last_prune >= prune_every:
                            await self.prune()
                            last_prune = time.monotonic()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # database down: try again next round
                        log.warning("webhook round failed: %s", exc)
                    await self._sleep(stop, wake_in)
            except asyncio.CancelledError:
                # Abandoned attempts keep their lease until it expires; then any dispatcher
                # retries them.
                for task in self._in_flight:
                    task.cancel()
                raise
            finally:
                if self._in_flight:
                    await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _claim_up_to(self, slots: int) -> list[Delivery]:
        claimed: list[Delivery] = []
        while len(self._in_flight) + len(claimed) < slots:
            delivery = await self.webhook_store.claim(self.lease_seconds)
            if delivery is None:
                break
            claimed.append(delivery)
        return claimed

    def _start_due(self, client: httpx.AsyncClient, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            task = asyncio.create_task(
                self.attempt(client, delivery), name=f"webhook-{delivery.id}"
            )
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _sleep(self, stop: asyncio.Event, timeout: float) -> None:
        """Until `stop`, an attempt finishes (a slot frees), a job finishes, or `timeout`."""
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.store.notifier.wait(FINISHED_TOPIC, timeout)),
            *self._in_flight,
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters[:2]:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter

    # --- emission ----------------------------------------------------------------------------
    async def emit(self) -> int:
        """Store events for jobs that need one; the number stored."""
        stored = 0
        # Every job's end wakes a round. With no endpoint anywhere, only jobs with their own
        # webhook URL can need an event, and an index finds those without walking the rest;
        # with none of those either (two index seeks), the round has nothing to emit.
        endpoints = await self.webhook_store.has_endpoints()
        if not endpoints and not await self.webhook_store.has_request_webhooks():
            return 0
        for job in await self.webhook_store.jobs_awaiting_final_event(endpoints=endpoints):
            stored += await self._emit_one(job, events.final_type(job))
        if not endpoints:
            return stored  # progress events go to endpoints only
        for job in await self.webhook_store.jobs_awaiting_progress_event(self.progress_interval):
            stored += await self._emit_one(job, events.PROGRESS)
        return stored

    async def _emit_one(self, job: Job, event_type: str) -> int:
        # One job whose links cannot be built (storage down) must not hold up the others.
        event_id = events.new_event_id()
        try:
            payload = await self._payload(job, event_id, event_type)
            if event_type == events.PROGRESS:
                added = await self.webhook_store.add_progress_event(
                    job, event_id, payload, self.progress_interval, self.retry_seconds
                )
            else:
                added = await self.webhook_store.add_final_event(
                    job, event_id, payload, self.retry_seconds
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("webhook event %s for %s not stored yet: %s", event_type, job.id, exc)
            return 0
        return int(added)

    async def _payload(self, job: Job, event_id: str, event_type: str) -> str:
        data = await events.video_data(job, self.blobs, self.signer, self.base_url)
        return events.render(event_id, event_type, clock.now(), data)

    # --- delivery ----------------------------------------------------------------------------
    async def attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        """Send one attempt of `delivery` and record how it went."""
        try:
            result = await self._send(client, delivery)
            retry_at = None if result.ok else self._retry_at(delivery, result.finished_at)
            await self.webhook_store.record_attempt(delivery, result, retry_at)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database: the lease runs out and another sender retries
            log.warning("webhook delivery %s: could not record attempt: %s", delivery.id, exc)
            return
        outcome = result.status_code if result.status_code is not None else result.error
        if result.ok:
            log.info("webhook %s -> %s: %s", delivery.event_id, delivery.url, outcome)
        elif retry_at is None:
            log.warning(
                "webhook %s -> %s: gave up after attempt %d: %s",
                delivery.event_id,
                delivery.url,
                delivery.attempt,
                outcome,
            )
        else:
            log.info(
                "webhook %s -> %s: attempt %d failed (%s); retrying in %.1fs",
                delivery.event_id,
                delivery.url,
                delivery.attempt,
                outcome,
                retry_at - clock.now(),
            )

    def _retry_at(self, delivery: Delivery, now: float) -> float | None:
        if now >= delivery.deadline_at:
            return None
        return min(now + backoff(delivery.attempt, self.backoff_base), delivery.deadline_at)

    async def _send(self, client: httpx.AsyncClient, delivery: Delivery) -> AttemptResult:
        started = clock.now()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                target = await urls.admit(
                    delivery.url, allow_private=self.allow_private, resolver=self.resolver
                )
                secret = await self.webhook_store.secret(delivery.api_key_id)
                headers = events.signed_headers(
                    secret, delivery.event_id, delivery.payload, datetime.now(UTC)
                )
                request = client.build_request(
                    "POST", target, content=delivery.payload.encode(), headers=headers
                )
                response = await client.send(request, stream=True)
                await response.aclose()  # the answer's body means nothing to us
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
        except urls.Refused as exc:
            error = f"refused: {exc}"
        except TimeoutError:
            error = f"timed out after {self.timeout:g}s"
        except httpx.TimeoutException:
            error = f"timed out after {self.timeout:g}s"
        except httpx_secure.SSRFProtectionError as exc:
            error = f"refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptResult(
            started_at=started, finished_at=clock.now(), status_code=status_code, error=error
        )

    # --- housekeeping ------------------------------------------------------------------------
    async def prune(self) -> int:
        """Forget events once their job is gone and their retries are long over."""
        keep = max(self.settings.retention_seconds, self.retry_seconds) + 3600.0
        pruned = await self.webhook_store.prune(clock.now() - keep)
        if pruned:
            log.info("webhooks: pruned %d old events", pruned)
        return pruned
