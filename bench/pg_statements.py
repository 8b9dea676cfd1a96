"""PostgreSQL through `Database`, in process: a write transaction, a single-statement read,
and both at once from many tasks.

Why: how PostgreSQL's connections are pooled (the engine's own pool for transactions beside
the asyncpg pool for single statements, or one pool the engine borrows from, tried and
reverted: docs/benchmarks.md) moves what a transaction and a single statement cost this
process and a mixed load's rate; this measures them side by side with `--baseline-ref`. Each
side runs in its own process, alternating, `--rounds` times; each figure is the best of five
runs in that process.

    python -m bench.pg_statements --baseline-ref 9e152f6 [--ops 400 --rounds 3]
A transaction is an UPDATE and a SELECT of one row (`run_transaction`); a read is one SELECT
by primary key (`Database.first`); the mix is 32 tasks, half transactions, half reads, on a
pool of 20.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._servers import baseline_source, code_env
from bench.queue import drop_pg, fresh_pg

CHILD = r"""
import asyncio, json, sys, time
import sqlalchemy as sa
from videoserve.db.database import Database
from videoserve.settings import Settings

url, ops = Settings(database_url=sys.argv[1]).resolved_database_url(), int(sys.argv[2])
meta = sa.MetaData()
rows = sa.Table("bench_rows", meta, sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("n", sa.Integer))
BUMP = rows.update().where(rows.c.id == sa.bindparam("k")).values(n=rows.c.n + 1)
READ = sa.select(rows.c.n).where(rows.c.id == sa.bindparam("k"))

def work(conn):
    conn.execute(BUMP, {"k": 1})
    return conn.execute(READ, {"k": 1}).scalar_one()

async def best_cpu(run, count):
    best = float("inf")
    for _ in range(5):
        begun = time.process_time()
        for _ in range(count):
            await run()
        best = min(best, (time.process_time() - begun) / count * 1e6)
    return best

async def main():
    db = Database(url, pool_size=20)
    async with db.transaction() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(rows.insert(), [{"id": i, "n": 0} for i in range(1, 33)])
    transaction = lambda: db.run_transaction(work)
    read = lambda: db.first(READ, {"k": 1})
    for _ in range(50):
        await transaction()
        await read()
    out = {"transaction_us": await best_cpu(transaction, ops),
           "read_us": await best_cpu(read, ops)}

    def bump(k):
        def step(conn):
            conn.execute(BUMP, {"k": k})
            return conn.execute(READ, {"k": k}).scalar_one()
        return step

    async def task(i, count):
        for _ in range(count):
            if i % 2:
                await db.run_transaction(bump(i + 1))
            else:
                await db.first(READ, {"k": i + 1})

    best = 0.0
    for _ in range(5):
        begun = time.perf_counter()
        await asyncio.gather(*(task(i, ops // 8) for i in range(32)))
        best = max(best, 32 * (ops // 8) / (time.perf_counter() - begun))
    out["mixed_per_s"] = best
    await db.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def measure(src: Path | None, admin_url: str, ops: int) -> dict[str, float]:
    """One side's figures, in a process of its own, on a fresh database dropped after."""
    url, name = fresh_pg(admin_url)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, url, str(ops)],
            env=os.environ | code_env(src),
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        drop_pg(admin_url, name)
    if done.returncode != 0:
        raise SystemExit(f"a side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="an admin URL"
    )
    parser.add_argument("--ops", type=int, default=400, help="operations per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating processes per side")
    parser.add_argument("--baseline-ref", default=None, help="git revision to measure beside")
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{platform.node()}, {os.cpu_count()} CPUs, {when}")
    with baseline_source(args.baseline_ref) as base:
        sides: dict[str, list[dict[str, float]]] = {"now": []}
        if base is not None:
            sides["baseline"] = []
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                src = base if side == "baseline" else None
                sides[side].append(measure(src, args.pg, args.ops))
                print(side, json.dumps({k: round(v, 1) for k, v in sides[side][-1].items()}))
    for side, runs in sides.items():
        medians = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        print(
            f"{side}: transaction {medians['transaction_us']:.0f} us CPU, "
            f"read {medians['read_us']:.0f} us CPU, mixed {medians['mixed_per_s']:.0f} ops/s"
        )


if __name__ == "__main__":
    main()
