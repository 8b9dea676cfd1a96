"""500 concurrent status pollers for 60 s against two API processes on PostgreSQL.

Starts two `videoserve serve` processes (no embedded worker) on a fresh PostgreSQL database,
puts jobs in every state a poller sees (COMPLETED by a real worker that is then stopped,
PROCESSING with a long lease, QUEUED behind 200 others, so the status carries a computed
queue position), then runs wrk against both APIs in parallel, each connection polling those
jobs in turn. Two runs, each reporting errors (socket errors and non-2xx answers) and the
p50/p99 latency:

- `paced` (the goal's measure): each connection is one poller with the cadence of the
  official clients: `segmind`'s `wait()` and `openai`'s `poll()` both sleep 1 s between
  polls. Here each waits a uniformly random 0.5-1.5 s (mean 1 s) so that 500 pollers are not
  in lockstep: 500 polls/s offered in all.
- `saturated`: the same connections with no pause, which measures capacity (polls/s) rather
  than a poller's latency: with N connections waiting on each other, latency is N divided by
  the throughput (Little's law), whatever the code does.

    python -m bench.load [--seconds 60 --connections 500] [--runs paced,saturated]
Loopback only; bounded in time. Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._servers import create_key, free_port, start_videoserve, videoserve_env
from bench.queue import drop_pg, fresh_pg
from videoserve.jobs.store import JobStore
from videoserve.settings import Settings

LUA = """
ids = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v2/requests/" .. ids[(counter %% #ids) + 1] .. "/status")
end
"""

# A poller's pause before each request (wrk calls it before every request, the first too,
# which also spreads the start).
PACED = """
delay = function()
  return math.random(%d, %d)
end
"""


def parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    lat = dict(re.findall(r"\s+(50|99)%\s+(\S+)", out))
    errors = 0
    kinds: dict[str, int] = {}
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        kinds = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
        errors += sum(kinds.values())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        kinds["non_2xx"] = int(m.group(1))
        errors += int(m.group(1))
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms(lat["50"]),
        "p99_ms": ms(lat["99"]),
        "errors": errors,
        "error_kinds": kinds,
    }


def prepare_jobs(urls: list[str], key: str, env: dict[str, str], pg_url: str, tmp: Path) -> list:
    """Job ids in every state: 6 COMPLETED, 4 PROCESSING, 6 QUEUED (far back in the queue)."""
    headers = {"x-api-key": key}

    def submit(i: int) -> str:
        response = httpx.post(
            f"{urls[i % 2]}/v2/tiny-t2v",
            json={"prompt": f"p{i}", "duration": 4, "num_inference_steps": 1},
            headers=headers,
        )
        response.raise_for_status()
        return response.json()["request_id"]

    worker = subprocess.Popen(
        [sys.executable, "-m", "videoserve.cli", "worker"],
        env=env,
        stdout=(tmp / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        completed = [submit(i) for i in range(6)]
        deadline = time.monotonic() + 300
        while not all(
            httpx.get(f"{urls[0]}/v2/requests/{i}/status", headers=headers).json()["status"]
            == "COMPLETED"
            for i in completed
        ):
            if time.monotonic() > deadline:
                sys.exit("jobs did not complete")
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    waiting = [submit(i) for i in range(6, 6 + 210)]

    async def claim_four() -> None:
        # Workers that hold their lease for the whole run: the store's own claim.
        store = JobStore.open(Settings(database_url=pg_url).resolved_database_url())
        await store.start()
        for n in range(4):
            assert await store.claim(f"bench-{n}", None, lease_seconds=3600) is not None
        await store.close()

    asyncio.run(claim_four())
    queued = waiting[-6:]  # positions ~200 to ~206: the count is not trivially small
    processing = waiting[:4]
    return completed + processing + queued


def run_wrk(
    urls: list[str], key: str, ids: list[str], args: argparse.Namespace, tmp: Path, paced: bool
) -> list[dict[str, float]]:
    script = tmp / ("paced.lua" if paced else "saturated.lua")
    lua = LUA % ", ".join(f'"{i}"' for i in ids)
    if paced:
        lua += PACED % (args.interval_ms // 2, args.interval_ms * 3 // 2)
    script.write_text(lua)
    per_api = args.connections // 2
    runs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{per_api}",
                f"-d{args.seconds}s",
                "--timeout",
                "2s",
                "--latency",
                "-s",
                str(script),
                "-H",
                f"x-api-key: {key}",
                url,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    return [parse_wrk(run.communicate(timeout=args.seconds + 120)[0]) for run in runs]


def summary(results: list[dict[str, float]]) -> dict[str, object]:
    return {
        "per_api": results,
        "requests_per_s": round(sum(r["requests_per_s"] for r in results), 1),
        "errors": sum(r["errors"] for r in results),
        "p50_ms_worst": max(r["p50_ms"] for r in results),
        "p99_ms_worst": max(r["p99_ms"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--interval-ms", type=int, default=1000, help="a paced poller's mean")
    parser.add_argument("--runs", default="paced,saturated")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/load.py needs wrk (apt-get install wrk)")
    pg_url, pg_name = fresh_pg(args.pg)
    processes: list[subprocess.Popen] = []
    report: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            env = videoserve_env(
                tmp / "data", VIDEOSERVE_DATABASE_URL=pg_url, VIDEOSERVE_EMBEDDED_WORKER="false"
            )
            key = create_key(env)
            urls = []
            for name in ("a", "b"):
                port = free_port()
                processes.append(start_videoserve(env, port, tmp / f"api-{name}.log"))
                urls.append(f"http://127.0.0.1:{port}")
            ids = prepare_jobs(urls, key, env, pg_url, tmp)
            for run in args.runs.split(","):
                report[run] = summary(run_wrk(urls, key, ids, args, tmp, paced=run == "paced"))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        drop_pg(args.pg, pg_name)
    print(
        json.dumps(
            {
                "connections": args.connections,
                "seconds": args.seconds,
                "interval_ms": args.interval_ms,
                **report,
                "machine": f"{os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
