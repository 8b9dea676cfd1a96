"""A real browser for the end-to-end tests: Playwright for Python driving Debian's Chromium.

No browser is ever downloaded (`playwright install` is never run): the tests use the system's
`/usr/bin/chromium` (apt package `chromium`). Without it, or without the `playwright` package,
they skip with the reason, unless VIDEOSERVE_REQUIRE_SERVICES=1, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES, LiveServer

CHROMIUM = Path(os.environ.get("VIDEOSERVE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "playground"


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; VIDEOSERVE_REQUIRE_SERVICES=1 makes the browser tests required")
    pytest.skip(reason)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the page sees the same API on either database, and the integration suites
    already run every store path on PostgreSQL."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def make_server(make_server: Callable[..., LiveServer]) -> Callable[..., LiveServer]:
    """The shared factory, called on a helper thread: Playwright's sync API keeps an event loop
    running on the main thread, where the factory's `asyncio.run` (creating the key) would fail."""

    def make(**overrides: Any) -> LiveServer:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(make_server, **overrides).result()

    return make


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()


# Package scope, not session: Playwright's sync API keeps an event loop running on the main
# thread while it lives, which would break every later test that starts one of its own.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole session; each test gets its own context."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
    except Exception as exc:
        playwright.stop()
        _unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Factory: a page in a fresh context (empty localStorage), closed after the test.

    Uncaught exceptions are collected on `page.errors`, console errors (a module that failed
    to load, a refused script) on `page.console_errors`.
    """
    contexts: list[Any] = []

    def make(color_scheme: str = "light", **options: Any) -> Any:
        options.setdefault("viewport", {"width": 1280, "height": 900})
        context = browser.new_context(color_scheme=color_scheme, accept_downloads=True, **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
        page.console_errors = []  # type: ignore[attr-defined]
        page.on(
            "console",
            lambda message: (
                page.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot() -> Callable[..., list[Path]]:
    """Save the page under test-artifacts/playground/ as NAME-light.png and NAME-dark.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str, *, full_page: bool = True) -> list[Path]:
        paths = []
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            path = ARTIFACTS / f"{name}-{scheme}.png"
            page.screenshot(path=str(path), full_page=full_page)
            paths.append(path)
        page.emulate_media(color_scheme="light")
        return paths

    return take
