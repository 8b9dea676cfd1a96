"""Status polls of a queued job as the backlog grows: 50, 10,000 and 100,000 queued jobs.

A real `videoserve serve` with no worker, on SQLite and on PostgreSQL. At each size the queue
is filled up to one short of the size in bulk, through the store (`JobStore.enqueue_many`, the
same tickets a submit takes), then one job is submitted over HTTP: it is the last in the
queue (position = size), and wrk (or an httpx fallback) polls its status with 16 connections.
The rate and latency at each size are reported beside their ratio to the 50-job rate of the
same server in the same run: the goal is >= 0.80 behind 10,000 (issue 15). `--keys N`
spreads the backlog over N keys round-robin (fair share stamps each key's jobs its own tags;
issue 27 asks for the backlog on one key and over 100). `--baseline-ref` measures that
revision beside this checkout, each side's server and bulk fill running its own code.

    python -m bench.backlog [--sizes 50,10000,100000] [--seconds 5] [--rounds 3]
        [--databases sqlite,postgresql] [--keys 1] [--baseline-ref 544f4da]

Loopback only; bounded in time (each load run `--seconds`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench._servers import (
    CHECKOUT_SRC,
    baseline_source,
    code_env,
    create_key,
    free_port,
    start_videoserve,
    videoserve_env,
)
from bench.load import parse_wrk
from bench.queue import drop_pg, fresh_pg
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.records import Job
from videoserve.jobs.store import JobStore, NewJob
from videoserve.settings import Settings

MODEL = "tiny-t2v"
REPO = str(CHECKOUT_SRC.parent)  # for `bench` itself, beside a side's `src`
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
    side: str = "this checkout"
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


async def fill_here(url: str, like_id: str, count: int, keys: int, owners: list[str]) -> list[str]:
    """In the process of the code being measured (`--fill`): `count` more jobs like `like_id`,
    over `owners`, or over `like_id`'s key and `keys - 1` new ones when none are given.
    Returns the owners."""
    store = JobStore.open(Settings(database_url=url).resolved_database_url())
    await store.start()
    try:
        like = await store.get(like_id)
        assert like is not None
        if not owners:
            database = store.database
            owners = [like.api_key_id] + [
                (await KeyStore(database).create(f"backlog-{n}"))[0].id for n in range(keys - 1)
            ]
        await fill(store, like, count, owners)
    finally:
        await store.close()
    return owners


def fill_with(
    env: dict[str, str], like_id: str, count: int, keys: int, owners: list[str]
) -> list[str]:
    """`fill_here` run by the measured side's own code (its `PYTHONPATH` in `env`): the
    baseline's store writes the baseline's columns."""
    command = [sys.executable, "-m", "bench.backlog", "--fill", env["VIDEOSERVE_DATABASE_URL"]]
    command += [like_id, str(count), str(keys), ",".join(owners)]
    out = subprocess.run(
        command,
        env=env | {"PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[-1].split(",")


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
    src: Path | None = None,
    side: str = "this checkout",
) -> list[Polls]:
    env = videoserve_env(
        tmp / "data",
        VIDEOSERVE_DATABASE_URL=url,
        VIDEOSERVE_EMBEDDED_WORKER="false",
        **code_env(src),
    )
    key = create_key(env)
    port = free_port()
    server = start_videoserve(env, port, tmp / f"server-{database}.log")
    base = f"http://127.0.0.1:{port}"
    load = wrk if shutil.which("wrk") else httpx_load
    runs: list[Polls] = []
    try:
        queued = 1
        first = submit(base, key)
        owners: list[str] = []
        for size in sizes:
            owners = fill_with(env, first, size - queued - 1, keys, owners)
            job_id = submit(base, key)
            queued = size
            status_url = f"{base}/v2/requests/{job_id}/status"
            body = httpx.get(status_url, headers={"x-api-key": key}).json()
            load(status_url, key, 1, connections)  # warm-up
            rate, p50, p99 = load(status_url, key, seconds, connections)
            runs.append(Polls(database, size, int(body["queue_position"]), rate, p50, p99, side))
            print(json.dumps(asdict(runs[-1])), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return [
        Polls(**(asdict(run) | {"ratio_vs_first": round(run.polls_per_s / runs[0].polls_per_s, 3)}))
        for run in runs
    ]


def one_database(
    database: str, sizes: list[int], args: argparse.Namespace, src: Path | None, side: str
) -> list[Polls]:
    """One round on a fresh database: a new SQLite file, or a new PostgreSQL database."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        options = (sizes, args.seconds, args.connections, tmp, args.keys, src, side)
        if database == "sqlite":
            return measure(database, f"sqlite:///{tmp / 'backlog.db'}", *options)
        url, created = fresh_pg(args.pg)
        try:
            return measure(database, url, *options)
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
    parser.add_argument("--baseline-ref", default=None, help="git revision to measure beside")
    parser.add_argument("--fill", nargs=5, help=argparse.SUPPRESS)  # one side's bulk fill
    args = parser.parse_args()
    if args.fill:
        url, like_id, count, keys, owners = args.fill
        filled = fill_here(url, like_id, int(count), int(keys), [o for o in owners.split(",") if o])
        print(",".join(asyncio.run(filled)))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    report: list[Polls] = []
    with baseline_source(args.baseline_ref) as baseline:
        sides: list[tuple[str, Path | None]] = []
        if baseline is not None:
            sides.append((f"baseline ({args.baseline_ref})", baseline))
        sides.append(("this checkout", None))
        for _ in range(args.rounds):  # rounds alternate databases and sides: drifts hit all
            for database in args.databases.split(","):
                for side, src in sides:
                    report += one_database(database, sizes, args, src, side)
    print(f"medians over {args.rounds} round(s); ratio range in brackets")
    print(
        f"{'side':<22}{'database':<11}{'queued':>8}{'polls/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'vs first':>9}  range"
    )
    for side, _src in sides:
        for database in args.databases.split(","):
            for size in sizes:
                runs = [
                    r
                    for r in report
                    if r.database == database and r.queued == size and r.side == side
                ]
                ratios = [r.ratio_vs_first for r in runs]
                print(
                    f"{side:<22}{database:<11}{size:>8}"
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
