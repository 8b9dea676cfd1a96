"""One deletion path, over real HTTP on SQLite and on the real PostgreSQL: `DELETE
/v1/videos/{id}` and the retention sweep both go through `JobService.purge`, which removes a
job's files and its row, and leaves nothing behind a worker that was still running it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import wait_until
from tests.integration.accounting import (
    StallingBackend,
    TestRegistry,
    headers,
    submit,
    wait_for_status,
)


def job_folder(server, job_id: str) -> Path:  # type: ignore[no-untyped-def]
    return server.data_dir / "blobs" / "jobs" / job_id


def gone(server, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    """The id answers 404 in both dialects."""
    auth = headers(server.api_key)
    segmind = httpx.get(f"{server.url}/v2/requests/{job_id}/status", headers=auth)
    openai = httpx.get(f"{server.url}/v1/videos/{job_id}", headers=auth)
    return segmind.status_code == 404 and openai.status_code == 404


def test_delete_of_a_running_video_leaves_no_files(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 1.0)})
    server = make_server(registry=registry)
    key = server.api_key
    job_id = submit(server, key, model="stall", duration=4).json()["request_id"]
    wait_for_status(server, key, job_id, "PROCESSING")
    deleted = httpx.delete(f"{server.url}/v1/videos/{job_id}", headers=headers(key))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert gone(server, job_id) and not job_folder(server, job_id).exists()
    # The worker loses its lease with the row, stops at its next step, and runs the next job.
    following = submit(server, key, duration=4).json()["request_id"]
    wait_for_status(server, key, following, "COMPLETED")
    assert not job_folder(server, job_id).exists()
    again = httpx.delete(f"{server.url}/v1/videos/{job_id}", headers=headers(key))
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


def test_retention_sweep_deletes_like_delete(make_server) -> None:
    server = make_server(retention_seconds=1.5, sweep_interval_seconds=0.2)
    key = server.api_key
    job_id = submit(server, key, duration=4).json()["request_id"]
    wait_for_status(server, key, job_id, "COMPLETED")
    assert any(job_folder(server, job_id).rglob("video.mp4"))
    wait_until(lambda: gone(server, job_id) and not job_folder(server, job_id).exists())
