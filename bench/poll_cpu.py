"""CPU per status poll through the whole app, called as ASGI in-process: no sockets, no uvicorn.

Why beside `bench.overhead`'s wrk figures: on a machine others share, a rate over loopback
moves by 2x between runs, and the server's CPU per poll inflates with the load too. Calling
the app directly and counting this process's CPU time isolates what our code costs a poll
(middlewares, key check, read, JSON), which is what a change to the poll path moves. Each
side runs in its own process, alternating, `--rounds` times; a bare Starlette JSON endpoint
called the same way is the floor.

    python -m bench.poll_cpu --baseline-ref main [--polls 5000 --rounds 3] [--queued]
The poll is of a COMPLETED job (the embedded worker runs one tiny job first) with a valid key;
with `--queued`, of the 26th of 50 jobs queued with no worker. Each figure is the best of five
runs of `--polls` polls in one process.
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

CHILD = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path

async def call(app, scope, body=b""):
    sent = []
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    await app(dict(scope, state={}), receive, send)
    return sent

def scope(method, path, headers):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555),
            "root_path": "", "query_string": b"", "method": method, "path": path,
            "raw_path": path.encode(), "headers": [(b"host", b"127.0.0.1:8000"), *headers]}

async def measure(app, poll, polls):
    # The best of five runs: the least disturbed by the rest of the machine.
    for _ in range(200):
        await call(app, poll)
    best = float("inf")
    for _ in range(5):
        begun = time.process_time()
        for _ in range(polls):
            await call(app, poll)
        best = min(best, (time.process_time() - begun) / polls * 1e6)
    return best

async def ours(polls, queued):
    from videoserve.api import create_app
    from videoserve.settings import Settings
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), rate_limit="", status_rate_limit="",
                        log_level="WARNING", embedded_worker=not queued)
    app = create_app(settings)
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put))
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    # The key store: `app.state.services` since the core's redesign, the runtime before it
    # (so that a `--baseline-ref` from before it runs too).
    state = app.state
    keys = state.services.keys if hasattr(state, "services") else state.runtime.keys
    _record, key = await keys.create("bench", admin=True)
    headers = [(b"x-api-key", key.encode()), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    body = json.dumps({"prompt": "x", "duration": 4, "num_inference_steps": 1}).encode()
    submit = scope("POST", "/v2/tiny-t2v", headers + [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())])
    if queued:  # 50 jobs queued, no worker: the 26th is polled
        ids = [json.loads((await call(app, submit, body))[1]["body"])["request_id"]
               for _ in range(50)]
        poll = scope("GET", f"/v2/requests/{ids[25]}/status", headers)
        assert b'"QUEUED"' in (await call(app, poll))[1]["body"]
    else:
        job = json.loads((await call(app, submit, body))[1]["body"])["request_id"]
        poll = scope("GET", f"/v2/requests/{job}/status", headers)
        deadline = time.monotonic() + 300
        while b'"COMPLETED"' not in (await call(app, poll))[1]["body"]:
            assert time.monotonic() < deadline, "the job did not complete"
            await asyncio.sleep(0.05)
    figure = await measure(app, poll, polls)
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    return figure

async def bare(polls):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    body = {"request_id": "video_0123456789abcdef0123456789abcdef", "status": "COMPLETED",
            "model": "tiny-t2v", "created_at": "2026-11-25T00:00:00Z", "progress": 100}
    async def status(request):
        return JSONResponse(body)
    app = Starlette(routes=[Route("/v2/requests/{id}/status", status)])
    return await measure(app, scope("GET", "/v2/requests/x/status", []), polls)

which, polls, queued = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "queued"
print(asyncio.run(bare(polls) if which == "bare" else ours(polls, queued)))
"""


def one(which: str, src: Path | None, polls: int, queued: bool) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSERVE_")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(polls), "queued" if queued else "completed"],
        env=env | code_env(src),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:  # the child's traceback, not just its exit status
        raise SystemExit(f"{which} ({src or 'this checkout'}) failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default=None, help="git revision to measure beside")
    parser.add_argument(
        "--queued", action="store_true", help="poll a queued job (26th of 50) instead"
    )
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    with baseline_source(args.baseline_ref) as baseline:
        sides = [(f"baseline ({args.baseline_ref})", baseline)] if baseline else []
        sides += [("this checkout", None)]
        for _ in range(args.rounds):  # alternating, so a change in the load falls on both
            figures.setdefault("bare starlette", []).append(one("bare", None, args.polls, False))
            for name, src in sides:
                figures.setdefault(name, []).append(one("ours", src, args.polls, args.queued))
    report: dict[str, object] = {
        name: {
            "cpu_us_per_poll": [round(v, 1) for v in values],
            "median": round(statistics.median(values), 1),
        }
        for name, values in figures.items()
    }
    bare = statistics.median(figures["bare starlette"])
    for name, values in figures.items():
        if name != "bare starlette":
            report[name]["bare CPU / ours"] = round(bare / statistics.median(values), 3)  # type: ignore[index]
    report |= {
        "polls": args.polls,
        "polled": "a queued job, 26th of 50" if args.queued else "a completed job",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
