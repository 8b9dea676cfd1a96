"""`videoserve worker` with VIDEOSERVE_WORKER_IDLE_EXIT_SECONDS: it runs the work there is,
then, with nothing to claim for that long, drains and exits with status 0, so an autoscaler
(KEDA, deploy/kubernetes) can scale a pool to zero between bursts."""

from __future__ import annotations

from tests.acceptance.conftest import Processes
from tests.acceptance.test_workers import completions, status, submit
from tests.conftest import wait_until


def test_a_worker_exits_zero_once_idle_after_its_work(processes: Processes) -> None:
    key = processes.run("keys", "create", "--name", "idle").stdout.strip().splitlines()[-1]
    url = processes.serve(VIDEOSERVE_EMBEDDED_WORKER="false")
    # Queued before the worker starts: it claims them at once, and is never idle meanwhile.
    ids = [submit(url, key, prompt=f"job {n}") for n in range(2)]
    worker, log = processes.start("worker", name="idle", VIDEOSERVE_WORKER_IDLE_EXIT_SECONDS="3")
    wait_until(lambda: all(status(url, key, i)["status"] == "COMPLETED" for i in ids), timeout=240)
    assert worker.wait(timeout=120) == 0, log.read_text()
    text = log.read_text()
    assert "(VIDEOSERVE_WORKER_IDLE_EXIT_SECONDS): exiting" in text
    assert sorted(completions(log)) == sorted(ids)  # it exited after its work, not before


def test_a_worker_without_the_setting_stays(processes: Processes) -> None:
    url = processes.serve(VIDEOSERVE_EMBEDDED_WORKER="false")
    key = processes.run("keys", "create", "--name", "stay").stdout.strip().splitlines()[-1]
    worker, log = processes.start("worker", name="stay")
    wait_until(lambda: "started" in log.read_text(), timeout=120)
    # It runs a job long after it started: it did not leave while idle.
    request_id = submit(url, key)
    wait_until(lambda: status(url, key, request_id)["status"] == "COMPLETED", timeout=240)
    assert worker.poll() is None
