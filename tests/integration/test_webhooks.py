"""Webhooks over real HTTP: a live server posts signed events to a receiver on loopback.

Every receiver here listens on 127.0.0.1 and every server that may post to it is built with
`allow_private_urls=True`; the refusal tests use loopback URLs only, so nothing can leave the
machine even if a refusal were broken. The store-level tests at the end run on SQLite and on
the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
import standardwebhooks

from tests.conftest import LiveServer, stored_result, wait_until
from videoserve.jobs import schema
from videoserve.jobs.states import Status
from videoserve.jobs.store import JobStore, NewJob
from videoserve.settings import Settings
from videoserve.webhooks import events
from videoserve.webhooks import tables as webhook_tables
from videoserve.webhooks.records import AttemptResult, DeliveryStatus
from videoserve.webhooks.store import WebhookStore

FAST = {"webhook_backoff_base_seconds": 0.05, "webhook_timeout_seconds": 5.0}


# --- a receiver ------------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A threaded HTTP server on loopback that verifies each webhook like a real receiver:
    400 for a bad signature, else the next scripted status (then `default`)."""

    def __init__(self, script: list[int] | None = None, default: int = 200) -> None:
        self.secret: str | None = None
        self.script = list(script or [])
        self.default = default
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(self.path, headers, body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        verified = False
        if self.secret is not None:
            try:
                standardwebhooks.Webhook(self.secret).verify(body, headers)
                verified = True
            except standardwebhooks.WebhookVerificationError:
                pass
        with self._lock:
            status = 400 if not verified else (self.script.pop(0) if self.script else self.default)
            self.received.append(Received(path, headers, body, status, verified))
        return status

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# --- helpers ---------------------------------------------------------------------------------
def auth(server: LiveServer, key: str | None = None) -> dict[str, str]:
    return {"x-api-key": key or server.api_key}


def secret_of(server: LiveServer, key: str | None = None) -> str:
    answer = httpx.get(f"{server.url}/v1/webhooks/secret", headers=auth(server, key))
    assert answer.status_code == 200, answer.text
    return answer.json()["secret"]


def submit(server: LiveServer, prompt: str = "a lighthouse", webhook: str | None = None) -> str:
    params = {"webhook": webhook} if webhook else None
    answer = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        params=params,
        json={"prompt": prompt, "duration": 4},
        headers=auth(server),
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def attempts(server: LiveServer, key: str | None = None, limit: int = 50) -> list[dict]:
    answer = httpx.get(
        f"{server.url}/v1/webhooks/deliveries", params={"limit": limit}, headers=auth(server, key)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def add_endpoint(server: LiveServer, url: str, types: list[str] | None = None) -> dict:
    body: dict[str, Any] = {"url": url}
    if types is not None:
        body["events"] = types
    answer = httpx.post(f"{server.url}/v1/webhooks", json=body, headers=auth(server))
    assert answer.status_code == 200, answer.text
    return answer.json()


# --- per-request webhooks --------------------------------------------------------------------
def test_per_request_webhook_receives_signed_completed_event(make_server, receiver) -> None:
    server = make_server(allow_private_urls=True, **FAST)
    receiver.secret = secret_of(server)
    assert receiver.secret.startswith("whsec_")
    request_id = submit(server, webhook=f"{receiver.url}/hook?source=test")

    got = wait_until(lambda: receiver.at("/hook?source=test"), timeout=60)[0]
    assert got.verified and got.answered == 200
    event = got.event
    assert event["type"] == "video.completed" and event["object"] == "event"
    assert event["id"].startswith("evt_") and got.headers["webhook-id"] == event["id"]
    assert isinstance(event["created_at"], int)
    data = event["data"]
    assert data["id"] == request_id and data["status"] == "completed" and data["error"] is None
    video = httpx.get(data["output"])  # a signed link: no API key needed
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    # The tiny model is silent, and the event says so.
    assert (data["has_audio"], data["audio_sample_rate"], data["audio_codec"]) == (
        False,
        None,
        None,
    )
    assert data["metrics"] == {"parallel": None}  # one device (a worker group's split else)

    # The official openai SDK's verifier accepts it too (Standard Webhooks on both sides).
    sdk = openai.OpenAI(api_key="unused", base_url=f"{server.url}/v1")
    sdk.webhooks.verify_signature(got.body, got.headers, secret=receiver.secret)

    # A tampered body fails verification, whichever byte changed.
    tampered = got.body.replace(request_id.encode(), b"video_" + b"0" * 32)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(receiver.secret).verify(tampered, got.headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.verify_signature(tampered, got.headers, secret=receiver.secret)

    log = wait_until(lambda: attempts(server))
    assert len(log) == 1
    expected = {
        "event_id": event["id"],
        "event_type": "video.completed",
        "request_id": request_id,
        "endpoint_id": None,
        "url": f"{receiver.url}/hook?source=test",
        "attempt": 1,
        "success": True,
        "status_code": 200,
        "error": None,
        "delivery_status": "succeeded",
    }
    assert {k: log[0][k] for k in expected} == expected
    assert log[0]["finished_at"] >= log[0]["started_at"] > 0


def test_blocked_prompt_gives_video_failed(make_server, receiver) -> None:
    server = make_server(blocklist=["forbidden"], allow_private_urls=True, **FAST)
    receiver.secret = secret_of(server)
    request_id = submit(server, prompt="something forbidden", webhook=f"{receiver.url}/failed")
    got = wait_until(lambda: receiver.at("/failed"), timeout=60)[0]
    assert got.verified
    assert got.event["type"] == "video.failed"
    data = got.event["data"]
    assert data["id"] == request_id and data["status"] == "failed" and data["output"] is None
    assert "forbidden" in data["error"] or "policy" in data["error"]
    assert data["failure"] == "moderation"


def test_failed_attempt_is_retried_with_the_same_id_and_logged(make_server) -> None:
    receiver = Receiver(script=[500])
    try:
        server = make_server(allow_private_urls=True, **FAST)
        receiver.secret = secret_of(server)
        request_id = submit(server, webhook=f"{receiver.url}/flaky")
        first, second = wait_until(
            lambda: len(receiver.at("/flaky")) >= 2 and receiver.at("/flaky")
        )
        assert (first.answered, second.answered) == (500, 200)
        assert first.verified and second.verified
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body  # the same event, byte for byte

        log = wait_until(lambda: len(attempts(server)) >= 2 and attempts(server))
        assert [(a["attempt"], a["status_code"], a["success"]) for a in log] == [
            (2, 200, True),  # newest first
            (1, 500, False),
        ]
        assert {a["request_id"] for a in log} == {request_id}
        assert {a["event_id"] for a in log} == {first.headers["webhook-id"]}
        assert log[1]["error"] == "HTTP 500" and log[0]["started_at"] >= log[1]["finished_at"]
        assert len(attempts(server, limit=1)) == 1
    finally:
        receiver.close()


# --- per-key endpoints -----------------------------------------------------------------------
def test_endpoints_receive_only_their_event_types(make_server, receiver) -> None:
    server = make_server(blocklist=["forbidden"], allow_private_urls=True, **FAST)
    receiver.secret = secret_of(server)
    only_failed = add_endpoint(server, f"{receiver.url}/only-failed", ["video.failed"])
    both = add_endpoint(server, f"{receiver.url}/both")
    assert only_failed["events"] == ["video.failed"]
    assert both["events"] == ["video.completed", "video.failed"]  # the default
    listed = httpx.get(f"{server.url}/v1/webhooks", headers=auth(server)).json()["data"]
    assert [e["id"] for e in listed] == [only_failed["id"], both["id"]]
    # Another key sees none of them.
    other = server.create_key("other")
    assert httpx.get(f"{server.url}/v1/webhooks", headers=auth(server, other)).json()["data"] == []

    completed_id = submit(server, prompt="a calm sea")
    wait_until(lambda: receiver.at("/both"), timeout=60)
    failed_id = submit(server, prompt="forbidden scene")
    wait_until(lambda: receiver.at("/only-failed"), timeout=60)
    wait_until(lambda: len(receiver.at("/both")) >= 2)

    assert [(r.event["type"], r.event["data"]["id"]) for r in receiver.at("/only-failed")] == [
        ("video.failed", failed_id)
    ]
    assert sorted((r.event["type"], r.event["data"]["id"]) for r in receiver.at("/both")) == [
        ("video.completed", completed_id),
        ("video.failed", failed_id),
    ]
    assert all(r.verified for r in receiver.received)
    # One event per job, delivered to each endpoint that wants it.
    log = attempts(server)
    assert {(a["endpoint_id"], a["event_type"]) for a in log} == {
        (both["id"], "video.completed"),
        (both["id"], "video.failed"),
        (only_failed["id"], "video.failed"),
    }

    deleted = httpx.delete(f"{server.url}/v1/webhooks/{both['id']}", headers=auth(server))
    assert deleted.json() == {
        "id": both["id"],
        "object": "webhook_endpoint.deleted",
        "deleted": True,
    }
    again = httpx.delete(f"{server.url}/v1/webhooks/{both['id']}", headers=auth(server))
    assert again.status_code == 404
    other_delete = httpx.delete(
        f"{server.url}/v1/webhooks/{only_failed['id']}", headers=auth(server, other)
    )
    assert other_delete.status_code == 404
    listed = httpx.get(f"{server.url}/v1/webhooks", headers=auth(server)).json()["data"]
    assert [e["id"] for e in listed] == [only_failed["id"]]


def test_endpoint_registration_is_validated(make_server) -> None:
    server = make_server(allow_private_urls=True)
    url = f"{server.url}/v1/webhooks"
    cases = [
        ({"url": "ftp://127.0.0.1/hook"}, "http"),
        ({"url": "not a url"}, "webhook URL"),
        ({"url": "http://127.0.0.1/h", "events": ["video.exploded"]}, "video.exploded"),
        ({"url": "http://127.0.0.1/h", "events": []}, "at least one"),
        ({"url": "http://127.0.0.1/h", "colour": "red"}, "colour"),
        ({"events": ["video.failed"]}, "url"),
    ]
    for body, fragment in cases:
        answer = httpx.post(url, json=body, headers=auth(server))
        assert answer.status_code == 400, (body, answer.text)
        assert fragment in answer.json()["error"], (body, answer.json())
    assert httpx.get(url).status_code == 401


def test_secret_rotation_changes_the_signing_key(make_server, receiver) -> None:
    server = make_server(allow_private_urls=True, **FAST)
    old = secret_of(server)
    assert secret_of(server) == old  # created once, then stable
    rotated = httpx.post(f"{server.url}/v1/webhooks/secret/rotate", headers=auth(server))
    new = rotated.json()["secret"]
    assert rotated.status_code == 200 and new.startswith("whsec_") and new != old
    assert secret_of(server) == new
    assert secret_of(server, server.create_key("other")) not in (old, new)  # one per key

    receiver.secret = new
    add_endpoint(server, f"{receiver.url}/rotated")
    submit(server)
    got = wait_until(lambda: receiver.at("/rotated"), timeout=60)[0]
    assert got.verified
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(got.body, got.headers)


# --- SSRF --------------------------------------------------------------------------------------
def test_private_webhook_urls_are_refused_without_allow_private(make_server) -> None:
    server = make_server()  # allow_private_urls is off by default
    for webhook in ("http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://localhost:9/x"):
        answer = httpx.post(
            f"{server.url}/v2/sora-2-pro",
            params={"webhook": webhook},
            json={"prompt": "p"},
            headers=auth(server),
        )
        assert answer.status_code == 400, answer.text
        assert "not a public address" in answer.json()["error"]
        assert answer.json()["param"] == "webhook"
    answer = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        params={"webhook": "file:///etc/passwd"},
        json={"prompt": "p"},
        headers=auth(server),
    )
    assert answer.status_code == 400 and "http" in answer.json()["error"]
    answer = httpx.post(
        f"{server.url}/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=auth(server)
    )
    assert answer.status_code == 400 and "not a public address" in answer.json()["error"]


def test_refused_address_at_delivery_is_a_logged_failed_attempt(
    make_server, receiver, tmp_path
) -> None:
    # Registered while private URLs were allowed; the server restarted without that permission.
    first = make_server(allow_private_urls=True, data_dir=tmp_path / "shared")
    add_endpoint(first, f"{receiver.url}/private")
    api_key = first.api_key
    first.stop()
    second = make_server(
        data_dir=tmp_path / "shared",
        database_url=first.settings.database_url,
        webhook_retry_seconds=0.3,
        **FAST,
    )
    second.api_key = api_key
    submit(second)
    log = wait_until(
        lambda: (a := attempts(second)) and a[0]["delivery_status"] == "failed" and a, timeout=60
    )
    assert all(a["status_code"] is None for a in log)
    assert "refused: 127.0.0.1 is not a public address" in log[0]["error"]
    assert receiver.received == []  # refused before any packet was sent


# --- durability --------------------------------------------------------------------------------
def test_pending_delivery_survives_a_restart(make_server, tmp_path) -> None:
    receiver = Receiver(default=500)  # down, for now
    try:
        first = make_server(allow_private_urls=True, data_dir=tmp_path / "shared", **FAST)
        receiver.secret = secret_of(first)
        request_id = submit(first, webhook=f"{receiver.url}/durable")
        wait_until(lambda: receiver.at("/durable"), timeout=60)
        api_key = first.api_key
        first.stop()

        seen = len(receiver.at("/durable"))
        receiver.default = 200  # the receiver comes back while no server runs
        second = make_server(
            allow_private_urls=True,
            data_dir=tmp_path / "shared",
            database_url=first.settings.database_url,  # the same database, not a sibling
            **FAST,
        )
        got = wait_until(lambda: [r for r in receiver.at("/durable") if r.answered == 200])
        assert len(got) == 1
        received = receiver.at("/durable")
        assert len(received) > seen  # the new server delivered it
        assert {r.headers["webhook-id"] for r in received} == {got[0].headers["webhook-id"]}
        assert got[0].verified and got[0].event["data"]["id"] == request_id
        second.api_key = api_key
        log = attempts(second)
        assert [a["attempt"] for a in log] == list(range(len(received), 0, -1))
        assert log[0]["success"] and log[0]["delivery_status"] == "succeeded"
    finally:
        receiver.close()


# --- the store, on both databases --------------------------------------------------------------
@pytest.fixture
async def stores(database_url: str):
    url = Settings(database_url=database_url).resolved_database_url()
    jobs = JobStore.open(url, migrations=(schema.MIGRATIONS, webhook_tables.MIGRATIONS))
    await jobs.start()
    yield jobs, WebhookStore(jobs.database)
    await jobs.close()


async def finished_job(jobs: JobStore, **kw: Any):
    job, _ = await jobs.create(
        NewJob(
            id="video_" + secrets.token_hex(8),
            api_key_id="key_a",
            model="tiny-t2v",
            served_by="tiny-t2v",
            params={"prompt": "p"},
            max_attempts=1,
            **kw,
        )
    )
    claimed = await jobs.claim("w", None, 30)
    assert claimed is not None
    assert await jobs.complete(claimed[1], stored_result("k"), retention_seconds=60)
    return await jobs.get(job.id)


async def test_emission_is_idempotent_and_claims_exclusive(stores) -> None:
    jobs, hooks = stores
    job = await finished_job(jobs, webhook_url="http://127.0.0.1:9/x")
    await hooks.create_endpoint("key_a", "http://127.0.0.1:9/e", events.DEFAULT_EVENT_TYPES)
    pending = await hooks.jobs_awaiting_final_event()
    # The endpoint is newer than the job's end: it gets no event from before it existed.
    assert [j.id for j in pending] == [job.id]

    stored = await asyncio.gather(
        *(hooks.add_final_event(job, events.new_event_id(), "{}", 60) for _ in range(6))
    )
    assert sorted(stored) == [False] * 5 + [True]
    assert await hooks.jobs_awaiting_final_event() == []

    claims = await asyncio.gather(*(hooks.claim(lease_seconds=30) for _ in range(8)))
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].attempt == 1 and won[0].url == "http://127.0.0.1:9/x"
    delivery = won[0]
    assert await hooks.claim(lease_seconds=30) is None

    failed = AttemptResult(started_at=1.0, finished_at=2.0, error="HTTP 500", status_code=500)
    assert await hooks.record_attempt(delivery, failed, retry_at=delivery.deadline_at)
    assert await hooks.claim(lease_seconds=30) is None  # not due until retry_at
    # A stale lease cannot settle the delivery again.
    assert not await hooks.record_attempt(delivery, failed, retry_at=None)
    log = await hooks.attempts("key_a")
    assert [(a.attempt, a.status_code, a.delivery_status) for a in log] == [
        (1, 500, DeliveryStatus.PENDING)
    ]


async def test_expired_lease_is_claimed_again_and_fenced(stores) -> None:
    jobs, hooks = stores
    job = await finished_job(jobs, webhook_url="http://127.0.0.1:9/x")
    assert await hooks.add_final_event(job, events.new_event_id(), "{}", 60)
    lost = await hooks.claim(lease_seconds=0.0)  # the sender "died" at once
    assert lost is not None
    again = await hooks.claim(lease_seconds=30)
    assert again is not None and again.id == lost.id and again.attempt == 2
    ok = AttemptResult(started_at=1.0, finished_at=2.0, status_code=204)
    assert not await hooks.record_attempt(lost, ok, retry_at=None)  # fenced out
    assert await hooks.record_attempt(again, ok, retry_at=None)
    assert [a.attempt for a in await hooks.attempts("key_a")] == [2, 1]
    assert await hooks.next_due() is None


async def test_progress_events_are_throttled(stores) -> None:
    jobs, hooks = stores
    await hooks.create_endpoint("key_a", "http://127.0.0.1:9/p", [events.PROGRESS])
    job, _ = await jobs.create(
        NewJob(
            id="video_" + secrets.token_hex(8),
            api_key_id="key_a",
            model="m",
            served_by="m",
            params={"prompt": "p"},
            max_attempts=1,
        )
    )
    claimed = await jobs.claim("w", None, 30)
    assert claimed is not None
    lease = claimed[1]

    async def beat_and_emit(progress: int, interval: float) -> bool:
        await jobs.heartbeat(lease, 30, progress)
        running = await jobs.get(job.id)
        assert running is not None and running.status == Status.PROCESSING
        candidates = [j.id for j in await hooks.jobs_awaiting_progress_event(interval)]
        added = await hooks.add_progress_event(running, events.new_event_id(), "{}", interval, 60)
        assert (job.id in candidates) == added
        return added

    assert await beat_and_emit(10, interval=3600)
    assert not await beat_and_emit(20, interval=3600)  # too soon
    assert await beat_and_emit(30, interval=0.0)
    assert not await beat_and_emit(30, interval=0.0)  # nothing new to say
    # Dispatchers racing with different progress values still store one event per interval.
    await hooks.prune(older_than=float("inf"))
    running = await jobs.get(job.id)
    assert running is not None
    racing = await asyncio.gather(
        *(
            hooks.add_progress_event(
                dataclasses.replace(running, progress=p), events.new_event_id(), "{}", 3600, 60
            )
            for p in range(40, 45)
        )
    )
    assert sorted(racing) == [False] * 4 + [True]


async def test_with_no_endpoint_only_jobs_with_their_own_url_await_an_event(stores) -> None:
    """The dispatcher's cheap round (no endpoint anywhere): the same answer as the full query
    for jobs with a `?webhook=` URL, and nothing for the others."""
    jobs, hooks = stores
    assert not await hooks.has_endpoints()
    plain = [await finished_job(jobs) for _ in range(3)]
    assert not await hooks.has_request_webhooks()  # the round has nothing to look at
    assert await hooks.jobs_awaiting_final_event(endpoints=False) == []
    first = await finished_job(jobs, webhook_url="http://127.0.0.1:9/a")
    assert await hooks.has_request_webhooks()
    second = await finished_job(jobs, webhook_url="http://127.0.0.1:9/b")
    wanted = [first.id, second.id]  # in the order they finished
    assert [j.id for j in await hooks.jobs_awaiting_final_event(endpoints=False)] == wanted
    assert [j.id for j in await hooks.jobs_awaiting_final_event()] == wanted
    assert await hooks.add_final_event(first, events.new_event_id(), "{}", 60)
    assert [j.id for j in await hooks.jobs_awaiting_final_event(endpoints=False)] == [second.id]
    # With an endpoint the full query counts again, and only then do plain jobs qualify (none
    # here: they finished before the endpoint existed).
    await hooks.create_endpoint("key_a", "http://127.0.0.1:9/e", events.DEFAULT_EVENT_TYPES)
    assert await hooks.has_endpoints()
    later = await finished_job(jobs)
    awaiting = [j.id for j in await hooks.jobs_awaiting_final_event()]
    assert awaiting == [second.id, later.id]
    assert not {j.id for j in plain} & set(awaiting)
    assert await hooks.next_due() is not None  # the first job's delivery waits to be sent
