"""Webhook tables and their migrations (`MIGRATIONS`, the "webhooks" package's list).

Every step of a delivery is a row, so a restart loses nothing and any API process may carry on
what another began:

- `webhook_secrets`: one Standard Webhooks signing secret per API key.
- `webhook_endpoints`: per-key subscriptions (URL and event types).
- `webhook_events`: what happened, with the exact body every attempt sends. `dedupe_key`
  (`<job>:final`, `<job>:progress:<n>`) makes emission idempotent across dispatchers.
- `webhook_deliveries`: one per (event, target), where the target is an endpoint id or
  `request` (the job's own `?webhook=` URL). A queue row: claimed with a lease, retried with
  backoff until `deadline_at`.
- `webhook_attempts`: the log of every HTTP attempt, for `GET /v1/webhooks/deliveries`.

No foreign keys: rows are pruned in order by the dispatcher, and SQLite would not enforce them
without a per-connection pragma anyway. Like every released migration, the shape created here
is version 1's (the shared counter's version 2, before migrations were per package); a later
change is a new migration, not an edit of these tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from videoserve.db.database import Migrations
from videoserve.jobs.schema import metadata

webhook_secrets = sa.Table(
    "webhook_secrets",
    metadata,
    sa.Column("api_key_id", sa.String(40), primary_key=True),
    sa.Column("secret", sa.String(100), nullable=False),  # whsec_<base64>
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("rotated_at", sa.Float, nullable=True),
)

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # whep_...
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", sa.JSON, nullable=False),  # subscribed event types
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("ix_webhook_endpoints_key", webhook_endpoints.c.api_key_id, webhook_endpoints.c.created_at)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # evt_..., sent as webhook-id
    sa.Column("dedupe_key", sa.String(120), nullable=False),
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),  # video.completed, video.failed, ...
    sa.Column("payload", sa.Text, nullable=False),  # the JSON body, byte for byte
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("dedupe_key", name="uq_webhook_events_dedupe"),
)
sa.Index("ix_webhook_events_job", webhook_events.c.job_id, webhook_events.c.type)
sa.Index("ix_webhook_events_created", webhook_events.c.created_at)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # whd_...
    sa.Column("event_id", sa.String(40), nullable=False),
    sa.Column("target", sa.String(40), nullable=False),  # endpoint id, or "request"
    sa.Column("endpoint_id", sa.String(40), nullable=True),
    sa.Column("api_key_id", sa.String(40), nullable=False),  # whose secret signs it
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # see webhooks.records.DeliveryStatus
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # When it may next be claimed: the retry time while pending, the lease expiry while sending.
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_token", sa.String(32), nullable=True),
    sa.Column("deadline_at", sa.Float, nullable=False),  # no retry is scheduled after this
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.UniqueConstraint("event_id", "target", name="uq_webhook_deliveries_target"),
)
sa.Index(
    "ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # wha_...
    sa.Column("delivery_id", sa.String(40), nullable=False),
    sa.Column("event_id", sa.String(40), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("endpoint_id", sa.String(40), nullable=True),  # None: the per-request URL
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),  # 1 for the first try
    sa.Column("status_code", sa.Integer, nullable=True),  # None: no HTTP answer, see error
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=False),
    sa.UniqueConstraint("delivery_id", "attempt", name="uq_webhook_attempts_number"),
)
sa.Index("ix_webhook_attempts_key", webhook_attempts.c.api_key_id, webhook_attempts.c.started_at)
sa.Index("ix_webhook_attempts_event", webhook_attempts.c.event_id)

TABLES = (webhook_secrets, webhook_endpoints, webhook_events, webhook_deliveries, webhook_attempts)


def create_tables(conn: Connection) -> None:
    """Create the webhook tables and their indexes (skipping any that exist)."""
    for table in TABLES:
        table.create(conn, checkfirst=True)


MIGRATIONS = Migrations(
    "webhooks",
    ((1, create_tables),),
    # The shared counter's version 2 created these tables.
    from_legacy=lambda version: 1 if version >= 2 else 0,
)
