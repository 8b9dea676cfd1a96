"""Tables of the job database and the versioned migrations that create them.

Times are UNIX epoch seconds (floats) set by the application clock in one place
(`videoserve.jobs.clock`): SQLite has no sub-second `now()` before 3.42, and one clock keeps
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

from videoserve.jobs.database import Migrations

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
)

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

sa.Index("ix_credit_ledger_key", credit_ledger.c.api_key_id, credit_ledger.c.created_at)

_ADDED_AFTER_V1 = {"webhook_url", "cost", "failure", "ticket"}
_KEY_COLUMNS_AFTER_V1 = {"balance", "unlimited"}
_WORKER_COLUMNS_AFTER_V3 = {"ready", "loaded_models"}
_V1_INDEXES = {"ix_jobs_queue", "ix_jobs_expires", "ix_jobs_lease", "ix_jobs_key_created"}

sa.Index("ix_jobs_queue", jobs.c.status, jobs.c.created_at)
sa.Index("ix_jobs_expires", jobs.c.expires_at)
sa.Index("ix_jobs_lease", jobs.c.status, jobs.c.lease_expires_at)
sa.Index("ix_jobs_key_created", jobs.c.api_key_id, jobs.c.created_at)
sa.Index("ix_jobs_key_status", jobs.c.api_key_id, jobs.c.status)  # migration 4: the claim cap
sa.Index("ix_jobs_ticket", jobs.c.served_by, jobs.c.status, jobs.c.ticket)  # migration 5
sa.Index("ix_jobs_model_ticket", jobs.c.served_by, jobs.c.ticket)  # migration 8: next ticket
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
    from videoserve.jobs import tickets

    tickets.migrate(conn)


def _v7_worker_loads(conn: Connection) -> None:
    true = sa.true().compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    conn.execute(sa.text(f"ALTER TABLE workers ADD COLUMN ready BOOLEAN NOT NULL DEFAULT {true}"))
    conn.execute(sa.text("ALTER TABLE workers ADD COLUMN loaded_models JSON"))


def _v8_tickets_by_model(conn: Connection) -> None:
    from videoserve.jobs import tickets

    tickets.index_by_model(conn)


def _v9_request_webhook_index(conn: Connection) -> None:
    _create_jobs_indexes(conn, {"ix_jobs_request_webhook"})


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
    ),
    # Versions 1-4 are the shared counter's (the webhook tables of its version 2 moved out).
    from_legacy=lambda version: version,
)
