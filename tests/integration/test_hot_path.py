"""The lean hot path keeps its promises, over HTTP, on SQLite and on PostgreSQL.

- The submit's charge is one transaction (on SQLite run whole on the writer thread): submits
  racing with one Idempotency-Key each charge, and all but one roll their charge back with the
  INSERT that lost, so the key pays once.
- A poll answered past FastAPI's routing (`api.polls`) reads the job's current state every
  time, and every case it does not answer (no key, a bad key, another key's job, an unknown
  id) gets the route's own answer.
- A cached key stops working in other processes within `auth_cache_seconds` of its revocation.
"""

from __future__ import annotations

import threading

import httpx

from tests.conftest import wait_until
from tests.integration.accounting import (
    account,
    headers,
    ledger_of,
    make_key,
    stored_balance,
    with_store,
)
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.records import JobResult


def test_racing_submits_with_one_idempotency_key_are_charged_once(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, key_id = make_key(server, "racer", credits=100)
    body = {"prompt": "one request, sent ten times at once", "duration": 8}
    answers: list[httpx.Response] = []
    start = threading.Barrier(10)

    def one() -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            answers.append(
                client.post(
                    f"{server.url}/v2/sora-2-pro",
                    json=body,
                    headers={**headers(key), "Idempotency-Key": "same-request"},
                )
            )

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert len({a.json()["request_id"] for a in answers}) == 1
    entries = ledger_of(server, key_id)
    assert [(e.kind, e.amount) for e in entries] == [("grant", 100), ("charge", -8)]
    assert stored_balance(server, key_id) == 92 == account(server, key)["credits"]


def test_a_poll_sees_every_change_of_its_job(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, _key_id = make_key(server, "poller")
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "watch me"}, headers=headers(key)
    ).json()
    status_url = submitted["status_url"]

    def poll() -> httpx.Response:
        return httpx.get(status_url, headers=headers(key))

    first = poll()
    assert first.status_code == 200
    assert first.json()["status"] == "QUEUED" and first.json()["queue_position"] == 1
    assert first.headers["x-request-id"]  # the middlewares outside still run

    async def claim(store):
        claimed = await store.claim("test-worker", None, lease_seconds=60)
        assert claimed is not None
        return claimed[1]

    lease = with_store(server, claim)
    running = poll().json()
    assert (running["status"], running["progress"]) == ("PROCESSING", 0)
    assert running["started_at"] is not None and "queue_position" not in running

    with_store(server, lambda store: store.heartbeat(lease, 60, progress=40))
    assert poll().json()["progress"] == 40  # no cached row: the new progress at once

    result = JobResult("x.mp4", "x.jpg", "tiny-t2v", 64, 64, 8.0, 17, 2.125)
    assert with_store(server, lambda store: store.complete(lease, result, 3600))
    done = poll()
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["progress"]) == ("COMPLETED", 100)
    assert done.json()["completed_at"] and done.json()["expires_at"]


def test_a_failed_job_polls_as_422_with_its_code(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, _key_id = make_key(server, "canceller")
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "never mind"}, headers=headers(key)
    ).json()
    cancel = httpx.post(
        f"{server.url}/v2/requests/{submitted['request_id']}/cancel", headers=headers(key)
    )
    assert cancel.status_code == 200, cancel.text
    failed = httpx.get(submitted["status_url"], headers=headers(key))
    assert failed.status_code == 422
    assert failed.json()["status"] == "FAILED" and failed.json()["code"] == "cancelled"
    assert failed.json()["error"]


def test_polls_the_fast_path_does_not_answer_get_the_routes_answers(make_server) -> None:
    server = make_server(embedded_worker=False)
    key, _key_id = make_key(server, "owner")
    other, _other_id = make_key(server, "other")
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "mine"}, headers=headers(key)
    ).json()
    url = submitted["status_url"]
    missing = httpx.get(url)
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]
    assert httpx.get(url, headers=headers("vs_not-a-key")).status_code == 401
    assert httpx.get(url, headers=headers(other)).status_code == 404  # never reveal it exists
    unknown = httpx.get(f"{server.url}/v2/requests/video_{'0' * 32}/status", headers=headers(key))
    assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
    ambiguous = httpx.get(url, headers={"x-api-key": key, "Authorization": f"Bearer {other}"})
    assert ambiguous.status_code == 400 and "ambiguous" in ambiguous.json()["error"]
    # A query string goes on to the input guard, as for any other request.
    unstorable = httpx.get(url, params={"note": "a\x00b"}, headers=headers(key))
    assert unstorable.status_code == 400 and unstorable.json()["param"] == "note"
    assert httpx.get(url, params={"note": "fine"}, headers=headers(key)).status_code == 200


def test_a_revoked_key_stops_polling_within_the_cache_bound(make_server) -> None:
    bound = 1.0
    server = make_server(embedded_worker=False, auth_cache_seconds=bound)
    key, key_id = make_key(server, "leaver")
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "until revoked"}, headers=headers(key)
    ).json()
    assert httpx.get(submitted["status_url"], headers=headers(key)).status_code == 200  # cached

    # Revoked by another process (the CLI does this), which the server's cache cannot see.
    with_store(server, lambda store: KeyStore(store.database).revoke(key_id))
    wait_until(
        lambda: httpx.get(submitted["status_url"], headers=headers(key)).status_code == 401,
        timeout=bound + 4,  # the default bound (10 s) would fail here
    )
    # Once refused, refused for good: the cache never brings a revoked key back.
    for _ in range(3):
        assert httpx.get(submitted["status_url"], headers=headers(key)).status_code == 401


def test_the_poll_layer_reads_each_header_as_the_app_does(make_server) -> None:
    """The poll layer reads its headers in one pass; each reading matches the app's own."""
    server = make_server(embedded_worker=False)
    key, _key_id = make_key(server, "headers")
    other, _other_id = make_key(server, "someone else")
    url = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "read me"}, headers=headers(key)
    ).json()["status_url"]

    def poll(pairs: list[tuple[str, str]]) -> httpx.Response:
        return httpx.get(url, headers=pairs)

    assert poll([("Authorization", f"Bearer {key}")]).status_code == 200
    assert poll([("x-api-key", key), ("Authorization", f"Bearer {key}")]).status_code == 200
    for ambiguous in (
        [("x-api-key", key), ("x-api-key", key)],
        [("x-api-key", key), ("Authorization", f"Bearer {other}")],
    ):
        refused = poll(ambiguous)
        assert refused.status_code == 400 and "ambiguous" in refused.json()["error"]
    # The client's request id, when it is a short safe token, else a new one; the first wins.
    chosen = poll([("x-api-key", key), ("X-Request-Id", "trace-1"), ("X-Request-Id", "two")])
    assert chosen.status_code == 200 and chosen.headers["x-request-id"] == "trace-1"
    replaced = poll([("x-api-key", key), ("X-Request-Id", "not a token!")])
    assert replaced.status_code == 200
    assert len(replaced.headers["x-request-id"]) == 32
    assert replaced.headers["x-request-id"] != "not a token!"
