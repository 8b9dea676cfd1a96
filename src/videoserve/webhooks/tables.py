"""Webhook tables; created by migration 2 (see videoserve.jobs.schema)."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from videoserve.jobs.schema import metadata  # noqa: F401  (tables are defined on this metadata)


def create_tables(conn: Connection) -> None:
    """Create the webhook tables (none yet)."""
