"""Credits over real HTTP, on SQLite and on the real PostgreSQL: the charge at submit, the 406,
a refund for every way a job can fail without a video, and no overspending under concurrency."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import wait_until
from tests.integration.accounting import (
    FailingBackend,
    StallingBackend,
    TestRegistry,
    account,
    headers,
    ledger_of,
    make_key,
    stored_balance,
    submit,
    wait_for_status,
    with_store,
)
from videoserve.db import database, dialects
from videoserve.jobs import schema
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.store import JobStore
from videoserve.settings import Settings
from videoserve.webhooks import tables as webhook_tables


def kinds(server, key_id: str) -> list[tuple[str, float]]:
    return [(entry.kind, entry.amount) for entry in ledger_of(server, key_id)]


def test_charge_on_submit_and_the_account(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, key_id = make_key(server, "paying", credits=20)
    assert account(server, key) == {
        "id": key_id,
        "object": "account",
        "name": "paying",
        "credits": 20,
        "unlimited": False,
        "granted": 20,
        "spent": 0,
        "refunded": 0,
    }
    assert submit(server, key, duration=8).status_code == 200
    mine = account(server, key)
    assert (mine["credits"], mine["spent"]) == (12, 8)
    # An idempotent replay answers the same request and charges nothing.
    replay = {"Idempotency-Key": "once"}
    body = {"prompt": "a dog", "duration": 4}
    first = httpx.post(f"{server.url}/v2/sora-2-pro", json=body, headers=headers(key) | replay)
    again = httpx.post(f"{server.url}/v2/sora-2-pro", json=body, headers=headers(key) | replay)
    assert first.status_code == again.status_code == 200
    assert first.json()["request_id"] == again.json()["request_id"]
    assert account(server, key)["credits"] == 8
    assert kinds(server, key_id) == [("grant", 20), ("charge", -8), ("charge", -4)]
    # A key made without --credits is unlimited: never refused, but its usage is counted.
    unlimited = account(server, server.api_key)
    assert unlimited["credits"] is None and unlimited["unlimited"] is True
    assert submit(server, server.api_key, duration=12).status_code == 200
    assert account(server, server.api_key)["spent"] == 12


def test_insufficient_credits_is_406_and_stores_nothing(make_server, model_cache: Path) -> None:
    # sora-2-pro costs what the model serving it costs: 2 credits/s here.
    registry = TestRegistry(model_cache, {"premium": (None, 2.0)}, {"sora-2-pro": "premium"})
    server = make_server(embedded_worker=False, registry=registry)
    key, key_id = make_key(server, "poor", credits=3)
    refused = submit(server, key, duration=8)
    assert refused.status_code == 406
    assert refused.json() == {
        "error": "insufficient credits: balance 3, price 16 (8 s x 2 credits/s)",
        "code": "insufficient_credits",
        "balance": 3,
        "price": 16,
    }
    tiny = submit(server, key, model="tiny-t2v", duration=4)
    assert tiny.status_code == 406
    assert tiny.json()["error"] == "insufficient credits: balance 3, price 4 (4 s x 1 credit/s)"
    history = httpx.get(f"{server.url}/v1/requests", headers=headers(key)).json()
    assert history["data"] == []
    assert kinds(server, key_id) == [("grant", 3)] and stored_balance(server, key_id) == 3
    # After a grant the same request goes through.
    with_store(server, lambda store: KeyStore(store.database).credit(key_id, 13))
    assert submit(server, key, duration=8).status_code == 200
    assert account(server, key)["credits"] == 0


def test_model_error_is_refunded(make_server, model_cache: Path) -> None:
    registry = TestRegistry(model_cache, {"broken": (FailingBackend("broken"), 2.0)})
    server = make_server(registry=registry)
    key, key_id = make_key(server, "unlucky", credits=10)
    request_id = submit(server, key, model="broken", duration=4).json()["request_id"]
    failed = wait_for_status(server, key, request_id, "FAILED")
    assert "the GPU caught fire" in failed["error"]
    wait_until(lambda: account(server, key)["credits"] == 10)
    assert kinds(server, key_id) == [("grant", 10), ("charge", -8), ("refund", 8)]
    assert account(server, key)["refunded"] == 8


@pytest.mark.parametrize("refund", [True, False], ids=["refunded", "kept"])
def test_content_block_refund_follows_the_setting(make_server, refund: bool) -> None:
    server = make_server(blocklist=["forbidden"], refund_content_blocks=refund)
    key, key_id = make_key(server, "edgy", credits=8)
    blocked = submit(server, key, prompt="something forbidden", duration=8)
    assert blocked.status_code == 200  # accepted, then stored FAILED at once
    status = wait_for_status(server, key, blocked.json()["request_id"], "FAILED")
    assert "content policy" in status["error"]
    assert account(server, key)["credits"] == (8 if refund else 0)
    expected = [("grant", 8), ("charge", -8)] + ([("refund", 8)] if refund else [])
    assert kinds(server, key_id) == expected


def test_cancelled_queued_job_is_refunded_once(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, key_id = make_key(server, "fickle", credits=8)
    request_id = submit(server, key, duration=8).json()["request_id"]
    assert account(server, key)["credits"] == 0
    for _ in range(2):  # a second cancel is a no-op, and refunds nothing more
        cancel = httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(key))
        assert cancel.status_code == 200
    assert account(server, key)["credits"] == 8
    assert kinds(server, key_id) == [("grant", 8), ("charge", -8), ("refund", 8)]


@pytest.mark.parametrize("refund", [True, False], ids=["refunded", "kept"])
def test_running_cancellation_refund_follows_the_setting(
    make_server, model_cache: Path, refund: bool
) -> None:
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 1.0)})
    server = make_server(registry=registry, refund_running_cancellations=refund)
    key, key_id = make_key(server, "impatient", credits=4)
    request_id = submit(server, key, model="stall", duration=4).json()["request_id"]
    wait_for_status(server, key, request_id, "PROCESSING")
    httpx.post(f"{server.url}/v2/requests/{request_id}/cancel", headers=headers(key))
    failed = wait_for_status(server, key, request_id, "FAILED")
    assert failed["error"] == "cancelled by the user"
    assert account(server, key)["credits"] == (4 if refund else 0)
    assert [k for k, _ in kinds(server, key_id)].count("refund") == (1 if refund else 0)


def test_worker_lost_is_refunded_by_the_reaper(make_server) -> None:
    # One attempt allowed, and a reaper that looks every quarter second.
    server = make_server(embedded_worker=False, max_attempts=1, lease_seconds=0.5)
    key, key_id = make_key(server, "orphan", credits=8)
    request_id = submit(server, key, duration=8).json()["request_id"]

    async def claim_and_vanish(store: JobStore) -> None:
        claimed = await store.claim("doomed-worker", None, lease_seconds=0.01)
        assert claimed is not None and claimed[0].id == request_id

    with_store(server, claim_and_vanish)  # a worker that claims and never heartbeats
    failed = wait_for_status(server, key, request_id, "FAILED")
    assert "worker lost" in failed["error"] and "doomed-worker" in failed["error"]
    assert account(server, key)["credits"] == 8
    assert kinds(server, key_id) == [("grant", 8), ("charge", -8), ("refund", 8)]


def test_parallel_submits_never_overspend(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, key_id = make_key(server, "racer", credits=40)  # exactly five 8-second videos
    answers: list[int] = []
    start = threading.Barrier(20)

    def one() -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            response = client.post(
                f"{server.url}/v2/sora-2-pro",
                json={"prompt": "a race", "duration": 8},
                headers=headers(key),
            )
            answers.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(answers) == [200] * 5 + [406] * 15
    mine = account(server, key)
    assert (mine["credits"], mine["spent"]) == (0, 40)
    entries = ledger_of(server, key_id)
    assert sum(e.amount for e in entries) == 0 == stored_balance(server, key_id)
    assert [e.kind for e in entries].count("charge") == 5
    history = httpx.get(f"{server.url}/v1/requests", headers=headers(key)).json()
    assert len(history["data"]) == 5 and {r["cost"] for r in history["data"]} == {8}


async def test_migration_4_makes_existing_keys_unlimited(database_url: str) -> None:
    """A database at version 3 of the shared counter (before migrations were per package)
    with a key upgrades in place: the key keeps working, unlimited."""
    url = Settings(database_url=database_url).resolved_database_url()
    engine = dialects.create_engine(url)
    legacy = database.legacy_schema_table
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: legacy.create(sync))
            for version, step in schema.MIGRATIONS.steps[:3]:
                await conn.run_sync(step)
                if version == 2:  # the shared counter's version 2 made the webhook tables too
                    await conn.run_sync(webhook_tables.create_tables)
                await conn.execute(legacy.insert().values(version=version, applied_at=0.0))
            await conn.execute(
                sa.text(
                    "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, created_at) "
                    "VALUES ('key_old', 'old', 'h', 'vs_old', false, 0)"
                )
            )
    finally:
        await engine.dispose()
    store = JobStore.open(url)
    try:
        assert await store.migrate() == {"jobs": schema.MIGRATIONS.latest}
        old = await KeyStore(store.database).get("key_old")
        assert old is not None and old.unlimited
        assert await KeyStore(store.database).balance("key_old") == 0
        await asyncio.gather(*(store.migrate() for _ in range(3)))  # idempotent
    finally:
        await store.close()
    # The webhook tables count as already there: nothing is created twice.
    both = JobStore.open(url, migrations=(schema.MIGRATIONS, webhook_tables.MIGRATIONS))
    try:
        assert await both.migrate() == {"jobs": schema.MIGRATIONS.latest, "webhooks": 1}
    finally:
        await both.close()
