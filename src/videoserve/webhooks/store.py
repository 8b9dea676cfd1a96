"""Webhook rows on SQLite or PostgreSQL: secrets, endpoints, events, deliveries, attempts.

Like the job store, every step that several processes may race on is one atomic statement:
events and deliveries are inserted with `ON CONFLICT DO NOTHING` on their unique keys (so two
dispatchers that notice the same finished job emit one event), and a delivery is claimed with
`UPDATE ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING`, with a lease
(`next_attempt_at` moves to the lease expiry) and a token that fences the attempt's result.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from videoserve import clock
from videoserve.db.database import Database
from videoserve.jobs import listing, schema
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status
from videoserve.webhooks import events
from videoserve.webhooks.records import (
    Attempt,
    AttemptResult,
    Delivery,
    DeliveryStatus,
    Endpoint,
)
from videoserve.webhooks.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
    webhook_secrets,
)

jobs = schema.jobs
REQUEST_TARGET = "request"  # the target name of a job's own ?webhook= URL


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        api_key_id=row.api_key_id,
        url=row.url,
        events=tuple(row.events or ()),
        created_at=row.created_at,
    )


def _subscribed(event_type: str | sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    # JSON containment differs per dialect; the list's text form is the same on both.
    pattern = sa.literal('%"') + event_type + sa.literal('"%')
    return sa.cast(webhook_endpoints.c.events, sa.Text).like(pattern)


_FINISHED = [Status.COMPLETED.value, Status.FAILED.value]  # the states a final event tells of


class WebhookStore:
    """Webhook rows in the job database; one instance per process."""

    def __init__(self, database: Database) -> None:
        self.database = database

    # --- secrets -----------------------------------------------------------------------------
    async def secret(self, api_key_id: str) -> str:
        """The key's signing secret, created on first use."""
        async with self.database.connect() as conn:
            found = await self._read_secret(conn, api_key_id)
        if found is not None:
            return found
        async with self.database.transaction() as conn:
            await conn.execute(
                self.database.insert_ignoring(webhook_secrets).values(
                    api_key_id=api_key_id, secret=events.new_secret(), created_at=clock.now()
                )
            )
            found = await self._read_secret(conn, api_key_id)
        assert found is not None
        return found

    async def rotate_secret(self, api_key_id: str) -> str:
        """Replace the key's secret; attempts from now on are signed with the new one."""
        fresh = events.new_secret()
        now = clock.now()
        async with self.database.transaction() as conn:
            await conn.execute(
                self.database.insert_ignoring(webhook_secrets).values(
                    api_key_id=api_key_id, secret=fresh, created_at=now
                )
            )
            await conn.execute(
                webhook_secrets.update()
                .where(webhook_secrets.c.api_key_id == api_key_id)
                .values(secret=fresh, rotated_at=now)
            )
        return fresh

    @staticmethod
    async def _read_secret(conn: AsyncConnection, api_key_id: str) -> str | None:
        query = sa.select(webhook_secrets.c.secret).where(
            webhook_secrets.c.api_key_id == api_key_id
        )
        return (await conn.execute(query)).scalar()

    # --- endpoints ---------------------------------------------------------------------------
    async def create_endpoint(
        self, api_key_id: str, url: str, event_types: Sequence[str]
    ) -> Endpoint:
        values: dict[str, Any] = {
            "id": "whep_" + secrets.token_hex(12),
            "api_key_id": api_key_id,
            "url": url,
            "events": list(event_types),
            "created_at": clock.now(),
        }
        async with self.database.transaction() as conn:
            await conn.execute(webhook_endpoints.insert().values(**values))
        return Endpoint(**{**values, "events": tuple(event_types)})

    async def endpoints(self, api_key_id: str) -> list[Endpoint]:
        query = (
            sa.select(webhook_endpoints)
            .where(webhook_endpoints.c.api_key_id == api_key_id)
            .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
        )
        async with self.database.connect() as conn:
            return [_endpoint(r) for r in (await conn.execute(query)).all()]

    async def delete_endpoint(self, api_key_id: str, endpoint_id: str) -> bool:
        """Remove the endpoint and cancel its unfinished deliveries; False if it is not ours."""
        d = webhook_deliveries
        async with self.database.transaction() as conn:
            deleted = (
                await conn.execute(
                    webhook_endpoints.delete().where(
                        webhook_endpoints.c.id == endpoint_id,
                        webhook_endpoints.c.api_key_id == api_key_id,
                    )
                )
            ).rowcount
            if deleted:
                await conn.execute(
                    d.update()
                    .where(
                        d.c.endpoint_id == endpoint_id,
                        d.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
                    )
                    .values(
                        status=DeliveryStatus.CANCELLED,
                        finished_at=clock.now(),
                        lease_token=None,
                        last_error="endpoint deleted",
                    )
                )
        return bool(deleted)

    # --- emission ----------------------------------------------------------------------------
    async def has_endpoints(self) -> bool:
        """Whether any key has a webhook endpoint (one index seek)."""
        return await self.database.first(sa.select(webhook_endpoints.c.id).limit(1)) is not None

    async def has_request_webhooks(self) -> bool:
        """Whether any finished job has its own webhook URL (one seek of their partial index,
        in the loop on SQLite): when none has, and no endpoint exists, nothing awaits an
        event."""
        return await listing.any_finished_with_own_webhook(self.database)

    async def jobs_awaiting_final_event(
        self, limit: int = 100, *, endpoints: bool = True
    ) -> list[Job]:
        """Finished, unexpired jobs with a target for their final event and no event yet.

        `endpoints=False` (no key has an endpoint): only jobs with their own webhook URL,
        found through their partial index rather than by walking every finished job."""
        e = webhook_endpoints
        final_type = sa.case(
            (jobs.c.status == Status.COMPLETED.value, events.COMPLETED), else_=events.FAILED
        )
        has_endpoint = (
            sa.select(e.c.id)
            .where(
                e.c.api_key_id == jobs.c.api_key_id,
                e.c.created_at <= jobs.c.finished_at,  # no events from before it existed
                _subscribed(final_type),
            )
            .exists()
        )
        has_event = (
            sa.select(webhook_events.c.id)
            .where(
                webhook_events.c.job_id == jobs.c.id,
                webhook_events.c.type.in_([events.COMPLETED, events.FAILED]),
            )
            .exists()
        )
        query = (
            sa.select(jobs)
            .where(
                jobs.c.status.in_(_FINISHED),
                sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > clock.now()),
                sa.or_(jobs.c.webhook_url.is_not(None), has_endpoint)
                if endpoints
                else jobs.c.webhook_url.is_not(None),
                ~has_event,
            )
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(limit)
        )
        # Not in the loop, even as a walk of the partial index: where every job has its own
        # URL, that index holds every job of the retention window.
        async with self.database.connect() as conn:
            return [Job.from_row(r) for r in (await conn.execute(query)).all()]

    async def jobs_awaiting_progress_event(self, interval: float, limit: int = 100) -> list[Job]:
        """Running jobs with a progress subscriber, a new progress value, and no progress
        event in the last `interval` seconds."""
        e, ev = webhook_endpoints, webhook_events
        subscribed = (
            sa.select(e.c.id)
            .where(e.c.api_key_id == jobs.c.api_key_id, _subscribed(events.PROGRESS))
            .exists()
        )
        recent = (
            sa.select(ev.c.id)
            .where(
                ev.c.job_id == jobs.c.id,
                ev.c.type == events.PROGRESS,
                sa.or_(
                    ev.c.created_at > clock.now() - interval,
                    ev.c.dedupe_key == _progress_key(jobs.c.id, jobs.c.progress),
                ),
            )
            .exists()
        )
        query = (
            sa.select(jobs)
            .where(jobs.c.status == Status.PROCESSING.value, subscribed, ~recent)
            .order_by(jobs.c.started_at, jobs.c.id)
            .limit(limit)
        )
        async with self.database.connect() as conn:
            return [Job.from_row(r) for r in (await conn.execute(query)).all()]

    async def add_final_event(
        self, job: Job, event_id: str, payload: str, retry_seconds: float
    ) -> bool:
        """Store the job's video.completed / video.failed event with one delivery per target;
        False when another dispatcher already did."""
        event_type = events.final_type(job)
        async with self.database.transaction() as conn:
            if not await self._insert_event(
                conn, job, event_id, event_type, f"{job.id}:final", payload
            ):
                return False
            targets = [
                (ep.id, ep.url)
                for ep in await self._endpoints_for(conn, job.api_key_id, job.finished_at)
                if event_type in ep.events
            ]
            if job.webhook_url:
                targets.append((REQUEST_TARGET, job.webhook_url))
            await self._insert_deliveries(conn, job, event_id, targets, retry_seconds)
        return True

    async def add_progress_event(
        self, job: Job, event_id: str, payload: str, interval: float, retry_seconds: float
    ) -> bool:
        """Store a video.progress event for the job unless one was stored in the last
        `interval` seconds or for this progress value; False when none was stored."""
        ev = webhook_events
        async with self.database.transaction() as conn:
            # So two dispatchers cannot both see "no recent event" for one job.
            await self.database.advisory_lock(conn, "webhook_progress", job.id)
            recent = (
                await conn.execute(
                    sa.select(ev.c.id)
                    .where(
                        ev.c.job_id == job.id,
                        ev.c.type == events.PROGRESS,
                        ev.c.created_at > clock.now() - interval,
                    )
                    .limit(1)
                )
            ).first()
            if recent is not None:
                return False
            targets = [
                (ep.id, ep.url)
                for ep in await self._endpoints_for(conn, job.api_key_id, None)
                if events.PROGRESS in ep.events
            ]
            if not targets:
                return False
            key = f"{job.id}:progress:{job.progress}"
            if not await self._insert_event(conn, job, event_id, events.PROGRESS, key, payload):
                return False
            await self._insert_deliveries(conn, job, event_id, targets, retry_seconds)
        return True

    async def _insert_event(
        self,
        conn: AsyncConnection,
        job: Job,
        event_id: str,
        event_type: str,
        key: str,
        payload: str,
    ) -> bool:
        inserted = await conn.execute(
            self.database.insert_ignoring(webhook_events)
            .values(
                id=event_id,
                dedupe_key=key,
                api_key_id=job.api_key_id,
                job_id=job.id,
                type=event_type,
                payload=payload,
                created_at=clock.now(),
            )
            .returning(webhook_events.c.id)
        )
        return inserted.first() is not None

    @staticmethod
    async def _endpoints_for(
        conn: AsyncConnection, api_key_id: str, created_by: float | None
    ) -> list[Endpoint]:
        e = webhook_endpoints
        query = sa.select(e).where(e.c.api_key_id == api_key_id)
        if created_by is not None:
            query = query.where(e.c.created_at <= created_by)
        return [_endpoint(r) for r in (await conn.execute(query)).all()]

    async def _insert_deliveries(
        self,
        conn: AsyncConnection,
        job: Job,
        event_id: str,
        targets: Sequence[tuple[str, str]],
        retry_seconds: float,
    ) -> None:
        now = clock.now()
        for target, url in targets:
            await conn.execute(
                self.database.insert_ignoring(webhook_deliveries).values(
                    id="whd_" + secrets.token_hex(12),
                    event_id=event_id,
                    target=target,
                    endpoint_id=None if target == REQUEST_TARGET else target,
                    api_key_id=job.api_key_id,
                    url=url,
                    status=DeliveryStatus.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    deadline_at=now + retry_seconds,
                    created_at=now,
                )
            )

    # --- delivering --------------------------------------------------------------------------
    async def claim(self, lease_seconds: float) -> Delivery | None:
        """Atomically take the most overdue delivery (or one whose sender's lease ran out)."""
        d = webhook_deliveries
        now = clock.now()
        due = sa.and_(
            d.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            d.c.next_attempt_at <= now,
        )
        oldest = sa.select(d.c.id).where(due).order_by(d.c.next_attempt_at, d.c.id).limit(1)
        oldest = self.database.claim_subquery(oldest)
        token = secrets.token_hex(16)
        statement = (
            d.update()
            .where(d.c.id == oldest.scalar_subquery(), due)
            .values(
                status=DeliveryStatus.SENDING,
                attempts=d.c.attempts + 1,
                lease_token=token,
                next_attempt_at=now + lease_seconds,
            )
            .returning(*d.c)
        )
        async with self.database.transaction() as conn:
            row = (await conn.execute(statement)).first()
            if row is None:
                return None
            event = (
                await conn.execute(
                    sa.select(webhook_events).where(webhook_events.c.id == row.event_id)
                )
            ).one()
        return Delivery(
            id=row.id,
            event_id=row.event_id,
            event_type=event.type,
            job_id=event.job_id,
            api_key_id=row.api_key_id,
            endpoint_id=row.endpoint_id,
            url=row.url,
            payload=event.payload,
            attempt=row.attempts,
            lease_token=token,
            deadline_at=row.deadline_at,
        )

    async def record_attempt(
        self, delivery: Delivery, result: AttemptResult, retry_at: float | None
    ) -> bool:
        """Log the attempt and settle the delivery: succeeded on a 2xx, else pending again at
        `retry_at`, or failed when that is None. False when the lease was lost meanwhile (the
        attempt is logged all the same)."""
        d = webhook_deliveries
        if result.ok:
            settle: dict[str, Any] = {
                "status": DeliveryStatus.SUCCEEDED,
                "finished_at": result.finished_at,
            }
        elif retry_at is None:
            settle = {"status": DeliveryStatus.FAILED, "finished_at": result.finished_at}
        else:
            settle = {"status": DeliveryStatus.PENDING, "next_attempt_at": retry_at}
        async with self.database.transaction() as conn:
            await conn.execute(
                self.database.insert_ignoring(webhook_attempts).values(
                    id="wha_" + secrets.token_hex(12),
                    delivery_id=delivery.id,
                    event_id=delivery.event_id,
                    event_type=delivery.event_type,
                    job_id=delivery.job_id,
                    api_key_id=delivery.api_key_id,
                    endpoint_id=delivery.endpoint_id,
                    url=delivery.url,
                    attempt=delivery.attempt,
                    status_code=result.status_code,
                    error=result.error,
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                )
            )
            changed = (
                await conn.execute(
                    d.update()
                    .where(
                        d.c.id == delivery.id,
                        d.c.lease_token == delivery.lease_token,
                        d.c.status == DeliveryStatus.SENDING,
                    )
                    .values(
                        **settle,
                        lease_token=None,
                        last_status_code=result.status_code,
                        last_error=result.error,
                    )
                )
            ).rowcount
        return bool(changed)

    async def next_due(self) -> float | None:
        """When the earliest unfinished delivery may be claimed, or None if there is none."""
        d = webhook_deliveries
        query = sa.select(sa.func.min(d.c.next_attempt_at)).where(
            d.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING])
        )
        row = await self.database.first(query)  # in the loop on SQLite: one index seek
        return None if row is None else row[0]

    # --- the log and housekeeping ------------------------------------------------------------
    async def attempts(self, api_key_id: str, limit: int = 50) -> list[Attempt]:
        """The key's delivery attempts, newest first."""
        a, d = webhook_attempts, webhook_deliveries
        query = (
            sa.select(a, d.c.status.label("delivery_status"))
            .join(d, d.c.id == a.c.delivery_id, isouter=True)
            .where(a.c.api_key_id == api_key_id)
            .order_by(a.c.started_at.desc(), a.c.attempt.desc(), a.c.id)
            .limit(limit)
        )
        async with self.database.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Attempt(
                **{
                    k: v
                    for k, v in r._mapping.items()
                    if k not in ("api_key_id", "delivery_status")
                },
                delivery_status=r.delivery_status or "unknown",
            )
            for r in rows
        ]

    async def prune(self, older_than: float) -> int:
        """Delete events created before `older_than`, with their deliveries and attempts."""
        ev = webhook_events
        old = sa.select(ev.c.id).where(ev.c.created_at < older_than)
        async with self.database.transaction() as conn:
            await conn.execute(
                webhook_attempts.delete().where(webhook_attempts.c.event_id.in_(old))
            )
            await conn.execute(
                webhook_deliveries.delete().where(webhook_deliveries.c.event_id.in_(old))
            )
            return (await conn.execute(ev.delete().where(ev.c.created_at < older_than))).rowcount


def _progress_key(job_id: sa.ColumnElement[str], progress: sa.ColumnElement[int]) -> Any:
    return job_id + sa.literal(":progress:") + sa.cast(progress, sa.String)
