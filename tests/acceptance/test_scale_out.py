"""Many processes on one real PostgreSQL: kills, restarts, two APIs and two workers.

Every test here uses real `videoserve serve` and `videoserve worker` processes.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import av
import httpx
import pytest

from tests.acceptance.conftest import Processes
from tests.acceptance.test_workers import completions, status, submit
from tests.conftest import REQUIRE_SERVICES, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def pg(processes: Processes, postgres_url: str) -> Processes:
    processes.env["VIDEOSERVE_DATABASE_URL"] = postgres_url
    processes.env["VIDEOSERVE_LEASE_SECONDS"] = "2"
    return processes


def key_for(processes: Processes) -> str:
    return processes.run("keys", "create", "--name", "t").stdout.strip().splitlines()[-1]


def playable(url: str) -> bool:
    data = httpx.get(url, timeout=30).content
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0)) > 0


def test_repeated_worker_kills_lose_no_job_and_finish_each_once(pg: Processes) -> None:
    key = key_for(pg)
    url = pg.serve(VIDEOSERVE_EMBEDDED_WORKER="false")
    ids = [submit(url, key, prompt=f"k{i}", num_inference_steps=30) for i in range(6)]
    logs: list[Path] = []
    kills = 0
    while kills < 3:
        worker, log = pg.start("worker", name=f"worker-{kills}")
        logs.append(log)
        # Kill it the moment it is mid-job (progress reported, job not finished).
        victim = wait_until(
            lambda: next(
                (
                    i
                    for i in ids
                    if (s := status(url, key, i))["status"] == "PROCESSING"
                    and s.get("progress", 0) > 0
                ),
                None,
            ),
            timeout=120,
            interval=0.05,
        )
        assert victim
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        kills += 1
    _, last_log = pg.start("worker", name="survivor")
    logs.append(last_log)
    final = wait_until(
        lambda: (
            (states := [status(url, key, i) for i in ids])
            and all(s["status"] in ("COMPLETED", "FAILED") for s in states)
            and states
        ),
        timeout=300,
        interval=0.2,
    )
    assert [s["status"] for s in final] == ["COMPLETED"] * len(ids)
    assert sorted(completions(*logs)) == sorted(ids)  # each exactly once
    for request_id in ids:
        result = httpx.get(f"{url}/v2/requests/{request_id}", headers={"x-api-key": key}).json()
        assert playable(result["output"])  # never a partial video


def test_two_apis_and_two_workers_share_one_database(pg: Processes) -> None:
    key = key_for(pg)
    api_a = pg.serve("api-a", VIDEOSERVE_EMBEDDED_WORKER="false")
    api_b = pg.serve("api-b", VIDEOSERVE_EMBEDDED_WORKER="false")
    _, log_1 = pg.start("worker", name="w1")
    _, log_2 = pg.start("worker", name="w2")
    ids = [submit(api_a if i % 2 else api_b, key, prompt=f"n{i}") for i in range(10)]
    for api in (api_a, api_b):
        wait_until(
            lambda api=api: all(status(api, key, i)["status"] == "COMPLETED" for i in ids),
            timeout=240,
            interval=0.2,
        )
    assert sorted(completions(log_1, log_2)) == sorted(ids)
    # A result read through either API gives a working link.
    result = httpx.get(f"{api_b}/v2/requests/{ids[1]}", headers={"x-api-key": key}).json()
    assert playable(result["output"])
    admin = pg.run("keys", "create", "--name", "ops", "--admin").stdout.strip().splitlines()[-1]
    listing = httpx.get(f"{api_a}/v1/admin/workers", headers={"x-api-key": admin})
    assert listing.status_code == 200
    assert len(listing.json()["data"]) == 2
    assert all("tiny-t2v" in w["models"] for w in listing.json()["data"])
    forbidden = httpx.get(f"{api_a}/v1/admin/workers", headers={"x-api-key": key})
    assert forbidden.status_code == 403


def test_killed_api_leaves_no_half_written_job(pg: Processes) -> None:
    key = key_for(pg)
    port_env = {"VIDEOSERVE_EMBEDDED_WORKER": "false"}
    url = pg.serve("api-1", **port_env)
    api_process = pg.started[-1][0]
    accepted: list[str] = []
    stop = threading.Event()

    def submitter() -> None:
        with httpx.Client(headers={"x-api-key": key}, timeout=5) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = client.post(f"{url}/v2/tiny-t2v", json={"prompt": f"s{i}", "duration": 4})
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    accepted.append(r.json()["request_id"])

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(accepted) >= 20, timeout=60)
    os.killpg(api_process.pid, signal.SIGKILL)  # mid-request, with submits in flight
    api_process.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    restarted = pg.serve("api-2", **port_env)
    import asyncio

    import asyncpg

    async def rows() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg.env["VIDEOSERVE_DATABASE_URL"])
        try:
            return await conn.fetch("SELECT id, status, params, created_at FROM jobs")
        finally:
            await conn.close()

    stored = asyncio.run(rows())
    stored_ids = {r["id"] for r in stored}
    assert set(accepted) <= stored_ids  # everything acknowledged is durable
    for r in stored:  # and nothing is half-written
        assert r["status"] == "QUEUED" and r["params"] and r["created_at"]
    for request_id in accepted[:5]:
        assert status(restarted, key, request_id)["status"] == "QUEUED"


def _pg_ctl() -> list[str] | None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


@pytest.mark.alone  # restarts the PostgreSQL every other test uses
def test_postgres_restart_loses_no_accepted_job(pg: Processes) -> None:
    command = _pg_ctl()
    if command is None or os.geteuid() != 0:
        if REQUIRE_SERVICES:
            pytest.fail("restarting PostgreSQL needs pg_ctlcluster and root")
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster and root")
    key = key_for(pg)
    url = pg.serve(VIDEOSERVE_EMBEDDED_WORKER="false")
    _, worker_log = pg.start("worker", name="w")
    accepted: list[str] = []
    answers: dict[int, int] = {}
    stop = threading.Event()

    def submitter() -> None:
        with httpx.Client(headers={"x-api-key": key}, timeout=10) as client:
            i = 0
            # Paced at ~20 submits/s, a client's rate rather than a flood: unpaced, the API
            # accepts hundreds of jobs while the restart command runs, and the one CPU
            # worker then needs minutes to drain them.
            while not stop.wait(0.05):
                i += 1
                try:
                    r = client.post(f"{url}/v2/tiny-t2v", json={"prompt": f"r{i}", "duration": 4})
                except httpx.HTTPError:
                    continue
                answers[r.status_code] = answers.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    accepted.append(r.json()["request_id"])
                elif r.status_code == 503:
                    assert r.headers.get("retry-after")

    polls: list[int] = []  # a poll's answers through the restart, in order

    def poller() -> None:
        # The status poll reads on a pool of its own (db/postgres.py): it must
        # answer 503 with Retry-After while the server is down, and recover by itself.
        with httpx.Client(headers={"x-api-key": key}, timeout=10) as client:
            while not stop.wait(0.05):
                try:
                    r = client.get(f"{url}/v2/requests/{accepted[0]}/status")
                except httpx.HTTPError:
                    continue
                polls.append(r.status_code)
                if r.status_code == 503:
                    assert r.headers.get("retry-after")

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_until(lambda: len(accepted) >= 5, timeout=60)
    polling = threading.Thread(target=poller)
    polling.start()
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    during, polled = len(accepted), len(polls)
    wait_until(lambda: len(accepted) >= during + 5, timeout=120)  # recovered by itself
    wait_until(lambda: 200 in polls[polled:], timeout=120)  # the poll's pool recovered too
    stop.set()
    thread.join(timeout=30)
    polling.join(timeout=30)
    assert 500 not in answers, answers
    assert set(polls) <= {200, 503}, polls
    wait_until(
        lambda: all(status(url, key, i)["status"] == "COMPLETED" for i in accepted),
        timeout=300,
        interval=0.5,
    )
    assert sorted(completions(worker_log)) == sorted(accepted)
