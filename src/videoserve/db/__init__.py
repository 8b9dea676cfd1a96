"""The database layer: the one `Database` seam, its engine recipes and its drivers' fast paths.

Only this package knows which database is below (SQLite or PostgreSQL) and how it is reached:
`database` (`Database`: engines, transactions, locks, dialect switches, migrations per package),
`dialects` (engines, URLs, pragmas and session settings, LISTEN/NOTIFY), `sqlite` (SQLite's
in-loop reader and writer thread) and `postgres` (the status poll's reads on asyncpg). The
stores above it (`jobs/`, `webhooks/`) speak in statements and ask the `Database` for what
differs; two places there still name a dialect themselves: `jobs.schema`'s column variants and
`jobs.ledger.charge`'s one-statement charge on PostgreSQL. This package imports nothing of
videoserve but leaf modules (`errors`, `clock`, `settings`): tests/unit/test_import_walls.py.
"""
