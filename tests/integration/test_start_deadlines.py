"""Start deadlines (`X-Start-Timeout`, `VIDEOSERVE_START_TIMEOUT_SECONDS`) over real HTTP, on
SQLite and PostgreSQL: a job no worker starts in time ends FAILED `expired`, refunded in the
same transaction, with one `video.failed` webhook, even with two API processes sweeping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import videoserve
from tests.conftest import LiveServer, wait_until
from tests.integration.accounting import (
    TestRegistry,
    headers,
    ledger_of,
    make_key,
    status_of,
    stored_balance,
    wait_for_status,
)
from tests.integration.test_webhooks import FAST, Receiver, secret_of
from videoserve import clock
from videoserve.jobs.states import Status
from videoserve.jobs.store import NewJob

PAID = "paid-tiny"  # the tiny model at 1 credit a second


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _submit(
    server: LiveServer, key: str, timeout: str | None, *, webhook: str | None = None
) -> httpx.Response:
    extra = {} if timeout is None else {"X-Start-Timeout": timeout}
    return httpx.post(
        f"{server.url}/v2/{PAID}",
        params={"webhook": webhook} if webhook else None,
        json={"prompt": "a lighthouse at dusk", "duration": 4},
        headers=headers(key) | extra,
        timeout=30,
    )


def _queue_only(make_server: Any, model_cache: Any, **overrides: Any) -> LiveServer:
    """A server with no worker at all: nothing it queues is ever claimed."""
    return make_server(
        registry=TestRegistry(model_cache, {PAID: (None, 1.0)}),
        embedded_worker=False,
        allow_private_urls=True,
        **FAST,
        **overrides,
    )


def test_unstarted_jobs_expire_once_refunded_with_one_webhook_across_two_api_processes(
    make_server, model_cache, receiver
) -> None:
    first = _queue_only(make_server, model_cache)
    # A second API process on the same database: both sweep, both dispatch webhooks.
    second = _queue_only(make_server, model_cache, database_url=first.settings.database_url)
    key, key_id = make_key(first, "deadlines", credits=100)
    receiver.secret = secret_of(first, key)
    ids = []
    for n in range(6):
        server = (first, second)[n % 2]
        answer = _submit(server, key, "0.5", webhook=f"{receiver.url}/hook")
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["request_id"])

    for request_id in ids:
        body = wait_for_status(first, key, request_id, "FAILED", timeout=30)
        assert body["code"] == "expired", body
        assert "start deadline" in body["error"]
    # OpenAI's dialect shows the same code.
    video = httpx.get(f"{second.url}/v1/videos/{ids[0]}", headers=headers(key)).json()
    assert video["status"] == "failed" and video["error"]["code"] == "expired"

    entries = ledger_of(first, key_id)
    for request_id in ids:
        kinds = sorted(e.kind for e in entries if e.job_id == request_id)
        assert kinds == ["charge", "refund"], (request_id, kinds)
        refund = next(e for e in entries if e.job_id == request_id and e.kind == "refund")
        assert refund.amount == 4.0 and "start deadline" in (refund.note or "")
    assert stored_balance(first, key_id) == 100

    wait_until(lambda: len(receiver.at("/hook")) >= len(ids), timeout=30)
    # A later job's event, through the other process, fences the first ones: by the time it
    # arrives both dispatchers have emitted what they would for the earlier jobs.
    fence = _submit(second, key, "0.2", webhook=f"{receiver.url}/fence").json()["request_id"]
    wait_until(lambda: receiver.at("/fence"), timeout=30)
    events = [got.event for got in receiver.at("/hook")]
    assert sorted(e["data"]["id"] for e in events) == sorted(ids)
    assert all(e["type"] == "video.failed" and e["data"]["failure"] == "expired" for e in events)
    assert all(got.verified for got in receiver.at("/hook"))
    assert status_of(first, key, fence)["code"] == "expired"


def test_server_default_start_timeout_applies_without_the_header(make_server, model_cache) -> None:
    server = _queue_only(make_server, model_cache, start_timeout_seconds=0.3)
    key, key_id = make_key(server, "default", credits=10)
    request_id = _submit(server, key, None).json()["request_id"]
    body = wait_for_status(server, key, request_id, "FAILED", timeout=30)
    assert body["code"] == "expired"
    assert [e.kind for e in ledger_of(server, key_id) if e.job_id == request_id] == [
        "charge",
        "refund",
    ]


def test_a_job_claimed_before_its_deadline_completes(make_server, model_cache) -> None:
    server = make_server(registry=TestRegistry(model_cache, {PAID: (None, 1.0)}))
    key, key_id = make_key(server, "in-time", credits=10)
    with videoserve.Client(api_key=key, base_url=f"{server.url}/v1") as client:
        job = client.submit_async(PAID, prompt="a quiet harbour", duration=4, start_timeout=120)
        result = job.wait(timeout=120, interval=0.1)
    assert result["status"] == "COMPLETED"
    assert [e.kind for e in ledger_of(server, key_id) if e.job_id == job.request_id] == ["charge"]


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf", "1e12", ""])
def test_a_bad_start_timeout_is_a_400_naming_the_header(make_server, model_cache, value) -> None:
    server = _queue_only(make_server, model_cache)
    key, key_id = make_key(server, "bad", credits=10)
    answer = _submit(server, key, value)
    assert answer.status_code == 400, answer.text
    assert "X-Start-Timeout" in answer.json()["error"]
    openai_answer = httpx.post(
        f"{server.url}/v1/videos",
        json={"prompt": "a lighthouse", "seconds": "4", "model": PAID},
        headers=headers(key) | {"X-Start-Timeout": value},
    )
    assert openai_answer.status_code == 400, openai_answer.text
    assert "X-Start-Timeout" in openai_answer.json()["error"]["message"]
    assert ledger_of(server, key_id)[-1].kind == "grant"  # nothing was charged


async def test_the_claim_never_hands_out_a_job_past_its_deadline(open_store) -> None:
    store = open_store()
    await store.migrate()
    queued = dict(api_key_id="k", model="m", served_by="m", params={}, max_attempts=1)
    await store.create(NewJob(id="late", start_timeout=0.05, **queued))
    await store.create(NewJob(id="open", **queued))
    late = await store.get("late")
    assert late is not None and late.start_deadline is not None
    await _until_past(late.start_deadline)
    claimed = await store.claim("w", ["m"], 30)
    assert claimed is not None and claimed[0].id == "open"  # the older, expired one skipped
    assert claimed[0].start_deadline is None
    assert await store.claim("w", ["m"], 30) is None
    assert await store.next_start_deadline() == late.start_deadline
    expired = await store.expire_unstarted(60)
    assert [job.id for job in expired] == ["late"]
    assert await store.expire_unstarted(60) == []  # once only
    after = await store.get("late")
    assert after is not None and after.status == Status.FAILED
    assert after.failure is not None and after.failure.value == "expired"
    assert await store.next_start_deadline() is None


async def _until_past(deadline: float) -> None:
    """Until the clock has passed `deadline` (50 ms away): a wait on the clock itself."""
    await asyncio.sleep(max(0.0, deadline - clock.now()) + 0.01)
    assert clock.now() > deadline


def test_async_client_start_timeout_ends_expired(make_server, model_cache) -> None:
    server = _queue_only(make_server, model_cache)
    key, _ = make_key(server, "async", credits=10)

    async def submit_and_wait() -> tuple[str, videoserve.InferenceFailed]:
        async with videoserve.AsyncClient(api_key=key, base_url=f"{server.url}/v1") as client:
            job = await client.submit_async(PAID, prompt="a kite", duration=4, start_timeout=0.3)
            with pytest.raises(videoserve.InferenceFailed) as failed:
                await job.wait(timeout=60, interval=0.1)
        return job.request_id, failed.value

    request_id, failure = asyncio.run(submit_and_wait())
    assert failure.failure == "expired" and failure.request_id == request_id


def test_remix_takes_the_header_and_every_submit_route_checks_it(make_server, model_cache) -> None:
    worker = make_server()
    key, _ = make_key(worker, "remixer", credits=100)
    source = httpx.post(
        f"{worker.url}/v1/videos",
        json={"prompt": "a lighthouse", "seconds": "4"},
        headers=headers(key),
    ).json()["id"]
    wait_for_status(worker, key, source, "COMPLETED", timeout=120)
    worker.stop()  # from here on no worker runs: a remix can only wait, then expire
    api = _queue_only(make_server, model_cache, database_url=worker.settings.database_url)
    remix = httpx.post(
        f"{api.url}/v1/videos/{source}/remix",
        json={"prompt": "a lighthouse in snow"},
        headers=headers(key) | {"X-Start-Timeout": "0.3"},
    )
    assert remix.status_code == 200, remix.text
    video = wait_until(
        lambda: (
            (v := httpx.get(f"{api.url}/v1/videos/{remix.json()['id']}", headers=headers(key)))
            .json()
            .get("status")
            == "failed"
            and v.json()
        )
    )
    assert video["error"]["code"] == "expired"
    for path in ("/v1/videos/extensions", "/v1/videos/edits", f"/v1/videos/{source}/remix"):
        answer = httpx.post(
            f"{api.url}{path}",
            json={"prompt": "more", "video": {"id": source}},
            headers=headers(key) | {"X-Start-Timeout": "never"},
        )
        assert answer.status_code == 400, (path, answer.text)
        assert "X-Start-Timeout" in answer.json()["error"]["message"]
    blocking = httpx.post(
        f"{api.url}/v1/{PAID}",
        json={"prompt": "x", "duration": 4},
        headers=headers(key) | {"X-Start-Timeout": "-1"},
    )
    assert blocking.status_code == 400 and "X-Start-Timeout" in blocking.json()["error"]
