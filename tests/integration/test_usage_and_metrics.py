"""Usage history (`GET /v1/requests`), `/metrics` and request-scoped logs over real HTTP, on
SQLite and on the real PostgreSQL."""

from __future__ import annotations

import io
import json
import logging
import secrets

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.integration.accounting import (
    account,
    headers,
    make_key,
    submit,
    wait_for_status,
    with_store,
)
from videoserve import clock
from videoserve.jobs import schema
from videoserve.jobs.store import JobStore, NewJob
from videoserve.observability import logs


def history(server, api_key: str, **params) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/requests", params=params, headers=headers(api_key))


def test_usage_history_pages_and_admin_view(make_server) -> None:
    server = make_server()
    mine, mine_id = make_key(server, "mine", credits=100)
    theirs, theirs_id = make_key(server, "theirs")
    admin, _ = make_key(server, "ops", admin=True)
    ids = [
        submit(server, mine, prompt=f"cat {i}", duration=4).json()["request_id"] for i in range(3)
    ]
    other = submit(server, theirs, duration=8).json()["request_id"]
    for request_id in ids:
        wait_for_status(server, mine, request_id, "COMPLETED")
    wait_for_status(server, theirs, other, "COMPLETED")

    first = history(server, mine, limit=2).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [r["id"] for r in first["data"]] == [ids[2], ids[1]]  # newest first
    assert first["last_id"] == ids[1]
    rest = history(server, mine, limit=2, after=first["last_id"]).json()
    assert [r["id"] for r in rest["data"]] == [ids[0]] and rest["has_more"] is False
    entry = rest["data"][0]
    assert entry["model"] == "sora-2-pro" and entry["served_by"] == "tiny-t2v"
    assert entry["status"] == "COMPLETED" and entry["key_id"] == mine_id
    assert entry["parameters"]["prompt"] == "cat 0" and entry["parameters"]["duration"] == 4
    assert (entry["cost"], entry["refunded"], entry["error"]) == (4, 0, None)
    assert entry["queue_time"] >= 0 and entry["inference_time"] > 0
    assert (entry["has_audio"], entry["audio_codec"]) == (False, None)  # tiny-t2v is silent
    assert entry["total_time"] >= entry["queue_time"]
    assert all(entry[k].endswith("Z") for k in ("created_at", "started_at", "finished_at"))

    # Another key sees only its own; ?key= is for admins.
    assert [r["id"] for r in history(server, theirs).json()["data"]] == [other]
    assert history(server, theirs, key=mine_id).status_code == 403
    assert [r["id"] for r in history(server, admin, key=mine_id).json()["data"]] == ids[::-1]
    everyone = {r["id"] for r in history(server, admin, limit=100).json()["data"]}
    assert {*ids, other} <= everyone
    assert history(server, admin, key=theirs_id).json()["data"][0]["cost"] == 8
    assert history(server, mine, limit=101).status_code == 400

    # Deleted and expired requests vanish from the history; what they cost stays spent.
    deleted = httpx.delete(f"{server.url}/v1/videos/{ids[2]}", headers=headers(mine))
    assert deleted.status_code == 200

    async def expire(store: JobStore) -> None:
        async with store.database.engine.begin() as conn:
            await conn.execute(
                sa.update(schema.jobs)
                .where(schema.jobs.c.id == ids[1])
                .values(expires_at=clock.now() - 1)
            )

    with_store(server, expire)
    assert [r["id"] for r in history(server, mine).json()["data"]] == [ids[0]]
    assert account(server, mine)["spent"] == 12


def metric_values(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_after_known_jobs(make_server) -> None:
    server = make_server(blocklist=["forbidden"])
    key = server.api_key  # unlimited: charged and refunded all the same
    done = submit(server, key, duration=4).json()["request_id"]
    wait_for_status(server, key, done, "COMPLETED")
    blocked = submit(server, key, prompt="forbidden fruit", duration=8).json()["request_id"]
    wait_for_status(server, key, blocked, "FAILED")

    async def queue_for_nobody(store: JobStore) -> None:
        # A job for a model no worker serves stays queued: the gauge must show it.
        await store.create(
            NewJob(
                id="video_" + secrets.token_hex(8),
                api_key_id="key_x",
                model="nobody",
                served_by="nobody",
                params={"prompt": "p"},
                max_attempts=1,
            )
        )

    with_store(server, queue_for_nobody)
    tiny = (("model", "tiny-t2v"),)
    values = wait_until(
        lambda: (v := metric_values(server)).get(("videoserve_workers_live", ())) == 1 and v
    )
    assert values[("videoserve_queue_depth", (("model", "nobody"),))] == 1
    assert values[("videoserve_queue_depth", tiny)] == 0
    assert values[("videoserve_jobs_running", tiny)] == 0
    finished = "videoserve_jobs_finished_total"
    assert values[(finished, (("model", "tiny-t2v"), ("status", "COMPLETED")))] == 1
    assert values[(finished, (("model", "tiny-t2v"), ("status", "FAILED")))] == 1
    assert values[("videoserve_credits_spent_total", ())] == 12
    assert values[("videoserve_credits_refunded_total", ())] == 8
    assert values[("videoserve_queue_time_seconds_count", tiny)] == 1
    assert values[("videoserve_inference_time_seconds_count", tiny)] == 1
    assert values[("videoserve_inference_time_seconds_sum", tiny)] > 0


@pytest.fixture
def json_log() -> io.StringIO:
    """Every `videoserve` log line of the test, as the JSON handler writes it."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    logger = logging.getLogger("videoserve")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_request_and_job_ids_in_json_logs(make_server, json_log: io.StringIO) -> None:
    server = make_server(blocklist=["forbidden"])
    key = server.api_key
    blocked = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "forbidden"},
        headers=headers(key) | {"X-Request-Id": "trace-abc.123"},
    )
    assert blocked.status_code == 200 and blocked.headers["X-Request-Id"] == "trace-abc.123"
    blocked_id = blocked.json()["request_id"]
    line = next(x for x in lines(json_log) if blocked_id in x["message"])
    assert line["request_id"] == "trace-abc.123" and line["logger"] == "videoserve.jobs"
    assert set(line) >= {"time", "level", "logger", "message"} and line["level"] == "INFO"

    fresh = httpx.get(f"{server.url}/v1/models", headers={"X-Request-Id": "bad id with spaces"})
    assert len(fresh.headers["X-Request-Id"]) == 32  # refused as given: a new id instead

    job = submit(server, key, duration=4).json()["request_id"]
    wait_for_status(server, key, job, "COMPLETED")
    done = wait_until(
        lambda: next((x for x in lines(json_log) if "completed in" in x["message"]), None)
    )
    assert done["job_id"] == job and "request_id" not in done
