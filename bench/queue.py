"""Store-level queue throughput: submit, claim and complete jobs with no model, on SQLite and
on PostgreSQL, with 1, 4 and 16 concurrent workers.

Each worker is an asyncio task on its own connection from the pool, looping over: submit one
job, claim the oldest queued job (the real claim statement), complete it (the real fenced
update). Throughput is completed jobs per second of wall time.

    python -m bench.queue --jobs 2000 [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path

from videoserve.jobs.records import JobResult
from videoserve.jobs.store import JobStore, NewJob
from videoserve.settings import Settings

# What a finished job stores; the bench measures the queue, not the video.
RESULT = JobResult("x", "x.jpg", "tiny-t2v", 64, 64, 8.0, 17, 2.125)


async def run(url: str, jobs: int, workers: int) -> float:
    store = JobStore.open(Settings(database_url=url).resolved_database_url())
    await store.start()
    done = 0

    async def worker(name: str, quota: int) -> None:
        nonlocal done
        for _ in range(quota):
            await store.create(
                NewJob(
                    id="video_" + secrets.token_hex(16),
                    api_key_id="bench",
                    model="m",
                    served_by="m",
                    params={"prompt": "bench", "duration": 4},
                    max_attempts=3,
                )
            )
            claimed = await store.claim(name, ["m"], lease_seconds=30)
            if claimed is not None:
                _, lease = claimed
                if await store.complete(lease, RESULT, retention_seconds=3600):
                    done += 1
        # Drain whatever another worker submitted but this one's claims missed.
        while (claimed := await store.claim(name, ["m"], lease_seconds=30)) is not None:
            if await store.complete(claimed[1], RESULT, retention_seconds=3600):
                done += 1

    begun = time.perf_counter()
    await asyncio.gather(*(worker(f"w{i}", jobs // workers) for i in range(workers)))
    elapsed = time.perf_counter() - begun
    await store.close()
    assert done == (jobs // workers) * workers, (done, jobs)
    return done / elapsed


def fresh_pg(admin_url: str) -> tuple[str, str]:
    import asyncpg

    name = "vs_bench_" + secrets.token_hex(4)

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    return admin_url.rsplit("/", 1)[0] + "/" + name, name


def drop_pg(admin_url: str, name: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", default="1,4,16")
    args = parser.parse_args()
    report: dict[str, dict[str, float]] = {"sqlite": {}, "postgresql": {}}
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            report["sqlite"][str(workers)] = round(asyncio.run(run(url, args.jobs, workers)), 1)
        url, name = fresh_pg(args.pg)
        try:
            report["postgresql"][str(workers)] = round(asyncio.run(run(url, args.jobs, workers)), 1)
        finally:
            drop_pg(args.pg, name)
    print(json.dumps({"jobs_per_second": report, "jobs": args.jobs}, indent=2))


if __name__ == "__main__":
    main()
