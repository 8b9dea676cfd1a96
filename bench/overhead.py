"""Per-job platform overhead and status-poll throughput of `videoserve serve`.

Overhead: submit a tiny-t2v job at its smallest shape (4 s, 1 step), poll its status every
few milliseconds until COMPLETED, and subtract the time the model itself ran
(`inference_time`). What is left is the platform: HTTP, validation, the database, the claim,
MP4 encoding, storage and the poll that sees the result. Encoding is reported separately too.

Throughput: wrk (or an httpx fallback) against GET /v2/requests/{id}/status of a completed job,
then the same against a bare Starlette JSON endpoint started in the same run, under the same
uvicorn options as `videoserve serve` (its guarded http protocol, connection cap, proxy
headers): the ratio is what the platform keeps of what the framework can do on this machine.
The bare endpoint on uvicorn's defaults is measured once too, to show what those options cost.

With `--baseline-ref main` the same run measures that git revision's code too (jobs and
polls), so every figure has its before beside it, from one run on one machine: both sides'
servers run at once and the poll runs alternate between them (`--poll-rounds`, medians).

    python -m bench.overhead --jobs 200 [--baseline-ref main]
    python -m bench.overhead --jobs 60 --rounds 3 --baseline-ref main  # jobs in rounds
    python -m bench.overhead --jobs 20 --rounds 2 --poll-rounds 5 --baseline-ref main
    python -m bench.overhead ... --pg postgresql://postgres@127.0.0.1:5432/test  # PostgreSQL
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench._servers import (
    baseline_source,
    code_env,
    cpu_seconds,
    create_key,
    free_port,
    start_bare,
    start_videoserve,
    videoserve_env,
)
from bench.queue import drop_pg, fresh_pg


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure_jobs(url: str, key: str, jobs: int, poll: float) -> dict[str, list[float]]:
    headers = {"x-api-key": key}
    body = {"prompt": "bench", "duration": 4, "size": "1280x720", "num_inference_steps": 1}
    out: dict[str, list[float]] = {"overhead": [], "plumbing": [], "encode": [], "total": []}
    with httpx.Client(headers=headers, timeout=60) as client:
        for _ in range(jobs):
            begun = time.perf_counter()
            submitted = client.post(f"{url}/v2/tiny-t2v", json=body).json()
            while client.get(submitted["status_url"]).json()["status"] != "COMPLETED":
                time.sleep(poll)
            total = time.perf_counter() - begun
            result = client.get(submitted["response_url"]).json()
            inference = result["metrics"]["inference_time"]
            encode = result["metrics"]["encode_time"]
            out["total"].append(total)
            out["overhead"].append(total - inference)
            out["plumbing"].append(total - inference - encode)
            out["encode"].append(encode)
    return out


def wrk(url: str, seconds: int, connections: int, key: str | None) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if key:
        command[1:1] = ["-H", f"x-api-key: {key}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def httpx_load(url: str, seconds: int, connections: int, key: str | None) -> float:
    import asyncio

    async def run() -> float:
        headers = {"x-api-key": key} if key else {}
        deadline = time.perf_counter() + seconds
        count = 0

        async def poller(client: httpx.AsyncClient) -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                (await client.get(url)).raise_for_status()
                count += 1

        async with httpx.AsyncClient(headers=headers) as client:
            await asyncio.gather(*(poller(client) for _ in range(connections)))
        return count / seconds

    return asyncio.run(run())


def polls_with_cpu(load, url: str, args: argparse.Namespace, key: str | None, pid: int):
    """(polls/s, server CPU microseconds per poll): the second holds up better than the rate
    on a machine others share, as it does not count the time the server waited for a core."""
    before = cpu_seconds(pid)
    rate = load(url, args.seconds, args.connections, key)
    spent = cpu_seconds(pid) - before
    return rate, round(spent / (rate * args.seconds) * 1e6, 1)


@contextlib.contextmanager
def serving(src: Path | None, pg: str | None = None) -> Iterator[tuple[str, str, int]]:
    """A fresh `videoserve serve` of one revision's code: (url, key, pid). With `pg` (an
    admin URL), on a fresh PostgreSQL database of its own, dropped afterwards."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        database: dict[str, str] = {}
        if pg is not None:
            database_url, name = fresh_pg(pg)
            cleanup.callback(drop_pg, pg, name)
            database["VIDEOSERVE_DATABASE_URL"] = database_url
        env = videoserve_env(
            Path(tmp) / "data",
            VIDEOSERVE_POLL_INTERVAL_SECONDS="0.5",
            **database,
            **code_env(src),
        )
        key = create_key(env)
        port = free_port()
        server = start_videoserve(env, port, Path(tmp) / "server.log")
        try:
            yield f"http://127.0.0.1:{port}", key, server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def job_rounds(
    sides: list[tuple[str, Path | None]], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """`--rounds` alternating rounds of `--jobs` jobs per side, each in a fresh server: the
    per-job figures of both sides then share the machine's drifts in load."""
    samples: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for name, src in sides:
            with serving(src, args.pg) as (url, key, _pid):
                measure_jobs(url, key, 5, args.poll)  # warm-up: builds and loads the model
                got = measure_jobs(url, key, args.jobs, args.poll)
            side = samples.setdefault(name, {"rounds_plumbing_p50": []})
            side["rounds_plumbing_p50"].append(percentile(got["plumbing"], 50))
            for figure, values in got.items():
                side.setdefault(figure, []).extend(values)
    return samples


def job_figures(samples: dict[str, list[float]]) -> dict[str, Any]:
    ms = 1000
    figures: dict[str, Any] = {
        "overhead_ms": {
            "p50": round(percentile(samples["overhead"], 50) * ms, 1),
            "p99": round(percentile(samples["overhead"], 99) * ms, 1),
        },
        "plumbing_ms (overhead minus MP4 encode)": {
            "p50": round(percentile(samples["plumbing"], 50) * ms, 1),
            "p99": round(percentile(samples["plumbing"], 99) * ms, 1),
        },
        "encode_ms": {"p50": round(percentile(samples["encode"], 50) * ms, 1)},
        "total_ms_p50": round(statistics.median(samples["total"]) * ms, 1),
        "jobs_measured": len(samples["total"]),
    }
    if "rounds_plumbing_p50" in samples:
        rounds = [round(value * ms, 1) for value in samples["rounds_plumbing_p50"]]
        figures["plumbing_p50_per_round_ms"] = rounds
    return figures


def completed_status_url(url: str, key: str) -> str:
    """The status URL of a tiny job run to COMPLETED: what the poll runs ask for."""
    status_url = httpx.post(
        f"{url}/v2/tiny-t2v",
        json={"prompt": "poll me", "duration": 4, "num_inference_steps": 1},
        headers={"x-api-key": key},
    ).json()["status_url"]
    while httpx.get(status_url, headers={"x-api-key": key}).json()["status"] != "COMPLETED":
        time.sleep(0.05)
    return str(status_url)


def bare_polls(args: argparse.Namespace, load, *, plain: bool = False) -> tuple[float, float]:
    port = free_port()
    bare = start_bare(port, plain=plain)
    try:
        url = f"http://127.0.0.1:{port}/v2/requests/x/status"
        return polls_with_cpu(load, url, args, None, bare.pid)
    finally:
        bare.terminate()
        bare.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.002, help="status poll interval, s")
    parser.add_argument("--seconds", type=int, default=10, help="each throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline-ref", default=None, help="git revision to measure beside")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="measure jobs in this many alternating rounds per side (--jobs each), each in "
        "a fresh server, before the polls; 0: jobs and polls in one server per side",
    )
    parser.add_argument(
        "--poll-rounds",
        type=int,
        default=3,
        help="status-poll runs per side, alternating between the sides' servers (medians)",
    )
    parser.add_argument(
        "--pg",
        default=None,
        metavar="ADMIN_URL",
        help="run each server on a fresh PostgreSQL database made through this URL "
        "(postgresql://postgres@127.0.0.1:5432/test, say); default: SQLite",
    )
    args = parser.parse_args()
    load = wrk if shutil.which("wrk") else httpx_load

    report: dict[str, object] = {
        "jobs": args.jobs,
        "database": "postgresql" if args.pg else "sqlite",
    }
    # Once on uvicorn's defaults, to show what our server options cost the bare endpoint.
    plain_rate, plain_cpu = bare_polls(args, load, plain=True)
    report["bare_on_uvicorn_defaults"] = {"per_s": plain_rate, "cpu_us_per_poll": plain_cpu}
    bare_rates = [bare_polls(args, load)]
    with baseline_source(args.baseline_ref) as baseline:
        sides: list[tuple[str, Path | None]] = (
            [(f"baseline ({args.baseline_ref})", baseline)] if baseline else []
        )
        sides.append(("this checkout", None))
        rounds = job_rounds(sides, args) if args.rounds else {}
        # Every side's server at once, then the poll runs alternating between them
        # (`--poll-rounds`), a bare run after each round: one wrk run per side moved by 10 %
        # and more between runs on a machine others share.
        polls: dict[str, list[tuple[float, float]]] = {name: [] for name, _src in sides}
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[str, str, int]] = {}
            figures_of: dict[str, dict[str, Any]] = {}
            for name, src in sides:
                url, key, pid = stack.enter_context(serving(src, args.pg))
                if rounds:
                    figures_of[name] = job_figures(rounds[name])
                else:
                    measure_jobs(url, key, 5, args.poll)  # warm-up: builds and loads the model
                    figures_of[name] = job_figures(measure_jobs(url, key, args.jobs, args.poll))
                servers[name] = (completed_status_url(url, key), key, pid)
            order = list(servers)
            for _ in range(args.poll_rounds):
                for name in order:
                    status_url, key, pid = servers[name]
                    polls[name].append(polls_with_cpu(load, status_url, args, key, pid))
                bare_rates.append(bare_polls(args, load))
                order.reverse()  # each side first in every other round: no order bias
        bare = statistics.median(rate for rate, _cpu in bare_rates)
        bare_cpu = statistics.median(cpu for _rate, cpu in bare_rates)
        for name, _src in sides:
            figures = figures_of[name]
            figures["status_polls_per_s"] = statistics.median(rate for rate, _ in polls[name])
            figures["server_cpu_us_per_poll"] = statistics.median(cpu for _, cpu in polls[name])
            figures["poll_rounds (polls/s, CPU us per poll)"] = polls[name]
            figures["bare_starlette_per_s"] = round(bare, 1)
            figures["ratio"] = round(figures["status_polls_per_s"] / bare, 3)
            figures["bare_cpu_us_per_poll"] = round(bare_cpu, 1)
            figures["cpu_ratio (bare CPU per poll / ours)"] = round(
                bare_cpu / figures["server_cpu_us_per_poll"], 3
            )
            report[name] = figures
    report |= {
        "load_tool": load.__name__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
