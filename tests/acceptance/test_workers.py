"""Worker processes on one database: no double claims, and a SIGKILLed worker loses no job."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx

from tests.acceptance.conftest import Processes
from tests.conftest import wait_until


def submit(url: str, key: str, **params) -> str:
    body = {"prompt": "p", "duration": 4} | params
    response = httpx.post(f"{url}/v2/tiny-t2v", json=body, headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(url: str, key: str, request_id: str) -> dict:
    return httpx.get(f"{url}/v2/requests/{request_id}/status", headers={"x-api-key": key}).json()


def completions(*logs) -> list[str]:
    found: list[str] = []
    for log in logs:
        found += re.findall(r"job (video_\w+) completed", log.read_text())
    return found


def test_two_workers_complete_each_job_exactly_once(processes: Processes) -> None:
    key = processes.run("keys", "create", "--name", "w").stdout.strip().splitlines()[-1]
    url = processes.serve(VIDEOSERVE_EMBEDDED_WORKER="false")
    _, log_a = processes.start("worker", name="worker-a")
    _, log_b = processes.start("worker", name="worker-b")
    ids = [submit(url, key, prompt=f"job {i}") for i in range(12)]
    wait_until(
        lambda: all(status(url, key, i)["status"] == "COMPLETED" for i in ids),
        timeout=240,
        interval=0.2,
    )
    done = completions(log_a, log_b)
    assert sorted(done) == sorted(ids)  # every job once, none twice


def test_sigkilled_worker_job_completes_once_after_lease_expiry(processes: Processes) -> None:
    key = processes.run("keys", "create", "--name", "k").stdout.strip().splitlines()[-1]
    env = {"VIDEOSERVE_LEASE_SECONDS": "2"}
    url = processes.serve(VIDEOSERVE_EMBEDDED_WORKER="false", **env)
    victim, victim_log = processes.start("worker", name="victim", **env)
    # Many steps at the largest shape: the job is still running when the worker dies.
    request_id = submit(url, key, duration=12, size="1792x1024", num_inference_steps=60)
    wait_until(lambda: status(url, key, request_id).get("progress", 0) > 0, timeout=120)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = time.monotonic()
    assert status(url, key, request_id)["status"] == "PROCESSING"
    _, rescuer_log = processes.start("worker", name="rescuer", **env)
    final = wait_until(
        lambda: (s := status(url, key, request_id))["status"] in ("COMPLETED", "FAILED") and s,
        timeout=240,
        interval=0.2,
    )
    assert final["status"] == "COMPLETED"
    assert time.monotonic() - killed_at >= 1.0  # not before the dead worker's lease ran out
    assert completions(victim_log, rescuer_log) == [request_id]
    result = httpx.get(f"{url}/v2/requests/{request_id}", headers={"x-api-key": key}).json()
    assert result["output"].split("/files/")[1].startswith(f"jobs/{request_id}/2/")  # attempt 2
    assert httpx.get(result["output"]).status_code == 200
