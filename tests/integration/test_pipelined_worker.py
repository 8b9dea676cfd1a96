"""The pipelined worker and cold start, over real HTTP on SQLite and on the real PostgreSQL.

A stand-in backend gates each stage on an Event: `model_gates[prompt]` holds the model stage
(as a GPU busy for minutes), `media_gates[prompt]` holds the media stage (its frames are handed
over lazily and only materialize when the gate opens, as frames still coming off a GPU would),
and `load_gate` holds the model's load. So every overlap below is made, not hoped for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, wait_until
from tests.integration.accounting import (
    FailingBackend,
    TestRegistry,
    headers,
    status_of,
    submit,
    wait_for_status,
    with_store,
)
from videoserve.jobs import schema
from videoserve.jobs.records import Job
from videoserve.jobs.store import JobStore
from videoserve.jobs.workers import WorkerRegistry
from videoserve.models.backends.base import Cancelled, GeneratedVideo
from videoserve.worker import preload

GATE_TIMEOUT = 60.0  # a stand-in never outlives a test by much, even if a gate stays shut


class LazyFrames:
    """Frames that exist only once `gate` opens: the encoder's np.asarray waits for them."""

    def __init__(self, frames: np.ndarray, gate: threading.Event) -> None:
        self._frames = frames
        self._gate = gate

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self._gate.wait(GATE_TIMEOUT)
        return self._frames if dtype is None else self._frames.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self)[index]


class GatedBackend(FailingBackend):
    """Makes small grey videos; each stage of a prompt's job may wait on an Event."""

    def __init__(
        self, name: str, load_gate: threading.Event | None = None, load_error: str = ""
    ) -> None:
        super().__init__(name)
        self.model_gates: dict[str, threading.Event] = {}
        self.media_gates: dict[str, threading.Event] = {}
        self.load_gate = load_gate
        self.load_error = load_error

    def load(self) -> None:
        if self.load_gate is not None:
            self.load_gate.wait(GATE_TIMEOUT)
        if self.load_error:
            raise OSError(self.load_error)

    def generate(self, params, inputs, on_progress, should_stop):  # type: ignore[no-untyped-def]
        gate = self.model_gates.get(params.prompt)
        deadline = time.monotonic() + GATE_TIMEOUT
        while gate is not None and not gate.wait(0.02):
            if should_stop() or time.monotonic() > deadline:
                raise Cancelled()
        on_progress(1, 1)
        frames = np.full((9, 64, 64, 3), 128, dtype=np.uint8)
        media_gate = self.media_gates.get(params.prompt)
        handed = frames if media_gate is None else LazyFrames(frames, media_gate)
        return GeneratedVideo(handed, fps=8.0, model=self.name)  # type: ignore[arg-type]


def gated_server(
    make_server: Callable[..., LiveServer], model_cache: Path, **overrides: Any
) -> tuple[LiveServer, GatedBackend]:
    backend = overrides.pop("backend", None) or GatedBackend("gated")
    registry = TestRegistry(model_cache, {backend.name: (backend, 0.0)})
    return make_server(registry=registry, **overrides), backend


def job_of(server: LiveServer, request_id: str) -> Job:
    async def read(store: JobStore) -> Job:
        job = await store.get(request_id)
        assert job is not None
        return job

    return with_store(server, read)


def request(server: LiveServer, prompt: str, model: str = "gated") -> str:
    response = submit(server, server.api_key, model=model, prompt=prompt, duration=4)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def waiting_on_media(server: LiveServer, request_id: str) -> bool:
    """Its model is done (past its last step: the phases after denoising) but it is not
    finished: its frames wait. (Progress reaches 100 only when COMPLETED, issue 25.)"""
    body = status_of(server, server.api_key, request_id)
    return body["status"] == "PROCESSING" and body.get("phase") in ("decoding", "encoding_video")


def attempt_files(server: LiveServer, request_id: str, attempt: int) -> list[Path]:
    marker = f"jobs/{request_id}/{attempt}/"
    return [p for p in server.data_dir.rglob("*") if p.is_file() and marker in p.as_posix()]


def draining(server: LiveServer) -> bool:
    """The server's worker has announced it is draining (in the worker registry)."""

    async def read(store: JobStore) -> bool:
        return any(row["draining"] for row in await WorkerRegistry(store.database).live(60))

    return with_store(server, read)


