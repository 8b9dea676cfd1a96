"""Every way a job ends without a video refunds exactly once (issue 16, items 2 and 6), on
SQLite and on PostgreSQL: deleting a queued or a running job, a job over its time limit. The
other rows of the table in docs/api.md are covered in test_accounts.py. Also the compute-aware
limits: `max_steps` and a price that follows the steps."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import wait_until
from tests.integration.accounting import (
    FailingBackend,
    StallingBackend,
    TestRegistry,
    account,
    headers,
    ledger_of,
    make_key,
    submit,
    wait_for_status,
)
from videoserve.jobs.failures import CANCELLED_MESSAGE
from videoserve.jobs.store import DELETED_UNFINISHED


def kinds(server, key_id: str) -> list[tuple[str, float]]:
    return [(entry.kind, entry.amount) for entry in ledger_of(server, key_id)]


def delete(server, key: str, request_id: str) -> httpx.Response:
    return httpx.delete(f"{server.url}/v1/videos/{request_id}", headers=headers(key))


def test_deleting_a_queued_job_refunds_it_once(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, key_id = make_key(server, "tidy", credits=8)
    request_id = submit(server, key, duration=8).json()["request_id"]
    assert account(server, key)["credits"] == 0
    assert delete(server, key, request_id).status_code == 200
    assert delete(server, key, request_id).status_code == 404  # gone: nothing more to refund
    assert account(server, key)["credits"] == 8
    assert kinds(server, key_id) == [("grant", 8), ("charge", -8), ("refund", 8)]


def test_deleting_a_running_job_refunds_it_once(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 1.0)})
    server = make_server(registry=registry)
    key, key_id = make_key(server, "hasty", credits=4)
    request_id = submit(server, key, model="stall", duration=4).json()["request_id"]
    wait_for_status(server, key, request_id, "PROCESSING")
    assert delete(server, key, request_id).status_code == 200  # before the fix: kept the 4
    assert account(server, key)["credits"] == 4
    # The stalled worker stops at its next step and its fenced fail finds no row: one refund.
    # A second job on the same one-job worker runs only once the first attempt has ended.
    second = submit(server, key, model="stall", duration=4).json()["request_id"]
    wait_for_status(server, key, second, "PROCESSING")
    entries = ledger_of(server, key_id)
    refunds = [e for e in entries if e.kind == "refund"]
    # One refund, whichever write got there first: DELETE asks the worker to stop, then
    # deletes the row; the worker's fenced fail (refunding as a cancellation) may land before
    # the delete (then the delete finds the job refunded) or after it (then it finds no row).
    assert [(e.job_id, e.amount) for e in refunds] == [(request_id, 4)]
    assert refunds[0].note in (DELETED_UNFINISHED, f"refund: {CANCELLED_MESSAGE}")
    httpx.post(f"{server.url}/v2/requests/{second}/cancel", headers=headers(key))
    wait_for_status(server, key, second, "FAILED")
    assert account(server, key)["credits"] == 4


def test_deleting_finished_jobs_moves_no_credits(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"broken": (FailingBackend("broken"), 1.0)})
    server = make_server(registry=registry)
    key, key_id = make_key(server, "done", credits=8)
    request_id = submit(server, key, duration=4).json()["request_id"]
    wait_for_status(server, key, request_id, "COMPLETED", timeout=900)
    assert delete(server, key, request_id).status_code == 200
    assert kinds(server, key_id) == [("grant", 8), ("charge", -4)]  # it had its video
    failed = submit(server, key, model="broken", duration=4).json()["request_id"]
    wait_for_status(server, key, failed, "FAILED")
    wait_until(lambda: account(server, key)["credits"] == 4)  # refunded when it failed
    assert delete(server, key, failed).status_code == 200
    assert account(server, key)["credits"] == 4
    assert [k for k, _ in kinds(server, key_id)].count("refund") == 1  # the failure's, only


def test_a_job_over_its_time_limit_fails_as_timeout_and_is_refunded(
    make_server, model_cache: Path
) -> None:
    registry = TestRegistry(
        model_cache,
        {"stall": (StallingBackend("stall"), 1.0)},
        options={"stall": {"max_job_seconds": 0.5}},
    )
    server = make_server(registry=registry)  # VIDEOSERVE_MAX_JOB_SECONDS stays 3600
    key, key_id = make_key(server, "slow", credits=4)
    request_id = submit(server, key, model="stall", duration=4).json()["request_id"]
    failed = wait_for_status(server, key, request_id, "FAILED")
    assert failed["error"].startswith("timeout: ") and "0.5 s" in failed["error"]
    video = httpx.get(f"{server.url}/v1/videos/{request_id}", headers=headers(key)).json()
    assert video["error"]["code"] == "timeout"
    wait_until(lambda: account(server, key)["credits"] == 4)
    assert kinds(server, key_id) == [("grant", 4), ("charge", -4), ("refund", 4)]


def test_the_setting_bounds_every_model(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 1.0)})
    server = make_server(registry=registry, max_job_seconds=0.5)
    key, _ = make_key(server, "slow", credits=4)
    request_id = submit(server, key, model="stall", duration=4).json()["request_id"]
    assert wait_for_status(server, key, request_id, "FAILED")["error"].startswith("timeout: ")


def test_max_steps_and_a_price_that_follows_the_steps(make_server, model_cache: Path) -> None:
    registry = TestRegistry(
        model_cache,
        {"metered": (None, 1.0)},
        options={"metered": {"max_steps": 8, "price_per_step_second": 0.5}},
    )
    server = make_server(registry=registry, embedded_worker=False)
    key, key_id = make_key(server, "metered", credits=100)
    over = submit(server, key, model="metered", duration=4, num_inference_steps=9)
    assert over.status_code == 400, over.text
    assert over.json()["error"] == (
        "num_inference_steps: this model allows at most 8 steps (got 9)"
    )
    assert over.json()["param"] == "num_inference_steps"
    # 4 s x (1 + steps x 0.5): the tiny model's default is 4 steps.
    assert submit(server, key, model="metered", duration=4).status_code == 200
    assert (
        submit(server, key, model="metered", duration=4, num_inference_steps=8).status_code == 200
    )
    assert [a for k, a in kinds(server, key_id) if k == "charge"] == [-12, -20]
    listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert listed["metered"]["price_per_step_second"] == 0.5
    assert listed["metered"]["max_steps"] == 8 and listed["metered"]["default_steps"] == 4
    assert listed["metered"]["price_per_second"] == 1.0
