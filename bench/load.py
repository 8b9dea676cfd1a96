"""500 concurrent status pollers for 60 s against two API processes on PostgreSQL.

Starts two `videoserve serve` processes (no embedded worker) and one `videoserve worker` on a
fresh PostgreSQL database, completes a few jobs, then runs wrk with 250 connections against
each API in parallel, each connection polling the status of those jobs in turn. Reports
errors (socket errors and non-2xx answers) and the p50/p99 latency.

    python -m bench.load [--seconds 60 --connections 500]
Loopback only; bounded in time. Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
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

LUA = """
ids = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v2/requests/" .. ids[(counter %% #ids) + 1] .. "/status")
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
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms(lat["50"]),
        "p99_ms": ms(lat["99"]),
        "errors": errors,
        "error_kinds": kinds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/load.py needs wrk (apt-get install wrk)")
    pg_url, pg_name = fresh_pg(args.pg)
    processes: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = videoserve_env(
                Path(tmp) / "data",
                VIDEOSERVE_DATABASE_URL=pg_url,
                VIDEOSERVE_EMBEDDED_WORKER="false",
            )
            key = create_key(env)
            urls = []
            for name in ("a", "b"):
                port = free_port()
                processes.append(start_videoserve(env, port, Path(tmp) / f"api-{name}.log"))
                urls.append(f"http://127.0.0.1:{port}")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "videoserve.cli", "worker"],
                    env=env,
                    stdout=(Path(tmp) / "worker.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
            headers = {"x-api-key": key}
            ids = [
                httpx.post(
                    f"{urls[i % 2]}/v2/tiny-t2v",
                    json={"prompt": f"p{i}", "duration": 4, "num_inference_steps": 1},
                    headers=headers,
                ).json()["request_id"]
                for i in range(8)
            ]
            deadline = time.monotonic() + 300
            while not all(
                httpx.get(f"{urls[0]}/v2/requests/{i}/status", headers=headers).json()["status"]
                == "COMPLETED"
                for i in ids
            ):
                if time.monotonic() > deadline:
                    sys.exit("jobs did not complete")
                time.sleep(0.2)
            script = Path(tmp) / "poll.lua"
            script.write_text(LUA % ", ".join(f'"{i}"' for i in ids))
            per_api = args.connections // 2
            runs = [
                subprocess.Popen(
                    [
                        "wrk",
                        "-t1",
                        f"-c{per_api}",
                        f"-d{args.seconds}s",
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
            results = [parse_wrk(run.communicate(timeout=args.seconds + 120)[0]) for run in runs]
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
                "per_api": results,
                "errors": sum(r["errors"] for r in results),
                "p50_ms_worst": max(r["p50_ms"] for r in results),
                "p99_ms_worst": max(r["p99_ms"] for r in results),
                "machine": f"{os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
