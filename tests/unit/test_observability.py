"""Log formats, the request-id middleware, and which calls count as submits for rate limits."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from videoserve.api import create_app
from videoserve.api.ratelimit import _bucket
from videoserve.models.registry import ModelRegistry
from videoserve.observability import logs
from videoserve.settings import Settings


def _record(logger: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, message, (), None)


def test_json_lines_carry_the_context() -> None:
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    token = logs.request_id.set("req-1")
    try:
        with logs.job_context("video_1"):
            handler.handle(_record("videoserve.worker", "job started"))
        handler.handle(_record("videoserve.api", 'quote " and\nnewline'))
    finally:
        logs.request_id.reset(token)
    handler.handle(_record("videoserve.api", "outside"))
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "req-1" and first["job_id"] == "video_1"
    assert first["level"] == "WARNING" and first["logger"] == "videoserve.worker"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", first["time"])
    assert second["message"] == 'quote " and\nnewline' and "job_id" not in second
    assert set(third) == {"time", "level", "logger", "message"}


def test_text_lines_for_people() -> None:
    stream = io.StringIO()
    handler = logs.make_handler("text", stream)
    with logs.job_context("video_9"):
        handler.handle(_record("videoserve.worker", "working"))
    handler.handle(_record("videoserve.worker", "idle"))
    working, idle = stream.getvalue().splitlines()
    assert working.endswith("WARNING videoserve.worker [job=video_9]: working")
    assert idle.endswith("WARNING videoserve.worker: idle")


async def test_request_id_middleware_echoes_or_mints() -> None:
    app = FastAPI()
    seen: list[str | None] = []

    @app.get("/")
    async def index() -> dict[str, str]:
        seen.append(logs.request_id.get())
        return {}

    wrapped = logs.RequestIdMiddleware(app)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        given = await client.get("/", headers={"X-Request-Id": "abc-123"})
        minted = await client.get("/")
        refused = await client.get("/", headers={"X-Request-Id": "x" * 200})
    assert given.headers["x-request-id"] == "abc-123" == seen[0]
    assert re.fullmatch(r"[0-9a-f]{32}", minted.headers["x-request-id"])
    assert minted.headers["x-request-id"] == seen[1]
    assert refused.headers["x-request-id"] != "x" * 200


def test_submit_bucket_matches_the_routes_that_create_jobs_or_characters(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, aliases={"sora-2-pro": "tiny-t2v"})
    app = create_app(settings)
    registry = ModelRegistry.from_settings(settings)
    fake_app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(registry=registry)))
    creating = {
        "/v2/{model}",
        "/v1/{model}",
        "/v1/videos",
        "/v1/videos/{video_id}/remix",
        "/v1/videos/extensions",
        "/v1/videos/edits",
        "/v1/videos/characters",  # a decode of the caller's clip: a submit's cost (issue 23)
    }
    for path, operations in app.openapi()["paths"].items():
        concrete = path.replace("{model}", "sora-2-pro")
        concrete = re.sub(r"\{[a-z_]+\}", "video_1", concrete)
        for method in operations:
            scope = {"method": method.upper(), "path": concrete, "app": fake_app}
            expected = "submit" if method == "post" and path in creating else "status"
            assert _bucket(scope) == expected, (method, path)
    # A POST to a name that is no model is a 404, counted with the status calls.
    assert _bucket({"method": "POST", "path": "/v1/no-such-model", "app": fake_app}) == "status"
    assert _bucket({"method": "POST", "path": "/v2/tiny-t2v", "app": fake_app}) == "submit"


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, /metrics of any process shows the sum of all of them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    setup = (
        "from videoserve.observability.metrics import Metrics\n"
        "from videoserve.settings import Settings\n"
        "m = Metrics(['tiny-t2v'], multiprocess_dir=Settings().prometheus_multiproc_dir)\n"
    )
    for amount in (8, 4):  # two processes that charged credits, then exited
        subprocess.run(
            [sys.executable, "-c", setup + f"m.credits('charge', {amount})"], env=env, check=True
        )
    scrape = subprocess.run(
        [sys.executable, "-c", setup + "print(m.render().decode())"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "videoserve_credits_spent_total 12.0" in scrape.stdout.splitlines()


def test_request_ids_do_not_follow_a_seeded_random_or_repeat_in_a_forked_child() -> None:
    import os
    import random

    from videoserve.observability.logs import new_request_id

    random.seed(7)  # a model seeding the module's generator for reproducibility
    first = new_request_id()
    random.seed(7)
    assert new_request_id() != first
    assert len(first) == 32 and int(first, 16) >= 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, through the pipe
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != new_request_id()
