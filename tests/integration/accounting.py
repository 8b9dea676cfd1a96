"""Helpers shared by the credit, rate-limit, usage and metrics tests: keys with credits, direct
reads of the job database, and a registry with backends that fail or stall on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from tests.conftest import LiveServer, wait_until
from videoserve.jobs import ledger
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.store import JobStore
from videoserve.models.backends.base import (
    Availability,
    Cancelled,
    GeneratedVideo,
    VideoBackend,
)
from videoserve.models.backends.tiny import TINY_NAME
from videoserve.models.params import VideoParams
from videoserve.models.registry import BackendSpec, ModelEntry, ModelRegistry, tiny_backend

T = TypeVar("T")


def with_store(server: LiveServer, use: Callable[[JobStore], Awaitable[T]]) -> T:
    """Run `use(store)` on a store of our own over the server's database."""

    async def run() -> T:
        store = JobStore.open(server.settings.resolved_database_url())
        try:
            await store.migrate()
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def make_key(
    server: LiveServer, name: str, *, credits: float | None = None, admin: bool = False
) -> tuple[str, str]:
    """(plaintext, key id) of a new key, as `videoserve keys create --credits N` makes it."""

    async def create(store: JobStore) -> tuple[str, str]:
        keys = KeyStore(store.database)
        record, plaintext = await keys.create(name, admin=admin, credits=credits)
        return plaintext, record.id

    return with_store(server, create)


def ledger_of(server: LiveServer, key_id: str) -> list[ledger.Entry]:
    return with_store(server, lambda store: ledger.entries(store.database, key_id))


def stored_balance(server: LiveServer, key_id: str) -> float | None:
    return with_store(server, lambda store: ledger.balance(store.database, key_id))


def headers(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def account(server: LiveServer, key: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/account", headers=headers(key))
    assert response.status_code == 200, response.text
    return response.json()


def submit(
    server: LiveServer, key: str, model: str = "sora-2-pro", **params: Any
) -> httpx.Response:
    body = {"prompt": "a cat walking", **params}
    return httpx.post(f"{server.url}/v2/{model}", json=body, headers=headers(key), timeout=30)


def status_of(server: LiveServer, key: str, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers=headers(key))
    assert response.status_code in (200, 422), response.text
    return response.json()


def wait_for_status(
    server: LiveServer, key: str, request_id: str, *wanted: str, timeout: float = 60
) -> dict[str, Any]:
    return wait_until(
        lambda: (body := status_of(server, key, request_id))["status"] in wanted and body,
        timeout=timeout,
    )


# --- models that fail or stall on purpose ---------------------------------------------------
class FailingBackend:
    """Accepts requests like any model, then fails in generate (a model error)."""

    schema = VideoParams

    def __init__(self, name: str) -> None:
        self.name = name

    def availability(self) -> Availability:
        return Availability(True)

    def check(self, params: VideoParams) -> None:
        pass

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def generate(self, params, image, on_progress, should_stop):  # type: ignore[no-untyped-def]
        raise RuntimeError("the GPU caught fire")


class UnencodableBackend(FailingBackend):
    """Makes frames whose thumbnail can be written but whose MP4 cannot (a zero frame rate):
    the job fails in the media stage, after the thumbnail was made."""

    def generate(self, params, image, on_progress, should_stop):  # type: ignore[no-untyped-def]
        frames = np.full((9, 64, 64, 3), 128, dtype=np.uint8)
        return GeneratedVideo(frames=frames, fps=0.0, model=self.name)


class StallingBackend(FailingBackend):
    """Runs until asked to stop (a cancel, or a shutdown), then raises Cancelled."""

    def generate(self, params, image, on_progress, should_stop):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 60  # never outlive a test by much
        step = 0
        while not should_stop() and time.monotonic() < deadline:
            step += 1
            on_progress(min(step, 99), 100)
            time.sleep(0.02)
        raise Cancelled()


class TestRegistry(ModelRegistry):
    """The built-in tiny model plus named test backends, each with a price per second."""

    __test__ = False  # not a test class, despite its name

    def __init__(
        self,
        model_cache: Path,
        backends: dict[str, tuple[Any, float]],
        aliases: dict[str, str] | None = None,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """`backends`: name -> (backend, or None for the tiny model itself; price per second);
        `options`: more entry options per name (max_steps, max_job_seconds...)."""
        test_backends = {name: backend for name, (backend, _) in backends.items()}

        def tiny_or_test(spec: BackendSpec) -> VideoBackend:
            backend = test_backends.get(spec.entry.name)
            return backend if backend is not None else tiny_backend(spec)

        tiny_dir = model_cache / TINY_NAME
        more = options or {}
        entries = [
            ModelEntry(TINY_NAME, "tiny", str(tiny_dir)),
            *(
                ModelEntry(
                    name, "tiny", str(tiny_dir), {"price_per_second": price, **more.get(name, {})}
                )
                for name, (_, price) in backends.items()
            ),
        ]
        super().__init__(
            entries, {"sora-2-pro": TINY_NAME, **(aliases or {})}, factories={"tiny": tiny_or_test}
        )
