"""Tables of the job database and the versioned migrations that create them.

Times are UNIX epoch seconds (floats) set by the application clock in one place
(`videoserve.clock`): SQLite has no sub-second `now()` before 3.42, and one clock keeps
both dialects identical. Hosts are expected to run NTP; leases are tens of seconds long.

Why our own migration runner rather than Alembic: every API and worker process runs the
migrations at start-up, possibly several at once on one database, so the runner must take a
database lock first (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), and the
migrations ship inside the package. That is `database.Database.migrate`, not a second
configuration tree. Each package lists its own tables' migrations (this module: "jobs").
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from videoserve.db.database import Migrations
from videoserve.jobs.states import Status

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # public id, e.g. key_1a2b...
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex of the key
    sa.Column("prefix", sa.String(16), nullable=False),  # first characters, to recognise a key
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    # Added by migration 4. The cached sum of the key's ledger rows, changed only by SQL in the
    # transaction that writes the row; it may go negative on an unlimited key or by adjustment.
    sa.Column("balance", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("unlimited", sa.Boolean, nullable=False, server_default=sa.true()),  # never refused
    # Migration 13, scheduling (see `fairness`): the key's weight in fair share, the highest
    # priority class it may ask for, its own cap on PROCESSING jobs (NULL: the server's), and
    # the virtual finish time of its latest queued job.
    sa.Column("share", sa.Float, nullable=False, server_default=sa.text("1")),
    sa.Column("max_priority", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("max_running", sa.Integer, nullable=True),
    sa.Column("finish_tag", sa.Float, nullable=False, server_default=sa.text("0")),
)

LIVE_COLUMNS = ("phase", "step", "steps", "preview_step")  # migration 10

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # request_id, one id for every dialect
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),  # the public name the client asked for
    sa.Column("served_by", sa.String(200), nullable=False),  # the model that runs it
    sa.Column("params", sa.JSON, nullable=False),  # validated parameters
    sa.Column("input_key", sa.String(400), nullable=True),  # blob key of the reference image
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, default=0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),  # claims so far
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("worker_id", sa.String(200), nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),  # first claim
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),  # set when terminal: finished + retention
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),  # video facts and metrics, see worker
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("webhook_url", sa.Text, nullable=True),  # added by migration 2
    sa.Column("cost", sa.Float, nullable=True),  # credits charged at submit (migration 4)
    # A FailureCode value beside `error` once FAILED (migration 5); NULL for older rows.
    sa.Column("failure", sa.String(32), nullable=True),
    # Place in its model's queue (migration 5; see `tickets`); NULL for a job never queued.
    sa.Column("ticket", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=True),
    # What a PROCESSING job is doing (`phases.Phase`), its denoising step of steps, and the
    # step of its latest preview image (migration 10); NULL before its worker says.
    sa.Column("phase", sa.String(16), nullable=True),
    sa.Column("step", sa.Integer, nullable=True),
    sa.Column("steps", sa.Integer, nullable=True),
    sa.Column("preview_step", sa.Integer, nullable=True),
    # When a still-QUEUED job expires (migration 11; `X-Start-Timeout`); NULL: never.
    sa.Column("start_deadline", sa.Float, nullable=True),
    # Migration 12: the id of the video a remix repeats; REMIX_SOURCE_UNREAD on rows made
    # before it, until the job service reads their marker blob once (`jobs/remixes.py`).
    sa.Column("remixed_from", sa.String(64), nullable=True),
    # Migration 13 (see `fairness`): the priority class (0 low, 1 normal, 2 high), the virtual
    # start time the claim orders by within a class, and the GPU-seconds it was expected to
    # take when stamped (the key's finish tag is corrected by the difference when it ends).
    sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("start_tag", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("expected_seconds", sa.Float, nullable=True),
    # Seconds the job may run, below its model's limit (migration 14; `X-Execution-Timeout`);
    # NULL: the model's limit.
    sa.Column("execution_timeout", sa.Float, nullable=True),
    # An edit's or extension's duration as delivered (migration 15), so that views read no
    # manifest blob; NULL: its `duration` parameter's, or a row made before it.
    sa.Column("delivered_seconds", sa.Float, nullable=True),
    sa.UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_idempotency"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),  # host:pid
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("models", sa.JSON, nullable=False),  # the models it serves
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("current_jobs", sa.JSON, nullable=False),  # ids of the jobs it runs now
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    sa.Column("draining", sa.Boolean, nullable=False, default=False),
    # Migration 7: cold start. False while the worker loads its models; what it loaded, when.
    sa.Column("ready", sa.Boolean, nullable=False, default=True),
    sa.Column("loaded_models", sa.JSON, nullable=True),  # [{model, load_seconds, ...}]
)

credit_ledger = sa.Table(
    "credit_ledger",
    metadata,
    # BIGINT on PostgreSQL; SQLite auto-increments only a column declared exactly INTEGER.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=True),  # NULL for grants
    sa.Column("kind", sa.String(16), nullable=False),  # grant | charge | refund
    sa.Column("amount", sa.Float, nullable=False),  # signed: a charge is negative
    sa.Column("note", sa.Text, nullable=True),  # "8 s x 1 credit/s", the failure refunded...
    sa.Column("created_at", sa.Float, nullable=False),
    # At most one charge and one refund per job, whatever races; NULLs (grants) never collide.
    sa.UniqueConstraint("job_id", "kind", name="uq_credit_ledger_job_kind"),
)
# Migration 5: each model's last queue ticket, for PostgreSQL's inserts (see `tickets`).
job_queues = sa.Table(
    "job_queues",
    metadata,
    sa.Column("served_by", sa.String(200), primary_key=True),
    sa.Column("last_ticket", sa.BigInteger, nullable=False),
)

# Migration 13: the fair-share virtual time, one row (id 1); see `fairness`.
fair_clock = sa.Table(
    "fair_clock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("virtual_time", sa.Float, nullable=False),
)

sa.Index("ix_credit_ledger_key", credit_ledger.c.api_key_id, credit_ledger.c.created_at)

_SCHEDULING_COLUMNS = {"priority", "start_tag", "expected_seconds"}  # migration 13
_KEY_SCHEDULING_COLUMNS = {"share", "max_priority", "max_running", "finish_tag"}
_ADDED_AFTER_V1 = {
    "webhook_url",
    "cost",
    "failure",
    "ticket",
    *LIVE_COLUMNS,
    "start_deadline",
    "remixed_from",
    *_SCHEDULING_COLUMNS,
    "execution_timeout",
    "delivered_seconds",
}
# Migration 12's mark on the rows made before it: whether they are remixes, and of what, is
# in a marker blob the database cannot read (`JobService.settle_remix_sources` reads it once).
REMIX_SOURCE_UNREAD = "?"
_KEY_COLUMNS_AFTER_V1 = {"balance", "unlimited", *_KEY_SCHEDULING_COLUMNS}
_WORKER_COLUMNS_AFTER_V3 = {"ready", "loaded_models"}
_V1_INDEXES = {"ix_jobs_queue", "ix_jobs_expires", "ix_jobs_lease", "ix_jobs_key_created"}

sa.Index("ix_jobs_queue", jobs.c.status, jobs.c.created_at)
sa.Index("ix_jobs_expires", jobs.c.expires_at)
sa.Index("ix_jobs_lease", jobs.c.status, jobs.c.lease_expires_at)
sa.Index("ix_jobs_key_created", jobs.c.api_key_id, jobs.c.created_at)
sa.Index("ix_jobs_key_status", jobs.c.api_key_id, jobs.c.status)  # migration 4: the claim cap
sa.Index("ix_jobs_ticket", jobs.c.served_by, jobs.c.status, jobs.c.ticket)  # migration 5
sa.Index("ix_jobs_model_ticket", jobs.c.served_by, jobs.c.ticket)  # migration 8: next ticket
# Migration 11: the expiry's walk to the next start deadline. Status first, so that SQLite,
# without statistics, prefers it to ix_jobs_queue (which would scan every queued job); partial,
# so that the many jobs without a deadline cost it nothing.
sa.Index(
    "ix_jobs_start_deadline",
    jobs.c.status,
    jobs.c.start_deadline,
    sqlite_where=jobs.c.start_deadline.is_not(None),
    postgresql_where=jobs.c.start_deadline.is_not(None),
)
# Migration 13: the claim's order (see `statements`): priority class, highest first, then the
# virtual start tag, then age. Status first, as the claim walks QUEUED rows only.
sa.Index(
    "ix_jobs_claim_order",
    jobs.c.status,
    jobs.c.priority.desc(),
    jobs.c.start_tag,
    jobs.c.created_at,
    jobs.c.id,
)
# Migration 9: finished jobs with their own webhook URL (the webhook dispatcher's per-request
# targets), so that finding those awaiting an event does not walk every finished job.
sa.Index(
    "ix_jobs_request_webhook",
    jobs.c.status,
    jobs.c.finished_at,
    sqlite_where=jobs.c.webhook_url.is_not(None),
    postgresql_where=jobs.c.webhook_url.is_not(None),
)


def _v2_webhook_url(conn: Connection) -> None:
    # The webhook tables themselves are the webhooks package's own migrations.
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN webhook_url TEXT"))


def _v3_workers(conn: Connection) -> None:
    # The table as version 3 had it: later columns arrive through their own migrations.
    sa.Table(
        "workers",
        sa.MetaData(),
        *(c.copy() for c in workers.columns if c.name not in _WORKER_COLUMNS_AFTER_V3),
    ).create(conn, checkfirst=True)


def _v4_credits(conn: Connection) -> None:
    # Existing keys become unlimited with a zero balance: nothing they did before is billed.
    true = sa.true().compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    conn.execute(
        sa.text("ALTER TABLE api_keys ADD COLUMN balance DOUBLE PRECISION NOT NULL DEFAULT 0")
    )
    conn.execute(
        sa.text(f"ALTER TABLE api_keys ADD COLUMN unlimited BOOLEAN NOT NULL DEFAULT {true}")
    )
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN cost DOUBLE PRECISION"))
    credit_ledger.create(conn, checkfirst=True)
    _create_jobs_indexes(conn, {"ix_jobs_key_status"})


def _v5_failure_codes(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN failure VARCHAR(32)"))


def _v6_queue_tickets(conn: Connection) -> None:
    """Queue tickets (`jobs/tickets.py`): the ticket column and its index, the PostgreSQL
    counters, and tickets for the jobs queued now (in claim order)."""
    column_type = jobs.c.ticket.type.compile(dialect=conn.dialect)  # BIGINT, or SQLite's INTEGER
    conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN ticket {column_type}"))
    _create_jobs_indexes(conn, {"ix_jobs_ticket"})
    job_queues.create(conn, checkfirst=True)
    conn.execute(
        sa.text(
            "UPDATE jobs SET ticket = ranked.n FROM (SELECT id, row_number() OVER ("
            "PARTITION BY served_by ORDER BY created_at, id) AS n FROM jobs "
            "WHERE status = :queued) AS ranked WHERE jobs.id = ranked.id"
        ),
        {"queued": Status.QUEUED.value},
    )
    conn.execute(
        sa.text(
            "INSERT INTO job_queues (served_by, last_ticket) SELECT served_by, max(ticket) "
            "FROM jobs WHERE ticket IS NOT NULL GROUP BY served_by"
        )
    )


def _v7_worker_loads(conn: Connection) -> None:
    true = sa.true().compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    conn.execute(sa.text(f"ALTER TABLE workers ADD COLUMN ready BOOLEAN NOT NULL DEFAULT {true}"))
    conn.execute(sa.text("ALTER TABLE workers ADD COLUMN loaded_models JSON"))


def _v8_tickets_by_model(conn: Connection) -> None:
    """An index of (served_by, ticket), so a model's highest ticket (SQLite's next ticket at
    every submit, and a requeue's fallback) is one seek, not a walk over every status of the
    model's jobs (10 ms a submit behind 100,000 on SQLite)."""
    _create_jobs_indexes(conn, {"ix_jobs_model_ticket"})


