"""Fixtures shared by every ring of tests: real servers on free ports, both databases.

PostgreSQL and Redis tests skip with a reason when no server is reachable, unless
VIDEOSERVE_REQUIRE_SERVICES=1 (set by .ci/run), where a missing server fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from videoserve.jobs.records import JobResult
from videoserve.settings import Settings

PG_ADMIN_URL = os.environ.get("VIDEOSERVE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("VIDEOSERVE_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_result(output_key: str = "k") -> JobResult:
    """A minimal result for store-level tests that finish jobs without a model."""
    return JobResult(
        output_key=output_key,
        thumbnail_key=output_key + ".jpg",
        served_by="tiny-t2v",
        width=64,
        height=64,
        fps=8.0,
        frames=17,
        seconds=2.125,
    )


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def service_unavailable(what: str, reason: str) -> None:
    message = f"{what} is not reachable ({reason})"
    if REQUIRE_SERVICES:
        pytest.fail(message + "; VIDEOSERVE_REQUIRE_SERVICES=1 makes it required")
    pytest.skip(message)


# --- PostgreSQL ------------------------------------------------------------------------------
def _pg_admin_execute(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    name = "vs_test_" + secrets.token_hex(6)
    try:
        _pg_admin_execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        service_unavailable("PostgreSQL at " + PG_ADMIN_URL, str(exc))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with contextlib.suppress(Exception):
        _pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def open_store(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Factory: `JobStore.open(url, **kwargs)` on the test's database, each closed after it."""
    from videoserve.jobs.store import JobStore

    url = Settings(database_url=database_url).resolved_database_url()
    opened: list[JobStore] = []

    def open_(**kwargs: Any) -> JobStore:
        store = JobStore.open(url, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


# --- live servers ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in models are built once per test session and shared by every server."""
    return tmp_path_factory.mktemp("model-cache")


@dataclass
class LiveServer:
    url: str
    api_key: str
    settings: Settings
    server: Any
    thread: threading.Thread

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def create_key(self, name: str = "other", *, admin: bool = False) -> str:
        return create_key(self.settings, name, admin=admin)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def create_key(settings: Settings, name: str, *, admin: bool = False) -> str:
    """Make a key the way `videoserve keys create` does, on the server's database."""
    from videoserve.jobs.keys import KeyStore
    from videoserve.jobs.store import JobStore

    async def run() -> str:
        store = JobStore.open(settings.resolved_database_url())
        try:
            await store.migrate()
            return (await KeyStore(store.database).create(name, admin=admin))[1]
        finally:
            await store.close()

    return asyncio.run(run())


def start_server(settings: Settings, **app_kwargs: Any) -> LiveServer:
    import uvicorn

    from videoserve.api import create_app

    app = create_app(settings, **app_kwargs)
    api_key = create_key(settings, "test") if settings.auth else ""
    from videoserve.api.server import uvicorn_options

    # The options `videoserve serve` uses: the slow-client guard and the connection cap.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"server-{settings.port}")
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=60)
    if not server.started:
        raise RuntimeError("server failed to start")
    return LiveServer(f"http://127.0.0.1:{settings.port}", api_key, settings, server, thread)


@pytest.fixture
def make_server(
    tmp_path: Path, model_cache: Path, database_url: str
) -> Iterator[Callable[..., LiveServer]]:
    """Factory: a live server with the given settings overrides, stopped after the test.

    Every test that uses it runs twice: on SQLite and on the real PostgreSQL."""
    servers: list[LiveServer] = []

    def make(**overrides: Any) -> LiveServer:
        app_kwargs = {k: overrides.pop(k) for k in ("registry", "moderator") if k in overrides}
        data_dir = overrides.pop("data_dir", None) or tmp_path / f"data{len(servers)}"
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "host": "127.0.0.1",
            "port": free_port(),
            "model_cache_dir": model_cache,
            "poll_interval_seconds": 0.2,
            "aliases": {"sora-2-pro": "tiny-t2v"},
            "database_url": database_url if not servers else _sibling_db(database_url, data_dir),
        }
        values.update(overrides)
        server = start_server(Settings(**values), **app_kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _sibling_db(database_url: str, data_dir: Path) -> str:
    # A second server in one test gets its own database too, unless the test passes one.
    if database_url.startswith("sqlite"):
        return f"sqlite:///{data_dir / 'jobs.db'}"
    return database_url


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A live server on SQLite with the embedded worker and the tiny model."""
    return make_server()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules of toy models (`pytestmark = pytest.mark.usefixtures(...)`): they gain
    nothing from more threads, and on a busy 2-core machine they lose a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
