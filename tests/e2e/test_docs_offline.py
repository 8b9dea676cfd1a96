"""`/docs` and `/redoc` render offline (issue 16, item 7): Swagger UI and ReDoc load every
asset from the server itself. The browser refuses every request to another origin, so a page
that still needed a CDN would stay blank and the test would fail. And `/docs` is usable
(issue 26, item 6): "Authorize" takes a key, by either scheme the API accepts, and "Try it
out" sends it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

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
    expect(page.get_by_text("API docs by Redocly")).to_be_visible()  # the menu is all there
    assert any(url.endswith("/docs-assets/redoc.standalone.js") for url in served)
    # Not even ReDoc's "powered by" logo: the page's policy keeps the browser from asking.
    assert refused == []
    assert page.errors == []


@pytest.mark.parametrize("scheme", ["ApiKey", "Bearer"])
def test_docs_try_it_out_sends_the_authorized_key(new_page, server, scheme: str) -> None:
    page, _, refused = _offline_page(new_page, server)
    sent: list[dict[str, str]] = []
    page.on(
        "request",
        lambda request: sent.append(request.headers) if "/v1/account" in request.url else None,
    )
    page.goto(f"{server.url}/docs")
    page.locator(".scheme-container button.authorize").click()
    dialog = page.locator(".modal-ux form").filter(has=page.locator(f"h4:has-text('{scheme}')"))
    dialog.locator("input").first.fill(server.api_key)
    dialog.locator("button.authorize").click()
    expect(dialog.locator("button", has_text="Logout")).to_be_visible()  # the key is set
    dialog.locator("button.btn-done").click()

    account = page.locator(".opblock").filter(
        has=page.locator(".opblock-summary-path[data-path='/v1/account']")
    )
    account.locator(".opblock-summary").click()
    account.locator("button.try-out__btn").click()
    account.locator("button.execute").click()
    answer = account.locator(".live-responses-table tr.response")
    expect(answer.locator(".response-col_status")).to_have_text("200", timeout=15_000)
    expect(answer.locator(".response-col_description")).to_contain_text('"object": "account"')
    [headers] = sent
    given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert given == server.api_key
    assert refused == []