def admin_workers(server: LiveServer, admin_key: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/v1/admin/workers", headers=headers(admin_key))
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "sequential"])
def test_next_model_runs_while_the_last_video_is_stored(
    make_server, model_cache: Path, pipeline: bool
) -> None:
    server, backend = gated_server(make_server, model_cache, worker_pipeline=pipeline)
    media = backend.media_gates["first"] = threading.Event()
    first, second, third = (request(server, p) for p in ("first", "second", "third"))
    if pipeline:
        # The second job's model ran while the first was still encoding; the third is not
        # claimed while the second's frames wait for the slot's media stage (the bound).
        wait_until(lambda: waiting_on_media(server, second))
        assert status_of(server, server.api_key, first)["status"] == "PROCESSING"
        assert status_of(server, server.api_key, third)["status"] == "QUEUED"
    else:
        wait_until(lambda: waiting_on_media(server, first))
    media.set()
    for request_id in (first, second, third):
        wait_for_status(server, server.api_key, request_id, "COMPLETED")
    a, b, c = (job_of(server, i) for i in (first, second, third))
    assert a.finished_at and b.started_at and c.started_at and b.finished_at
    if pipeline:
        assert b.started_at < a.finished_at
    else:
        assert b.started_at >= a.finished_at
    assert c.started_at >= a.finished_at  # never two jobs waiting on one slot's media stage
    assert b.finished_at >= a.finished_at  # videos are stored in the order the models ran
    result = httpx.get(f"{server.url}/v2/requests/{second}", headers=headers(server.api_key))
    assert httpx.get(result.json()["output"]).status_code == 200


def test_cancel_of_a_job_waiting_on_media_stores_no_video(make_server, model_cache: Path) -> None:
    server, backend = gated_server(make_server, model_cache)
    media = backend.media_gates["first"] = threading.Event()
    first, second = request(server, "first"), request(server, "second")
    wait_until(lambda: waiting_on_media(server, second))
    answer = httpx.post(
        f"{server.url}/v2/requests/{second}/cancel", headers=headers(server.api_key)
    )
    assert answer.status_code == 200 and answer.json()["cancelled"] is True
    media.set()
    wait_for_status(server, server.api_key, first, "COMPLETED")
    failed = wait_for_status(server, server.api_key, second, "FAILED")
    assert (failed["code"], failed["error"]) == ("cancelled", "cancelled by the user")
    assert attempt_files(server, second, 1) == []  # never encoded nor uploaded


def test_a_lost_lease_discards_the_media_stage_upload(make_server, model_cache: Path) -> None:
    server, backend = gated_server(make_server, model_cache, lease_seconds=3)
    media = backend.media_gates["first"] = threading.Event()
    first = request(server, "first")
    wait_until(lambda: waiting_on_media(server, first))

    async def take_over(store: JobStore) -> None:  # as if the reaper gave it to another worker
        async with store.database.transaction() as conn:
            jobs = schema.jobs
            await conn.execute(
                jobs.update().where(jobs.c.id == first).values(lease_token="taken-over")
            )

    with_store(server, take_over)
    media.set()  # attempt 1 encodes and uploads, then its fenced COMPLETED is refused
    # The taker never heartbeats, so the reaper requeues the job and attempt 2 completes it.
    done = wait_for_status(server, server.api_key, first, "COMPLETED")
    result = httpx.get(f"{server.url}/v2/requests/{first}", headers=headers(server.api_key))
    assert f"jobs/{first}/2/" in result.json()["output"], done
    assert attempt_files(server, first, 1) == []
    assert attempt_files(server, first, 2)


def test_drain_finishes_the_job_in_the_media_stage(make_server, model_cache: Path) -> None:
    server, backend = gated_server(make_server, model_cache)
    media = backend.media_gates["first"] = threading.Event()
    model = backend.model_gates["second"] = threading.Event()
    first, second, third = (request(server, p) for p in ("first", "second", "third"))
    wait_until(lambda: waiting_on_media(server, first))
    wait_until(lambda: status_of(server, server.api_key, second)["status"] == "PROCESSING")
    stopping = threading.Thread(target=server.stop)  # what SIGTERM does to uvicorn
    stopping.start()
    wait_until(lambda: draining(server))  # the worker claims no more from here on
    media.set()
    model.set()
    stopping.join(timeout=60)
    assert not stopping.is_alive()
    statuses = {i: job_of(server, i).status.value for i in (first, second, third)}
    assert statuses == {first: "COMPLETED", second: "COMPLETED", third: "QUEUED"}


def test_preload_gates_readiness_and_reports_load_times(make_server, model_cache: Path) -> None:
    loading = threading.Event()
    backend = GatedBackend("gated", load_gate=loading)
    server, _ = gated_server(
        make_server, model_cache, backend=backend, preload=["gated"], lease_seconds=3
    )
    admin = server.create_key("ops", admin=True)
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["status"] == "loading" and "gated" in ready.json()["error"]
    waiting = request(server, "queued while loading")
    rows = wait_until(lambda: admin_workers(server, admin))
    assert rows[0]["ready"] is False and rows[0]["loaded_models"] == []
    assert status_of(server, server.api_key, waiting)["status"] == "QUEUED"  # claims nothing

    loading.set()
    ready = wait_until(lambda: (r := httpx.get(f"{server.url}/readyz")).status_code == 200 and r)
    loaded = ready.json()["models_loaded"]
    assert [m["model"] for m in loaded] == ["gated"] and loaded[0]["preloaded"] is True
    assert loaded[0]["load_seconds"] > 0 and ready.json()["models_failed"] == []
    rows = wait_until(lambda: [r for r in admin_workers(server, admin) if r["ready"]])
    assert [(m["model"], m["preloaded"]) for m in rows[0]["loaded_models"]] == [("gated", True)]
    assert rows[0]["loaded_models"][0]["load_seconds"] == loaded[0]["load_seconds"]
    wait_for_status(server, server.api_key, waiting, "COMPLETED")


