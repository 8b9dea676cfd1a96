"""`videoserve.client` against a real server over HTTP: the sync and async clients end to end.

Faults (a dropped connection) are injected in an httpx transport on the client side; the
server behind it is always the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from videoserve import errors
from videoserve.client import AsyncClient, AsyncJob, Client, InferenceFailed, InferenceTimeout, Job

MODEL = "sora-2-pro"
PROMPT = "A druid whispering to ancient trees under a golden sunset"
WAIT = {"timeout": 120, "interval": 0.05}


@pytest.fixture
def client(server: Any) -> Iterator[Client]:
    with Client(api_key=server.api_key, base_url=server.url) as c:
        yield c


# Built as fixtures, not inside the tests: making a server runs its own event loop, which an
# async test's running loop would refuse.
@pytest.fixture
def blocking_server(make_server: Callable[..., Any]) -> Any:
    """A server whose content policy blocks the word "forbidden"."""
    return make_server(blocklist=["forbidden"])


@pytest.fixture
def idle_server(make_server: Callable[..., Any]) -> Any:
    """A server with no worker: requests stay QUEUED forever."""
    return make_server(embedded_worker=False)


def is_mp4(data: bytes) -> bool:
    """An ISO-BMFF file opens with a box whose type is `ftyp`."""
    return len(data) > 8 and data[4:8] == b"ftyp"


def assert_completed(result: dict[str, Any]) -> None:
    assert result["status"] == "COMPLETED"
    assert result["output"].startswith("http")
    for field in ("width", "height", "frames"):
        assert isinstance(result[field], int) and result[field] > 0, field
    assert result["fps"] > 0 and result["seconds"] > 0


def test_public_names() -> None:
    import videoserve.client as package

    assert set(package.__all__) == {
        "Client",
        "AsyncClient",
        "Job",
        "AsyncJob",
        "InferenceFailed",
        "InferenceTimeout",
    }
    assert package.InferenceFailed is errors.InferenceFailed
    assert package.InferenceTimeout is errors.InferenceTimeout


# --- the core flow ------------------------------------------------------------------------------


def test_submit_wait_download(client: Client, server: Any, tmp_path: Path) -> None:
    job = client.submit_async(MODEL, prompt=PROMPT, duration="4", size="1280x720")
    assert isinstance(job, Job)
    assert job.request_id
    assert job.status_url == f"{server.url}/v2/requests/{job.request_id}/status"
    assert job.response_url == f"{server.url}/v2/requests/{job.request_id}"

    seen: list[dict[str, Any]] = []
    result = job.wait(**WAIT, on_status=seen.append)

    assert_completed(result)
    assert result["request_id"] == job.request_id
    assert seen, "on_status was never called"
    assert all(body["request_id"] == job.request_id for body in seen)
    assert seen[-1]["status"] == "COMPLETED" and seen[-1]["progress"] == 100
    for body in seen:
        if body["status"] in ("PROCESSING", "COMPLETED"):
            assert 0 <= body["progress"] <= 100

    path = job.download(tmp_path / "nested" / "out.mp4")
    assert path == tmp_path / "nested" / "out.mp4"
    assert is_mp4(path.read_bytes())
    assert [p.name for p in path.parent.iterdir()] == ["out.mp4"], "temporary file left behind"

    into_folder = job.download(tmp_path)
    assert into_folder == tmp_path / f"{job.request_id}.mp4"
    assert is_mp4(into_folder.read_bytes())

    thumbnail = job.download(tmp_path, variant="thumbnail")
    assert thumbnail.parent == tmp_path and thumbnail.name.startswith(job.request_id)
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG

    with pytest.raises(ValueError, match="variant"):
        job.download(tmp_path / "x", variant="spritesheet")


def test_run_and_run_sync(client: Client) -> None:
    assert_completed(client.run(MODEL, prompt=PROMPT, duration="4"))
    assert is_mp4(client.run_sync(MODEL, prompt=PROMPT, duration="4"))


def test_models_lists_the_alias(client: Client) -> None:
    models = client.models()
    assert isinstance(models, list) and models
    assert all(isinstance(m, dict) for m in models)


def test_get_job_reattaches_from_another_client(client: Client, server: Any) -> None:
    job = client.submit_async(MODEL, prompt=PROMPT, duration="4")
    with Client(api_key=server.api_key, base_url=server.url) as other:
        again = other.get_job(job.request_id)
        assert (again.status_url, again.response_url) == (job.status_url, job.response_url)
        result = again.wait(**WAIT)
        assert again.status()["status"] == "COMPLETED"
    assert_completed(result)
    assert result["request_id"] == job.request_id


def test_base_url_with_v1_suffix_and_env_defaults(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(api_key=server.api_key, base_url=server.url + "/v1/") as c:
        assert c.base_url == server.url
        job = c.submit_async(MODEL, prompt=PROMPT, duration="4")
        assert job.status_url.startswith(server.url + "/v2/")
        assert_completed(job.wait(**WAIT))

    monkeypatch.setenv("VIDEOSERVE_API_KEY", server.api_key)
    monkeypatch.setenv("VIDEOSERVE_BASE_URL", server.url + "/v2")
    with Client() as c:
        assert (c.api_key, c.base_url) == (server.api_key, server.url)
        assert c.models()


def test_same_idempotency_key_same_request(client: Client) -> None:
    first = client.submit_async(MODEL, idempotency_key="k-1", prompt=PROMPT, duration="4")
    second = client.submit_async(MODEL, idempotency_key="k-1", prompt=PROMPT, duration="4")
    assert first.request_id == second.request_id


# --- failures -------------------------------------------------------------------------------


def test_blocked_prompt_raises_inference_failed(blocking_server: Any) -> None:
    server = blocking_server
    with Client(api_key=server.api_key, base_url=server.url) as c:
        job = c.submit_async(MODEL, prompt="a forbidden ritual", duration="4")
        seen: list[dict[str, Any]] = []
        with pytest.raises(InferenceFailed) as caught:
            job.wait(**WAIT, on_status=seen.append)
        assert "policy" in (caught.value.detail or "")
        assert caught.value.failure == "moderation"
        assert caught.value.request_id == job.request_id
        assert caught.value.status_body["status"] == "FAILED"
        assert seen[-1]["status"] == "FAILED"

        status = job.status()  # the 422 carrying a FAILED body is a status, not an error
        assert status["status"] == "FAILED" and "policy" in status["error"]

        with pytest.raises(InferenceFailed) as from_result:
            job.result()
        assert from_result.value.status_code == 422  # type: ignore[attr-defined]
        assert "policy" in (from_result.value.detail or "")

        with pytest.raises(InferenceFailed) as from_run_sync:
            c.run_sync(MODEL, prompt="a forbidden ritual", duration="4")
        assert "policy" in (from_run_sync.value.detail or "")
        assert from_run_sync.value.failure == "moderation"
        assert from_run_sync.value.request_id


def test_wait_times_out_with_request_id(idle_server: Any) -> None:
    server = idle_server
    with Client(api_key=server.api_key, base_url=server.url) as c:
        job = c.submit_async(MODEL, prompt=PROMPT, duration="4")
        with pytest.raises(InferenceTimeout) as caught:
            job.wait(timeout=0.3, interval=0.05)
    assert caught.value.request_id == job.request_id
    assert 0.3 <= caught.value.elapsed_s < 10
    assert job.request_id in str(caught.value)


def test_bad_key_is_unauthorized(server: Any) -> None:
    with (
        Client(api_key="not-a-key", base_url=server.url) as c,
        pytest.raises(errors.Unauthorized) as caught,
    ):
        c.submit_async(MODEL, prompt=PROMPT)
    assert caught.value.status_code == 401  # type: ignore[attr-defined]
    assert caught.value.message


def test_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(errors.NotFound) as caught:
        client.submit_async("no-such-model", prompt=PROMPT)
    assert caught.value.status_code == 404  # type: ignore[attr-defined]
    with pytest.raises(errors.NotFound):
        client.run_sync("no-such-model", prompt=PROMPT)


def test_unknown_request_is_not_found(client: Client) -> None:
    with pytest.raises(errors.NotFound):
        client.get_job("does-not-exist").status()


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"prompt": PROMPT, "duration": "7"}, "duration"),
        ({"prompt": PROMPT, "size": "10x10"}, "size"),
        ({"prompt": PROMPT, "colour": "red"}, "colour"),
        ({"duration": "8"}, "prompt"),
    ],
)
def test_invalid_params_name_the_param(client: Client, params: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        client.submit_async(MODEL, **params)
    assert caught.value.status_code == 400  # type: ignore[attr-defined]
    assert caught.value.param == param
    assert param in str(caught.value)


# --- transient faults ---------------------------------------------------------------------


class DroppingTransport(httpx.HTTPTransport):
    """Loses the connection on chosen requests, after the server has handled them or before."""

    def __init__(self, drop: Callable[[httpx.Request], str | None]) -> None:
        super().__init__()
        self.drop = drop
        self.requests: list[httpx.Request] = []
        self.dropped_answers: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        when = self.drop(request)
        if when == "before":
            raise httpx.ConnectError("connection refused (injected)", request=request)
        response = super().handle_request(request)
        if when == "after":
            response.read()
            self.dropped_answers.append(response)
            raise httpx.ReadError("connection reset (injected)", request=request)
        return response


def test_submit_retried_after_lost_answer_is_not_duplicated(server: Any) -> None:
    posts = 0

    def drop(request: httpx.Request) -> str | None:
        nonlocal posts
        if request.method == "POST":
            posts += 1
            return "after" if posts == 1 else None
        return None

    transport = DroppingTransport(drop)
    with (
        httpx.Client(transport=transport) as http,
        Client(api_key=server.api_key, base_url=server.url, http_client=http) as c,
    ):
        job = c.submit_async(MODEL, prompt=PROMPT, duration="4")
        lost = transport.dropped_answers[0].json()["request_id"]
        assert job.request_id == lost  # the retry found the job the lost answer named
        keys = {r.headers["idempotency-key"] for r in transport.requests if r.method == "POST"}
        assert len(keys) == 1 and posts == 2
        assert_completed(job.wait(**WAIT))


def test_wait_survives_dropped_connections(server: Any) -> None:
    polls = 0

    def drop(request: httpx.Request) -> str | None:
        nonlocal polls
        if request.url.path.endswith("/status"):
            polls += 1
            return "before" if polls <= 2 else None
        return None

    transport = DroppingTransport(drop)
    with (
        httpx.Client(transport=transport) as http,
        Client(api_key=server.api_key, base_url=server.url, http_client=http) as c,
    ):
        result = c.submit_async(MODEL, prompt=PROMPT, duration="4").wait(**WAIT)
    assert_completed(result)
    assert polls >= 3


# --- the async client ---------------------------------------------------------------------


async def test_async_client_core_flow(server: Any, tmp_path: Path) -> None:
    seen: list[str] = []

    async def on_status(body: dict[str, Any]) -> None:
        seen.append(body["status"])

    async with AsyncClient(api_key=server.api_key, base_url=server.url + "/v1") as c:
        job = await c.submit_async(MODEL, prompt=PROMPT, duration="4", size="1280x720")
        assert isinstance(job, AsyncJob)
        result = await job.wait(**WAIT, on_status=on_status)
        assert_completed(result)
        assert seen[-1] == "COMPLETED"
        path = await job.download(tmp_path / "async.mp4")
        assert is_mp4(path.read_bytes())

        assert (await c.get_job(job.request_id).status())["status"] == "COMPLETED"
        assert_completed(await c.run(MODEL, prompt=PROMPT, duration="4"))
        assert is_mp4(await c.run_sync(MODEL, prompt=PROMPT, duration="4"))
        assert await c.models()

        with pytest.raises(errors.NotFound):
            await c.submit_async("no-such-model", prompt=PROMPT)
        with pytest.raises(errors.InvalidRequest) as caught:
            await c.submit_async(MODEL, prompt=PROMPT, duration="7")
        assert caught.value.param == "duration"


async def test_async_failure_and_timeout(blocking_server: Any, idle_server: Any) -> None:
    blocked, idle = blocking_server, idle_server
    async with AsyncClient(api_key=blocked.api_key, base_url=blocked.url) as c:
        job = await c.submit_async(MODEL, prompt="a forbidden ritual", duration="4")
        with pytest.raises(InferenceFailed) as caught:
            await job.wait(**WAIT)
        assert "policy" in (caught.value.detail or "")

    async with AsyncClient(api_key=idle.api_key, base_url=idle.url) as c:
        job = await c.submit_async(MODEL, prompt=PROMPT, duration="4")
        with pytest.raises(InferenceTimeout) as timed_out:
            await job.wait(timeout=0.3, interval=0.05)
        assert timed_out.value.request_id == job.request_id