def _v9_request_webhook_index(conn: Connection) -> None:
    _create_jobs_indexes(conn, {"ix_jobs_request_webhook"})


def _v10_live_phase(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN phase VARCHAR(16)"))
    for name in ("step", "steps", "preview_step"):
        conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {name} INTEGER"))


def _v11_start_deadline(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN start_deadline DOUBLE PRECISION"))
    _create_jobs_indexes(conn, {"ix_jobs_start_deadline"})


def _v12_remix_source(conn: Connection) -> None:
    """The remix source as a column, so that listing reads no blob per video. Existing rows
    are marked unread: their source, if any, is in `jobs/<id>/remix.json`."""
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN remixed_from VARCHAR(64)"))
    conn.execute(sa.text("UPDATE jobs SET remixed_from = :unread"), {"unread": REMIX_SOURCE_UNREAD})


def _v13_scheduling(conn: Connection) -> None:
    """Fair share and priorities: key and job columns, the one-row virtual clock, and the
    claim's index. Queued jobs keep their order: normal priority, start tag 0, by age."""
    for name in ("share", "max_priority", "finish_tag"):
        column = api_keys.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = column.server_default.arg.text  # type: ignore[union-attr]
        conn.execute(
            sa.text(f"ALTER TABLE api_keys ADD COLUMN {name} {kind} NOT NULL DEFAULT {default}")
        )
    conn.execute(sa.text("ALTER TABLE api_keys ADD COLUMN max_running INTEGER"))
    for name in ("priority", "start_tag"):
        column = jobs.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = column.server_default.arg.text  # type: ignore[union-attr]
        conn.execute(
            sa.text(f"ALTER TABLE jobs ADD COLUMN {name} {kind} NOT NULL DEFAULT {default}")
        )
    kind = jobs.c.expected_seconds.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN expected_seconds {kind}"))
    fair_clock.create(conn, checkfirst=True)
    conn.execute(fair_clock.insert().values(id=1, virtual_time=0.0))
    _create_jobs_indexes(conn, {"ix_jobs_claim_order"})


def _v14_execution_timeout(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN execution_timeout DOUBLE PRECISION"))


def _v15_delivered_seconds(conn: Connection) -> None:
    """An edit's or extension's delivered duration as a column: listing read one manifest blob
    per such video for it. Older rows keep NULL and their views read the manifest."""
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN delivered_seconds DOUBLE PRECISION"))


def _create_jobs_indexes(conn: Connection, names: set[str]) -> None:
    """The jobs table's indexes of these names, as declared above (skipping any that exist)."""
    for index in jobs.indexes:
        if index.name in names:
            index.create(conn, checkfirst=True)


def _v1_initial(conn: Connection) -> None:
    # The tables as version 1 had them: later columns arrive through their own migrations.
    sa.Table(
        "api_keys",
        sa.MetaData(),
        *(c.copy() for c in api_keys.columns if c.name not in _KEY_COLUMNS_AFTER_V1),
    ).create(conn, checkfirst=True)
    v1_jobs = sa.Table(
        "jobs",
        sa.MetaData(),
        *(c.copy() for c in jobs.columns if c.name not in _ADDED_AFTER_V1),
        sa.UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_idempotency"),
    )
    v1_jobs.create(conn, checkfirst=True)
    _create_jobs_indexes(conn, _V1_INDEXES)


# Append only: a released migration never changes; a new schema is a new entry.
MIGRATIONS = Migrations(
    "jobs",
    (
        (1, _v1_initial),
        (2, _v2_webhook_url),
        (3, _v3_workers),
        (4, _v4_credits),
        (5, _v5_failure_codes),
        (6, _v6_queue_tickets),
        (7, _v7_worker_loads),
        (8, _v8_tickets_by_model),
        (9, _v9_request_webhook_index),
        (10, _v10_live_phase),
        (11, _v11_start_deadline),
        (12, _v12_remix_source),
        (13, _v13_scheduling),
        (14, _v14_execution_timeout),
        (15, _v15_delivered_seconds),
    ),
    # Versions 1-4 are the shared counter's (the webhook tables of its version 2 moved out).
    from_legacy=lambda version: version,
)