def test_loaded_models_follow_the_pool_and_each_reload_is_timed(
    make_server, model_cache: Path
) -> None:
    """Three tiny models, a pool of two: the one unloaded to make room leaves `loaded_models`
    and `/readyz`, and comes back with a load of its own when a job needs it again."""
    registry = TestRegistry(model_cache, {"tiny-a": (None, 0.0), "tiny-b": (None, 0.0)})
    server = make_server(registry=registry, lease_seconds=3)  # a beat a second
    admin = server.create_key("ops", admin=True)

    def run(model: str) -> None:
        job = request(server, f"on {model}", model=model)
        wait_for_status(server, server.api_key, job, "COMPLETED")

    def shown() -> tuple[list[str], list[str]]:
        rows = admin_workers(server, admin)
        ready = httpx.get(f"{server.url}/readyz").json()
        return (
            sorted(m["model"] for m in rows[0]["loaded_models"]),
            sorted(m["model"] for m in ready["models_loaded"]),
        )

    for model in ("tiny-a", "tiny-b"):
        run(model)
    wait_until(lambda: shown() == (["tiny-a", "tiny-b"], ["tiny-a", "tiny-b"]))
    run("tiny-t2v")  # the pool holds two: tiny-a, the least recently used, is unloaded
    wait_until(lambda: shown() == (["tiny-b", "tiny-t2v"], ["tiny-b", "tiny-t2v"]))
    assert not registry.is_loaded("tiny-a") and registry.is_loaded("tiny-t2v")

    run("tiny-a")  # loaded again, by this job: a cold start, timed and shown again
    wait_until(lambda: shown() == (["tiny-a", "tiny-t2v"], ["tiny-a", "tiny-t2v"]))
    (reload,) = [
        m for m in admin_workers(server, admin)[0]["loaded_models"] if m["model"] == "tiny-a"
    ]
    assert reload["preloaded"] is False and reload["load_seconds"] > 0 and reload["error"] is None


def test_a_backend_that_cannot_say_it_is_loaded_still_has_its_first_load_timed(
    make_server, model_cache: Path
) -> None:
    """A backend without `loaded` (as a plugin may be) counts as loaded once it exists; its
    first job's load is still timed and shown."""
    server, backend = gated_server(make_server, model_cache, lease_seconds=3)
    assert not hasattr(backend, "loaded")
    admin = server.create_key("ops", admin=True)
    wait_for_status(server, server.api_key, request(server, "cold"), "COMPLETED")
    rows = wait_until(lambda: [r for r in admin_workers(server, admin) if r["loaded_models"]])
    assert [(m["model"], m["preloaded"]) for m in rows[0]["loaded_models"]] == [("gated", False)]
    ready = httpx.get(f"{server.url}/readyz").json()
    assert [m["model"] for m in ready["models_loaded"]] == ["gated"]


def test_a_model_that_fails_to_preload_is_reported_and_not_served(
    make_server, model_cache: Path
) -> None:
    broken = GatedBackend("broken", load_error="weights are corrupt: unexpected EOF")
    fine = GatedBackend("fine")
    registry = TestRegistry(model_cache, {"broken": (broken, 0.0), "fine": (fine, 0.0)})
    server = make_server(
        registry=registry, preload=["broken", "fine"], worker_models=["broken", "fine"]
    )
    ready = wait_until(lambda: (r := httpx.get(f"{server.url}/readyz")).status_code == 200 and r)
    (failed,) = ready.json()["models_failed"]
    assert failed["model"] == "broken" and "weights are corrupt" in failed["error"]
    assert [m["model"] for m in ready.json()["models_loaded"]] == ["fine"]
    stuck = request(server, "waits for a worker that can load it", model="broken")
    later = request(server, "runs here", model="fine")
    wait_for_status(server, server.api_key, later, "COMPLETED")
    assert status_of(server, server.api_key, stuck)["status"] == "QUEUED"  # not a model_error


def test_preload_names_are_checked_at_startup(model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"fine": (GatedBackend("fine"), 0.0)})
    served = ["fine"]
    assert preload.models_to_preload(registry, ["all"], served) == ["fine"]
    assert preload.models_to_preload(registry, ["fine", "fine"], served) == ["fine"]
    with pytest.raises(ValueError, match="'nope' is not configured"):
        preload.models_to_preload(registry, ["nope"], served)
    with pytest.raises(ValueError, match="'tiny-t2v' is not served by this worker"):
        preload.models_to_preload(registry, ["tiny-t2v"], served)
