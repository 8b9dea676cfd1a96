"""`/docs` and `/redoc` render offline (issue 16, item 7): Swagger UI and ReDoc load every
asset from the server itself. The browser refuses every request to another origin, so a page
that still needed a CDN would stay blank and the test would fail."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.conftest import LiveServer

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails, when required) with the reason
    expect = None


def _offline_page(new_page: Any, server: LiveServer) -> tuple[Any, list[str], list[str]]:
    page = new_page()
    own = urlsplit(server.url).netloc
    served, refused = [], []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlsplit(url).netloc == own or url.startswith(("data:", "blob:")):
            served.append(url)
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort()

    page.route("**/*", route)
    return page, served, refused


def test_swagger_ui_renders_with_every_asset_from_the_server(new_page, server) -> None:
    page, served, refused = _offline_page(new_page, server)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("videoserve")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert page.locator(".opblock").count() > 10  # every operation, from /openapi.json
    assert refused == []
    assert any(url.endswith("/docs-assets/swagger-ui-bundle.js") for url in served)
    assert any(url.endswith("/docs-assets/swagger-ui.css") for url in served)
    assert page.errors == []


def test_redoc_renders_with_every_asset_from_the_server(new_page, server) -> None:
    page, served, refused = _offline_page(new_page, server)
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("videoserve", timeout=30_000)
    assert any(url.endswith("/docs-assets/redoc.standalone.js") for url in served)
    # ReDoc's bundle links its "powered by" logo from its CDN: decorative, and the page renders
    # without it (offline it is simply not shown). Nothing else may leave the server.
    assert [url for url in refused if not url.startswith("https://cdn.redoc.ly/")] == []
