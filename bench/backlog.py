"""Status polls of a queued job as the backlog grows: 50, 10,000 and 100,000 queued jobs.

A real `videoserve serve` with no worker, on SQLite and on PostgreSQL. At each size the queue
is filled up to one short of the size in bulk, through the store (`JobStore.enqueue_many`, the
same tickets a submit takes), then one job is submitted over HTTP: it is the last in the
queue (position = size), and wrk (or an httpx fallback) polls its status with 16 connections.
The rate and latency at each size are reported beside their ratio to the 50-job rate of the
same server in the same run: the goal is >= 0.80 behind 10,000 (issue 15). `--keys N`
spreads the backlog over N keys round-robin (fair share stamps each key's jobs its own tags;
issue 27 asks for the backlog on one key and over 100).

    python -m bench.backlog [--sizes 50,10000,100000] [--seconds 5] [--rounds 3]
        [--databases sqlite,postgresql] [--keys 1]

Loopback only; bounded in time (each load run `--seconds`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench._servers import create_key, free_port, start_videoserve, videoserve_env
from bench.load import parse_wrk
from bench.queue import drop_pg, fresh_pg
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.records import Job
from videoserve.jobs.store import JobStore, NewJob
from videoserve.settings import Settings

MODEL = "tiny-t2v"
BATCH = 5_000  # jobs per enqueue_many transaction


@dataclass(frozen=True)
class Polls:
    """One load run against one job's status URL."""

    database: str
    queued: int
    position: int
    polls_per_s: float
    p50_ms: float
    p99_ms: float
    ratio_vs_first: float = 1.0


def wrk(url: str, key: str, seconds: float, connections: int) -> tuple[float, float, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--latency"]
    command += ["-H", f"x-api-key: {key}", url]
    result = parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    if result["errors"]:
        raise RuntimeError(f"errors under load: {result['error_kinds']}")
    return result["requests_per_s"], result["p50_ms"], result["p99_ms"]


def httpx_load(url: str, key: str, seconds: float, connections: int) -> tuple[float, float, float]:
    """The fallback where wrk is not installed: `connections` pollers on one event loop
    (the client's own cost counts too, so its figures are lower than wrk's)."""

    async def run() -> list[float]:
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def poller(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline:
                begun = time.perf_counter()
                (await client.get(url)).raise_for_status()
                latencies.append((time.perf_counter() - begun) * 1000)

        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(headers={"x-api-key": key}, limits=limits) as client:
            await asyncio.gather(*(poller(client) for _ in range(connections)))
        return latencies

    latencies = sorted(asyncio.run(run()))
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return len(latencies) / seconds, statistics.median(latencies), p99


async def fill(store: JobStore, like: Job, count: int, keys: list[str]) -> None:
    """Queue `count` more jobs of `like`'s model, in bulk through the store, over `keys`
    round-robin."""
    n = 0
    while count > 0:
        batch = [
            NewJob(
                id="video_" + secrets.token_hex(16),
                api_key_id=keys[(n := n + 1) % len(keys)],
                model=like.model,
                served_by=like.served_by,
                params={"prompt": "backlog", "duration": 4},
                max_attempts=3,
            )
            for _ in range(min(count, BATCH))
        ]
        count -= await store.enqueue_many(batch)


def submit(base: str, key: str) -> str:
    answer = httpx.post(
        f"{base}/v2/{MODEL}", json={"prompt": "poll me"}, headers={"x-api-key": key}
    )
    answer.raise_for_status()
    return str(answer.json()["request_id"])


def measure(
    database: str,
    url: str,
    sizes: list[int],
    seconds: float,
    connections: int,
    tmp: Path,
    keys: int = 1,
) -> list[Polls]:
    env = videoserve_env(
        tmp / "data", VIDEOSERVE_DATABASE_URL=url, VIDEOSERVE_EMBEDDED_WORKER="false"
    )
    key = create_key(env)
    port = free_port()
    server = start_videoserve(env, port, tmp / f"server-{database}.log")
    base = f"http://127.0.0.1:{port}"
    load = wrk if shutil.which("wrk") else httpx_load
    loop = asyncio.new_event_loop()
    store = JobStore.open(Settings(database_url=url).resolved_database_url())
    loop.run_until_complete(store.start())
    runs: list[Polls] = []
    try:
        queued = 1
        first = loop.run_until_complete(store.get(submit(base, key)))
        assert first is not None
        owners = [first.api_key_id] + [
            loop.run_until_complete(KeyStore(store.database).create(f"backlog-{n}"))[0].id
            for n in range(keys - 1)
        ]
        for size in sizes:
            loop.run_until_complete(fill(store, first, size - queued - 1, owners))
            job_id = submit(base, key)
            queued = size
            status_url = f"{base}/v2/requests/{job_id}/status"
            body = httpx.get(status_url, headers={"x-api-key": key}).json()
            load(status_url, key, 1, connections)  # warm-up
            rate, p50, p99 = load(status_url, key, seconds, connections)
            runs.append(Polls(database, size, int(body["queue_position"]), rate, p50, p99))
            print(json.dumps(asdict(runs[-1])), flush=True)
    finally:
        loop.run_until_complete(store.close())
        loop.close()
        server.terminate()
        server.wait(timeout=30)
    return [
        Polls(**(asdict(run) | {"ratio_vs_first": round(run.polls_per_s / runs[0].polls_per_s, 3)}))
        for run in runs
    ]


def one_database(database: str, sizes: list[int], args: argparse.Namespace) -> list[Polls]:
    """One round on a fresh database: a new SQLite file, or a new PostgreSQL database."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if database == "sqlite":
            url = f"sqlite:///{tmp / 'backlog.db'}"
            return measure(database, url, sizes, args.seconds, args.connections, tmp, args.keys)
        url, created = fresh_pg(args.pg)
        try:
            return measure(database, url, sizes, args.seconds, args.connections, tmp, args.keys)
        finally:
            drop_pg(args.pg, created)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,10000,100000")
    parser.add_argument("--seconds", type=float, default=5.0, help="each load run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="fresh databases per dialect")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keys", type=int, default=1, help="keys the backlog is spread over")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    report: list[Polls] = []
    for _ in range(args.rounds):  # rounds alternate the databases, so load drifts hit both
        for database in args.databases.split(","):
            report += one_database(database, sizes, args)
    print(f"medians over {args.rounds} round(s); ratio range in brackets")
    print(
        f"{'database':<11}{'queued':>8}{'polls/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'vs first':>9}"
        "  range"
    )
    for database in args.databases.split(","):
        for size in sizes:
            runs = [r for r in report if r.database == database and r.queued == size]
            ratios = [r.ratio_vs_first for r in runs]
            print(
                f"{database:<11}{size:>8}"
                f"{statistics.median(r.polls_per_s for r in runs):>9.0f}"
                f"{statistics.median(r.p50_ms for r in runs):>8.2f}"
                f"{statistics.median(r.p99_ms for r in runs):>8.2f}"
                f"{statistics.median(ratios):>9.2f}  [{min(ratios):.2f}-{max(ratios):.2f}]"
            )
    print(
        json.dumps(
            {
                "load": "wrk" if shutil.which("wrk") else "httpx",
                "connections": args.connections,
                "seconds": args.seconds,
                "runs": [asdict(run) for run in report],
            }
        )
    )


if __name__ == "__main__":
    main()
