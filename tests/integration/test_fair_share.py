"""Fair share across keys and priority classes over real HTTP, on SQLite and PostgreSQL.

One worker slot runs a gated model: a blocker job holds it while the test queues the rest,
then the gate opens and the order in which the model was entered is the claim order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.conftest import LiveServer, wait_until
from tests.integration.accounting import (
    FailingBackend,
    TestRegistry,
    headers,
    make_key,
    wait_for_status,
    with_store,
)
from videoserve.jobs import schema
from videoserve.jobs.fairness import Priority
from videoserve.jobs.keys import KeyStore, Scheduling
from videoserve.jobs.store import JobStore
from videoserve.models.backends.base import GeneratedVideo

GATED = "gated"
RUN1 = ("--max-running", "1")


class GatedBackend(FailingBackend):
    """Records each job's prompt as the model is entered, then waits for the gate."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = threading.Event()
        self.entered: list[str] = []

    def generate(self, params, image, on_progress, should_stop):  # type: ignore[no-untyped-def]
        self.entered.append(params.prompt)
        deadline = time.monotonic() + 60  # never outlive a test by much
        while not self.gate.wait(0.02) and not should_stop() and time.monotonic() < deadline:
            pass
        frames = np.full((5, 64, 64, 3), 128, dtype=np.uint8)
        return GeneratedVideo(frames=frames, fps=8.0, model=self.name)


def _server(make_server: Any, model_cache: Path, **overrides: Any) -> tuple[LiveServer, Any]:
    backend = GatedBackend(GATED)
    registry = TestRegistry(model_cache, {GATED: (backend, 0.0)})
    return make_server(registry=registry, worker_concurrency=1, **overrides), backend


def _key(server: LiveServer, name: str, **scheduling: Any) -> str:
    async def create(store: JobStore) -> str:
        chosen = Scheduling(**scheduling)
        return (await KeyStore(store.database).create(name, scheduling=chosen))[1]

    return with_store(server, create)


