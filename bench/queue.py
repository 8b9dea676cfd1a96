"""Queue throughput on SQLite and on PostgreSQL: the store alone, and submits over HTTP.

Store-level: submit, claim and complete jobs with no model, with 1, 4 and 16 concurrent
workers. Each worker is an asyncio task on its own connection from the pool, looping over:
submit one job, claim the oldest queued job (the real claim statement), complete it (the real
fenced update). Throughput is completed jobs per second of wall time.

HTTP submits (`--http-clients 32`): wrk's connections each POST /v2/tiny-t2v in a loop
against a `videoserve serve` with no worker (the queue grows, as in a burst), with an
unlimited key (charged like every key, so each submit runs the charge transaction).
With `--baseline-ref main` the same run first measures that git revision's code, so the two
figures come from one run on one machine.

    python -m bench.queue --jobs 2000 [--pg postgresql://postgres@127.0.0.1:5432/test]
    python -m bench.queue --skip-store --http-seconds 10 --baseline-ref main
    python -m bench.queue --skip-store --server-env VIDEOSERVE_SCHEDULING_POLICY=fifo ...
    python -m bench.queue --skip-store --http-clients 0 --store-submits --jobs 1500 \
        --baseline-ref main   # charged submits of the store alone (no HTTP), 32 tasks
Loopback only; bounded in count and time. Needs wrk for the HTTP part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._servers import (
    baseline_source,
    code_env,
    cpu_seconds,
    create_key,
    free_port,
    start_videoserve,
    videoserve_env,
)
from videoserve.jobs import ledger
from videoserve.jobs.keys import KeyStore
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


async def charged_submits(url: str, clients: int, jobs: int, spread: str = "none") -> float:
    """Charged submits/s of the store alone (`JobStore.create`, no HTTP): `clients` tasks
    submitting for one unlimited key (charged like every key) and one model; with `spread`
    "keys" each task has its own key, with "keys+models" its own key and model (so no two
    share the key's row or the model's ticket counter row)."""
    store = JobStore.open(Settings(database_url=url).resolved_database_url())
    await store.start()
    owners = [(await KeyStore(store.database).create(f"bench {i}"))[0].id for i in range(clients)]
    price = ledger.Charge(seconds=4, price_per_second=1)
    quota = jobs // clients

    async def client(i: int) -> None:
        key_id = owners[i] if spread in ("keys", "keys+models") else owners[0]
        model = f"model-{i}" if spread == "keys+models" else "tiny-t2v"
        for _ in range(quota):
            await store.create(
                NewJob(
                    id="video_" + secrets.token_hex(16),
                    api_key_id=key_id,
                    model=model,
                    served_by=model,
                    params={"prompt": "bench", "duration": 4},
                    max_attempts=3,
                    charge=price,
                )
            )

    begun = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - begun
    await store.close()
    return quota * clients / elapsed


def store_submits(
    src: Path | None, database: str, pg: str, clients: int, jobs: int, spread: str
) -> float:
    """`charged_submits` in a fresh process running `src`'s code, on a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        pg_name = None
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        if database == "postgresql":
            url, pg_name = fresh_pg(pg)
        try:
            path = os.pathsep.join([code_env(src)["PYTHONPATH"], str(Path(__file__).parents[1])])
            command = ["-m", "bench.queue", "--charged-store-url", url, "--jobs", str(jobs)]
            out = subprocess.run(
                [sys.executable, *command, "--store-clients", str(clients), "--spread", spread],
                env={**os.environ, "PYTHONPATH": path},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            if pg_name is not None:
                drop_pg(pg, pg_name)
    return float(out.strip().splitlines()[-1])


def store_submits_report(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Charged store submits/s per database, this checkout beside the baseline, alternating."""
    return alternating_report(
        args,
        lambda src, database: store_submits(
            src, database, args.pg, args.store_clients, args.jobs, args.spread
        ),
    )


def alternating_report(
    args: argparse.Namespace, measure: Callable[[Path | None, str], float]
) -> dict[str, dict[str, list[float]]]:
    """`measure(src, database)` per database: this checkout's code (src None), and the
    baseline's when asked, in alternating rounds (baseline, this, baseline, this...) so that a
    change in the machine's load during the run falls on both."""
    report: dict[str, dict[str, list[float]]] = {}
    with baseline_source(args.baseline_ref) as baseline:
        for database in args.databases.split(","):
            figures: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                sides = [(f"baseline ({args.baseline_ref})", baseline)] if baseline else []
                for name, src in [*sides, ("this checkout", None)]:
                    figures.setdefault(name, []).append(round(measure(src, database), 1))
            report[database] = figures
    return report


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


SUBMIT_LUA = """
wrk.method = "POST"
wrk.body = '{"prompt": "a burst of submits", "duration": 4}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "%s"
"""


def http_submits(
    src: Path | None,
    database: str,
    pg: str,
    clients: int,
    seconds: int,
    warmup: int = 0,
    cpu: bool = False,
    server_env: dict[str, str] | None = None,
) -> float:
    """Submits/s over HTTP with `clients` concurrent connections, on a fresh database; the
    first `warmup` seconds of load are not counted (a server's first second of submits
    includes its first reads, first statement compiles and pool growth). `cpu`: the server's
    CPU microseconds per submit instead (user + system, from /proc), which moves less than the
    rate on a shared host: it does not count the time the server waited for a core."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"VIDEOSERVE_EMBEDDED_WORKER": "false", **(server_env or {}), **code_env(src)}
        pg_name = None
        if database == "postgresql":
            url, pg_name = fresh_pg(pg)
            extra["VIDEOSERVE_DATABASE_URL"] = url
        try:
            env = videoserve_env(Path(tmp) / "data", **extra)
            key = create_key(env)
            port = free_port()
            server = start_videoserve(env, port, Path(tmp) / "server.log")
            script = Path(tmp) / "submit.lua"
            script.write_text(SUBMIT_LUA % key)
            try:
                target = f"http://127.0.0.1:{port}/v2/tiny-t2v"
                if warmup:
                    warm = ["wrk", "-t2", f"-c{clients}", f"-d{warmup}s", "-s", str(script)]
                    subprocess.run([*warm, target], capture_output=True, check=True)
                command = ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "-s", str(script)]
                cpu_before = cpu_seconds(server.pid)
                out = subprocess.run(
                    [*command, target],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                cpu_used = cpu_seconds(server.pid) - cpu_before
            finally:
                server.terminate()
                server.wait(timeout=30)
        finally:
            if pg_name is not None:
                drop_pg(pg, pg_name)
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"submits failed under load:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, out
    rate = float(found.group(1))
    return cpu_used / (rate * seconds) * 1e6 if cpu else rate


def server_env(entries: list[str]) -> dict[str, str]:
    """`--server-env` entries as environment variables; only videoserve's settings."""
    found = dict(entry.split("=", 1) for entry in entries)
    for name in found:
        if not name.startswith("VIDEOSERVE_"):
            raise SystemExit(f"--server-env: {name} is not a videoserve setting (VIDEOSERVE_*)")
    return found


def http_report(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Submits/s over HTTP per database, this checkout beside the baseline, alternating."""
    return alternating_report(
        args,
        lambda src, database: http_submits(
            src,
            database,
            args.pg,
            args.http_clients,
            args.http_seconds,
            args.http_warmup,
            args.cpu_per_submit,
            server_env(args.server_env),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--skip-store", action="store_true", help="only the HTTP submits")
    parser.add_argument("--http-clients", type=int, default=32, help="0: no HTTP submits")
    parser.add_argument("--http-seconds", type=int, default=10)
    parser.add_argument(
        "--http-warmup", type=int, default=0, help="seconds of load before the measured run"
    )
    parser.add_argument("--baseline-ref", default=None, help="git revision to measure beside")
    parser.add_argument("--rounds", type=int, default=2, help="alternating HTTP rounds")
    parser.add_argument(
        "--cpu-per-submit",
        action="store_true",
        help="HTTP submits: the server's CPU microseconds per submit instead of submits/s",
    )
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="HTTP submits on these (comma-separated)"
    )
    parser.add_argument(
        "--store-submits", action="store_true", help="charged store submits/s (no HTTP)"
    )
    parser.add_argument("--store-clients", type=int, default=32)
    parser.add_argument(
        "--spread",
        choices=["none", "keys", "keys+models"],
        default="none",
        help="store submits: one key and model for all tasks, a key each, or a key and model each",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="VIDEOSERVE_X=VALUE",
        help="HTTP submits: a setting for both sides' servers (repeatable); a revision that "
        "lacks the setting ignores it",
    )
    parser.add_argument("--charged-store-url", help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.charged_store_url:
        rate = charged_submits(args.charged_store_url, args.store_clients, args.jobs, args.spread)
        print(asyncio.run(rate))
        return
    output: dict[str, object] = {}
    if args.store_submits:
        output["store_charged_submits_per_second"] = store_submits_report(args)
        output["store_clients"] = args.store_clients
    if args.http_clients:
        cpu = args.cpu_per_submit
        output["http_server_cpu_us_per_submit" if cpu else "http_submits_per_second"] = http_report(
            args
        )
        output["http_clients"] = args.http_clients
    if not args.skip_store:
        output["jobs_per_second"] = store_report(args)
        output["jobs"] = args.jobs
    output["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(output, indent=2))


def store_report(args: argparse.Namespace) -> dict[str, dict[str, float]]:
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
    return report


if __name__ == "__main__":
    main()