def _submit(server: LiveServer, key: str, prompt: str, priority: str | None = None) -> str:
    extra = {} if priority is None else {"X-Queue-Priority": priority}
    answer = httpx.post(
        f"{server.url}/v2/{GATED}",
        json={"prompt": prompt, "duration": 4},
        headers=headers(key) | extra,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def _hold(server: LiveServer, backend: GatedBackend, key: str | None = None) -> None:
    """The one worker slot busy with a blocker job (of `key`, else a key of its own), so that
    what follows queues."""
    key = key or _key(server, "blocker")
    blocker = _submit(server, key, "blocker")
    wait_for_status(server, key, blocker, "PROCESSING")
    wait_until(lambda: backend.entered == ["blocker"])


def _run_all(backend: GatedBackend, count: int) -> list[str]:
    """Open the gate; the prompts in the order the model was entered, once all `count` ran."""
    backend.gate.set()
    wait_until(lambda: len(backend.entered) >= count, timeout=60)
    return backend.entered[1:]  # the blocker first


@pytest.mark.parametrize("policy", ["fair", "fifo"])
def test_a_light_keys_job_runs_right_after_the_running_one_not_after_the_flood(
    make_server, model_cache, policy
) -> None:
    server, backend = _server(make_server, model_cache, scheduling_policy=policy)
    heavy, light = _key(server, "heavy"), _key(server, "light")
    _hold(server, backend, heavy)  # the heavy key's first job runs
    for n in range(6):
        _submit(server, heavy, f"heavy-{n}")
    last = _submit(server, light, "light-0")
    order = _run_all(backend, 8)
    if policy == "fair":
        assert order[0] == "light-0", order
    else:  # the baseline: oldest first, the light key behind the whole flood
        assert order == [*(f"heavy-{n}" for n in range(6)), "light-0"], order
    wait_for_status(server, light, last, "COMPLETED")


def test_shares_two_to_one_give_two_claims_to_one(make_server, model_cache) -> None:
    server, backend = _server(make_server, model_cache)
    _hold(server, backend)
    double, single = _key(server, "double", share=2), _key(server, "single", share=1)
    for n in range(6):
        _submit(server, double, f"double-{n}")
    for n in range(6):
        _submit(server, single, f"single-{n}")
    order = _run_all(backend, 13)
    first_nine = Counter(prompt.split("-")[0] for prompt in order[:9])
    assert first_nine == {"double": 6, "single": 3}, order
    # Within a key its jobs keep their own order.
    assert [p for p in order if p.startswith("single")] == [f"single-{n}" for n in range(6)]


def test_three_keys_with_shares_three_two_one(make_server, model_cache) -> None:
    server, backend = _server(make_server, model_cache)
    _hold(server, backend)
    keys = {name: _key(server, name, share=share) for name, share in (("a", 3), ("b", 2), ("c", 1))}
    for name, key in keys.items():
        for n in range(6):
            _submit(server, key, f"{name}-{n}")
    order = _run_all(backend, 19)
    first_twelve = Counter(prompt.split("-")[0] for prompt in order[:12])
    assert first_twelve == {"a": 6, "b": 4, "c": 2}, order


def test_higher_priority_classes_are_claimed_first(make_server, model_cache) -> None:
    server, backend = _server(make_server, model_cache)
    _hold(server, backend)
    key = _key(server, "bounded-high", max_priority=Priority.HIGH)
    _submit(server, key, "low", "low")
    _submit(server, key, "normal-0")
    _submit(server, key, "normal-1", "normal")
    high = _submit(server, key, "high", "HIGH")  # the class name is case-blind
    order = _run_all(backend, 5)
    assert order == ["high", "normal-0", "normal-1", "low"], order
    body = wait_for_status(server, key, high, "COMPLETED")
    assert body["priority"] == "high"
    video = httpx.get(f"{server.url}/v1/videos/{high}", headers=headers(key)).json()
    assert video["priority"] == "high"


def test_priority_bound_403_and_unknown_class_400_in_both_dialects(
    make_server, model_cache
) -> None:
    server, _ = _server(make_server, model_cache, embedded_worker=False)
    plain = _key(server, "plain")  # max_priority: normal (the default)
    body = {"prompt": "a lighthouse", "duration": 4}
    over = httpx.post(
        f"{server.url}/v2/{GATED}", json=body, headers=headers(plain) | {"X-Queue-Priority": "high"}
    )
    assert over.status_code == 403, over.text
    assert "at most 'normal'" in over.json()["error"] and "X-Queue-Priority" in over.json()["error"]
    unknown = httpx.post(
        f"{server.url}/v2/{GATED}",
        json=body,
        headers=headers(plain) | {"X-Queue-Priority": "urgent"},
    )
    assert unknown.status_code == 400, unknown.text
    assert "low, normal, high" in unknown.json()["error"]
    # The OpenAI dialect: the same rules, in its envelope.
    openai_over = httpx.post(
        f"{server.url}/v1/videos",
        json={"prompt": "a lighthouse", "model": GATED},
        headers=headers(plain) | {"X-Queue-Priority": "high"},
    )
    assert openai_over.status_code == 403, openai_over.text
    assert "at most 'normal'" in openai_over.json()["error"]["message"]
    openai_unknown = httpx.post(
        f"{server.url}/v1/videos",
        json={"prompt": "a lighthouse", "model": GATED},
        headers=headers(plain) | {"X-Queue-Priority": "urgent"},
    )
    assert openai_unknown.status_code == 400, openai_unknown.text
    assert openai_unknown.json()["error"]["param"] == "X-Queue-Priority"
    # Below the bound is fine; an admin key may ask any class.
    low = httpx.post(
        f"{server.url}/v2/{GATED}", json=body, headers=headers(plain) | {"X-Queue-Priority": "low"}
    )
    assert low.status_code == 200 and low.json()["status"] == "QUEUED"
    admin, _ = make_key(server, "admin", admin=True)
    high = httpx.post(
        f"{server.url}/v2/{GATED}", json=body, headers=headers(admin) | {"X-Queue-Priority": "high"}
    )
    assert high.status_code == 200, high.text


def test_low_priority_jobs_are_not_demand(make_server, model_cache) -> None:
    server, _ = _server(make_server, model_cache, embedded_worker=False)
    key = _key(server, "mixed")
    for n in range(3):
        _submit(server, key, f"low-{n}", "low")
    _submit(server, key, "normal")
    admin, _ = make_key(server, "admin", admin=True)
    answer = httpx.get(f"{server.url}/v1/admin/scaling", headers=headers(admin))
    assert answer.status_code == 200, answer.text
    entry = next(e for e in answer.json()["data"] if e["model"] == GATED)
    assert entry["demand"] == 1
    text = httpx.get(f"{server.url}/metrics").text
    gauges = {
        (sample.name, sample.labels.get("model", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert gauges[("videoserve_queue_demand", GATED)] == 1
    assert gauges[("videoserve_queue_depth", GATED)] == 4


def test_keys_update_changes_share_priority_bound_and_running_cap(make_server, model_cache) -> None:
    from videoserve.cli.main import app

    server, _ = _server(make_server, model_cache, embedded_worker=False, auth_cache_seconds=0)
    key = _key(server, "later")
    env = {"VIDEOSERVE_DATABASE_URL": server.settings.database_url or ""}
    data_dir = ["--data-dir", str(server.data_dir)]
    key_id = with_store(server, lambda store: KeyStore(store.database).list())[-1].id
    before = httpx.post(
        f"{server.url}/v2/{GATED}",
        json={"prompt": "x", "duration": 4},
        headers=headers(key) | {"X-Queue-Priority": "high"},
    )
    assert before.status_code == 403
    updated = CliRunner().invoke(
        app,
        [
            *("keys", "update", key_id, "--share", "2.5"),
            *("--max-priority", "high"),
            *RUN1,
            *data_dir,
        ],
        env=env,
    )
    assert updated.exit_code == 0, updated.output
    assert "share 2.5, max priority high, max running 1" in updated.output
    record = with_store(server, lambda store: KeyStore(store.database).get(key_id))
    assert record is not None
    assert (record.share, record.max_priority, record.max_running) == (2.5, 2, 1)
    after = httpx.post(
        f"{server.url}/v2/{GATED}",
        json={"prompt": "x", "duration": 4},
        headers=headers(key) | {"X-Queue-Priority": "high"},
    )
    assert after.status_code == 200, after.text
    # --max-running 0 removes the key's own cap; a bad share is refused, naming it.
    cleared = CliRunner().invoke(
        app, ["keys", "update", key_id, "--max-running", "0", *data_dir], env=env
    )
    assert cleared.exit_code == 0 and "max running the server's" in cleared.output
    bad = CliRunner().invoke(app, ["keys", "update", key_id, "--share", "0", *data_dir], env=env)
    assert bad.exit_code != 0 and "share" in bad.output
    nothing = CliRunner().invoke(app, ["keys", "update", key_id, *data_dir], env=env)
    assert nothing.exit_code == 2 and "nothing to update" in nothing.output
    unknown = CliRunner().invoke(
        app, ["keys", "update", "key_nope", "--share", "2", *data_dir], env=env
    )
    assert unknown.exit_code == 1 and "no key" in unknown.output


def test_a_keys_own_running_cap_holds(make_server, model_cache) -> None:
    backend = GatedBackend(GATED)
    registry = TestRegistry(model_cache, {GATED: (backend, 0.0)})
    server = make_server(registry=registry, worker_concurrency=2)
    capped, other = _key(server, "capped", max_running=1), _key(server, "other")
    first = _submit(server, capped, "capped-0")
    second = _submit(server, capped, "capped-1")
    wait_for_status(server, capped, first, "PROCESSING")
    late = _submit(server, other, "other-0")  # queued after capped-1, claimed before it
    wait_for_status(server, other, late, "PROCESSING")
    assert wait_for_status(server, capped, second, "QUEUED")["status"] == "QUEUED"
    backend.gate.set()
    wait_for_status(server, capped, second, "COMPLETED")


def test_clients_send_the_priority(make_server, model_cache) -> None:
    import videoserve

    server, _ = _server(make_server, model_cache, embedded_worker=False)
    key = _key(server, "client", max_priority=Priority.HIGH)
    with videoserve.Client(api_key=key, base_url=f"{server.url}/v1") as client:
        low = client.submit_async(GATED, prompt="a kite", duration=4, priority="low")
        assert low.status()["priority"] == "low"
        with pytest.raises(videoserve.InvalidRequest, match="low, normal, high"):
            client.submit_async(GATED, prompt="a kite", duration=4, priority="urgent")

    async def high() -> str:
        async with videoserve.AsyncClient(api_key=key, base_url=f"{server.url}/v1") as client:
            job = await client.submit_async(GATED, prompt="a kite", duration=4, priority="high")
            return (await job.status())["priority"]

    assert asyncio.run(high()) == "high"


def _key_row(server: LiveServer, key_id: str) -> dict[str, Any]:
    async def read(store: JobStore) -> dict[str, Any]:
        keys = KeyStore(store.database)
        found = await keys.get(key_id)
        assert found is not None
        async with store.database.connect() as conn:
            tag = (
                await conn.execute(
                    sa.select(schema.api_keys.c.finish_tag).where(schema.api_keys.c.id == key_id)
                )
            ).scalar_one()
        return {"name": found.name, "created_at": found.created_at, "finish_tag": tag}

    return with_store(server, read)


@pytest.mark.parametrize("credits", [None, 8.0], ids=["unlimited", "charged"])
def test_a_submit_stamps_its_key_in_its_own_write_and_a_refused_one_not_at_all(
    make_server, model_cache, credits
) -> None:
    """The key's finish tag moves by one job's expected seconds / share per stored job, in
    the submit's own statement or transaction (both dialects, charged or not); a submit the
    key cannot pay leaves it where it was, and the key's other columns are untouched."""
    backend = GatedBackend(GATED)
    registry = TestRegistry(model_cache, {GATED: (backend, 1.0)})  # 4 s: 4 credits a job
    server = make_server(registry=registry, worker_concurrency=1, fair_default_job_seconds=10.0)
    _hold(server, backend)
    key, key_id = make_key(server, "stamped", credits=credits)
    before = _key_row(server, key_id)
    ids = [_submit(server, key, f"job-{n}") for n in range(2)]
    after = _key_row(server, key_id)
    assert after["finish_tag"] == pytest.approx(before["finish_tag"] + 20.0, abs=1e-6), after
    assert (after["name"], after["created_at"]) == (before["name"], before["created_at"])
    tags = sorted(with_store(server, lambda store: _start_tags(store, ids)))
    assert tags[1] - tags[0] == pytest.approx(10.0, abs=1e-6), tags
    if credits is not None:  # 8 credits paid for both; the third is refused
        refused = httpx.post(
            f"{server.url}/v2/{GATED}",
            json={"prompt": "job-2", "duration": 4},
            headers=headers(key),
            timeout=30,
        )
        assert refused.status_code == 406, refused.text  # Segmind's answer to no credits
        assert refused.json()["code"] == "insufficient_credits"
        assert _key_row(server, key_id)["finish_tag"] == after["finish_tag"]
    backend.gate.set()


async def _start_tags(store: JobStore, ids: list[str]) -> list[float]:
    jobs = schema.jobs
    async with store.database.connect() as conn:
        rows = await conn.execute(sa.select(jobs.c.start_tag).where(jobs.c.id.in_(ids)))
        return [float(tag) for (tag,) in rows]
