"""The playground at `/`, end to end in a real browser against a live server.

Each test drives headless Chromium (see conftest.py) against `make_server()`, which serves
`sora-2-pro` with the tiny model. Screenshots of every state land in test-artifacts/playground/
in both colour schemes. No fixed sleeps: Playwright's `expect` and `wait_for_*` with timeouts.
Answers the server cannot be made to give on demand (429, a stream event with a chosen failure)
are stubbed or amended with `page.route`; everything else is
the real server. Routes another scope is still building (POST /v1/videos/extensions and /edits,
issue 14) gate their end-to-end tests on the app's own route table, never on a fake server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import LiveServer
from tests.integration.accounting import (
    StallingBackend,
    TestRegistry,
    headers,
    make_key,
    submit,
    wait_for_status,
)
from videoserve.api import create_app
from videoserve.api.routes.ui import STATIC_DIR
from videoserve.settings import Settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails, when required) with the reason
    expect = None

Page = Any
DONE_TIMEOUT = 120_000  # the first job of a session builds the tiny model


def _app_routes() -> set[tuple[str, str]]:
    """(method, path) of every API route the app has, from its own OpenAPI document (FastAPI
    keeps included routers unflattened in `app.routes`): what the gated tests ask for."""
    paths = create_app(Settings()).openapi()["paths"]
    return {(method.upper(), path) for path, operations in paths.items() for method in operations}


APP_ROUTES = _app_routes()
HAS_EXTENSIONS = ("POST", "/v1/videos/extensions") in APP_ROUTES
HAS_EDITS = ("POST", "/v1/videos/edits") in APP_ROUTES

# Every change of the progress label, recorded from the page's first script on.
RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const label = document.getElementById("job-progress-label");
  new MutationObserver(() => {
    const text = label.textContent;
    if (window.__progress[window.__progress.length - 1] !== text) window.__progress.push(text);
  }).observe(label, { childList: true, characterData: true, subtree: true });
});
"""


def open_playground(
    new_page: Callable[..., Page], server: LiveServer, key: str | None = None, **options: Any
) -> Page:
    page = new_page(**options)
    page.add_init_script(RECORD_PROGRESS)
    page.goto(server.url + "/")
    expect(page.locator("#fields")).to_have_attribute("data-ready", "true")
    page.fill("#api-key", server.api_key if key is None else key)
    return page


def fill_form(page: Page, prompt: str, duration: str = "4") -> None:
    page.fill("#param-prompt", prompt)
    page.select_option("#param-duration", duration)


def wait_completed(page: Page) -> None:
    expect(page.locator("#job-status")).to_have_text("COMPLETED", timeout=DONE_TIMEOUT)
    expect(page.locator("#job-progress-label")).to_have_text("100%")
    expect(page.locator("#result")).to_be_visible()
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return v.readyState >= 1 && v.duration > 0 && v.videoWidth > 0; }",
        timeout=30_000,
    )


def player_facts(page: Page) -> dict[str, Any]:
    return page.evaluate(
        "() => { const v = document.getElementById('player');"
        " return {duration: v.duration, width: v.videoWidth, height: v.videoHeight}; }"
    )


def meta(page: Page, term: str) -> str:
    return page.locator(f'#result-meta dd[data-term="{term}"]').inner_text()


def background(page: Page) -> str:
    return page.evaluate("() => getComputedStyle(document.body).backgroundColor")


def png(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


# --- the happy path --------------------------------------------------------------------------
def test_generate_watch_progress_play_and_download(
    make_server: Callable[..., LiveServer],
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
    tmp_path: Path,
) -> None:
    server = make_server()
    page = new_page()
    page.add_init_script(RECORD_PROGRESS)
    # An expired request in the history: the gallery must drop it (it answers 404).
    page.add_init_script(
        "if (!localStorage.getItem('videoserve.recent')) localStorage.setItem("
        "'videoserve.recent', JSON.stringify([{id: 'video_expired0000', model: 'sora-2-pro',"
        " prompt: 'long gone', created: Date.now() - 7200000}]));"
    )
    page.goto(server.url + "/")
    expect(page.locator("#fields")).to_have_attribute("data-ready", "true")
    expect(page.locator("#model")).to_have_value("sora-2-pro")
    # The form follows the model's schema: duration and size are selects of the enums.
    durations = page.locator("#param-duration option").evaluate_all(
        "nodes => nodes.map(n => n.value)"
    )
    assert durations == ["4", "8", "12"]
    expect(page.locator("#param-size")).to_have_value("1280x720")
    assert page.locator("#param-size option").count() == 4
    # sora-2-pro has no advanced knobs; tiny-t2v has them.
    expect(page.locator("#advanced")).to_be_hidden()

    page.fill("#api-key", server.api_key)
    fill_form(page, "a red fox trotting through fresh snow at dawn")
    expect(page.locator("#snippet-code")).to_contain_text('"duration": 4')
    screenshot(page, "01-form")

    page.click("#generate")
    expect(page.locator("#job")).to_be_visible()
    wait_completed(page)
    progress = page.evaluate("window.__progress")
    values = [int(v.rstrip("%")) for v in progress]
    assert values[-1] == 100 and values == sorted(values), progress
    # The API's figures, and what the browser measured from the file itself.
    request_id = page.locator("#job-id").inner_text()
    body = httpx.get(
        f"{server.url}/v2/requests/{request_id}", headers={"x-api-key": server.api_key}
    ).json()
    assert meta(page, "Size") == f"{body['width']} × {body['height']}"
    assert meta(page, "Served by") == "tiny-t2v"
    assert meta(page, "Requested") == "1280x720, 4 s"
    facts = player_facts(page)
    assert facts["duration"] > 0
    assert (facts["width"], facts["height"]) == (body["width"], body["height"])
    expect(page.locator('#result-meta dd[data-term="Player reports"]')).to_contain_text(
        f"{body['width']} × {body['height']}"
    )
    for term in ("Queue time", "Inference time", "Total time"):
        assert re.fullmatch(r"\d+\.\d+ s", meta(page, term)), (term, meta(page, term))
    # The tiny model makes no sound: "none" where the server says so (i12 adds the field),
    # "—" where it does not say; either way the player stays muted.
    assert body.get("has_audio") is not True
    assert meta(page, "Audio") == ("none" if body.get("has_audio") is False else "—")
    assert page.evaluate("document.getElementById('player').muted") is True
    # The live stream where the server has it (else the page polls: see the stubbed tests).
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    streams = "/v2/requests/{request_id}/events" in paths
    expect(page.locator("#job-transport")).to_have_text("· live" if streams else "· polling")
    screenshot(page, "02-result")

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    saved = tmp_path / "download.mp4"
    download.save_as(saved)
    assert saved.read_bytes()[4:8] == b"ftyp"
    assert download.suggested_filename == f"{request_id}.mp4"

    # The gallery: this request with its thumbnail; the expired one is gone for good.
    item = page.locator(f'#gallery button[data-id="{request_id}"]')
    expect(item).to_be_visible()
    expect(item.locator("img")).to_be_visible()
    expect(item.locator("img")).to_have_js_property("complete", True)
    assert item.locator("img").evaluate("img => img.naturalWidth") > 0
    expect(page.locator('#gallery button[data-id="video_expired0000"]')).to_have_count(0)
    stored = page.evaluate("JSON.parse(localStorage.getItem('videoserve.recent'))")
    assert [e["id"] for e in stored] == [request_id]

    # A reload keeps the key and the gallery; opening the item shows the video again.
    page.reload()
    expect(page.locator("#api-key")).to_have_value(server.api_key)
    item = page.locator(f'#gallery button[data-id="{request_id}"]')
    expect(item.locator("img")).to_be_visible()
    item.click()
    wait_completed(page)

    # Readable in both schemes: the colours really change with prefers-color-scheme.
    page.emulate_media(color_scheme="dark")
    dark = background(page)
    page.emulate_media(color_scheme="light")
    assert dark != background(page)

    # Narrow screens: one column, nothing wider than the viewport.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "03-mobile")
    assert page.errors == []


def test_snippets_run_as_shown(
    server: LiveServer,
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
    tmp_path: Path,
) -> None:
    """The Python snippets for the current form are copied out of the page and run."""
    page = open_playground(new_page, server)
    fill_form(page, "a lighthouse in a storm")
    page.select_option("#param-size", "720x1280")
    code = page.locator("#snippet-code")
    expect(code).to_contain_text(f"{server.url}/v2/sora-2-pro")
    expect(code).to_contain_text('"size": "720x1280"')

    page.click("#tab-openai")
    expect(code).to_contain_text('seconds="4"')
    expect(code).to_contain_text(f'base_url="{server.url}/v1"')
    expect(code).to_contain_text("client.videos.create(")
    # Arrow keys move between the tabs.
    page.focus("#tab-openai")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#tab-segmind")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#tab-segmind")).to_be_focused()
    screenshot(page, "04-snippets")

    env = {**os.environ, "VIDEOSERVE_API_KEY": server.api_key}
    for tab in ("python", "segmind", "openai"):
        page.click(f"#tab-{tab}")
        snippet = code.inner_text()
        workdir = tmp_path / tab
        workdir.mkdir()
        run = subprocess.run(
            [sys.executable, "-c", snippet],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, f"{tab} snippet failed:\n{snippet}\n{run.stderr}"
        assert (workdir / "out.mp4").read_bytes()[4:8] == b"ftyp", tab


# --- failures, each in words -------------------------------------------------------------------
def test_blocked_prompt_shows_the_reason(
    make_server: Callable[..., LiveServer],
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
) -> None:
    server = make_server(blocklist=["forbidden"])
    page = open_playground(new_page, server)
    fill_form(page, "a forbidden ritual")
    # Keyboard only: Ctrl+Enter in the prompt submits.
    page.focus("#param-prompt")
    page.keyboard.press("Control+Enter")
    error = page.locator("#job-error")
    expect(error).to_be_visible(timeout=DONE_TIMEOUT)
    expect(error).to_contain_text("content policy")
    expect(error).to_contain_text("forbidden")
    expect(page.locator("#job-status")).to_have_text("FAILED")
    expect(page.locator("#result")).to_be_hidden()
    request_id = page.locator("#job-id").inner_text()
    expect(page.locator(f'#gallery button[data-id="{request_id}"] .badge')).to_have_text("FAILED")
    screenshot(page, "05-blocked")


def test_bad_key_shows_the_401(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    page = open_playground(new_page, server, key="vs_not_a_real_key")
    fill_form(page, "a quiet harbour")
    page.click("#generate")
    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("API key refused (401)")
    expect(error).to_contain_text("invalid API key")
    expect(page.locator("#api-key")).to_have_attribute("aria-invalid", "true")
    expect(error).to_contain_text("videoserve keys create")  # how to get one
    expect(page.locator("#job")).to_be_hidden()
    screenshot(page, "06-bad-key")
    # Typing a new key clears the mark.
    page.fill("#api-key", server.api_key)
    expect(page.locator("#api-key")).not_to_have_attribute("aria-invalid", "true")


def test_server_400_highlights_the_field(
    make_server: Callable[..., LiveServer],
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
) -> None:
    """The operator's prompt limit is below the schema's: the browser's check passes, the
    server answers 400 naming `prompt`, and the page marks that field."""
    server = make_server(max_prompt_chars=20)
    page = open_playground(new_page, server)
    fill_form(page, "a very long prompt that the operator's limit refuses")
    page.click("#generate")
    expect(page.locator("#form-error")).to_contain_text("Invalid request (400)")
    expect(page.locator("#field-prompt")).to_have_class(re.compile(r"\binvalid\b"))
    expect(page.locator("#param-prompt")).to_have_attribute("aria-invalid", "true")
    # The field comes from the answer's `param`; its message is shown as the server wrote it.
    expect(page.locator("#error-prompt")).to_have_text(
        re.compile(r"^prompt: must be at most 20 characters \(got \d+\)$")
    )
    expect(page.locator("#param-prompt")).to_be_focused()
    screenshot(page, "07-server-400")
    # Editing the field clears its mark.
    page.fill("#param-prompt", "short")
    expect(page.locator("#field-prompt")).not_to_have_class(re.compile(r"\binvalid\b"))


def test_client_checks_the_schema_before_sending(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    page = open_playground(new_page, server)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.select_option("#model", "tiny-t2v")
    expect(page.locator("#advanced")).to_be_visible()
    for name in ("seed", "negative_prompt", "num_inference_steps", "guidance_scale"):
        expect(page.locator(f"#advanced #param-{name}")).to_be_attached()

    # Required prompt.
    page.click("#generate")
    expect(page.locator("#error-prompt")).to_have_text("required")
    # Over the schema's maxLength.
    page.fill("#param-prompt", "a" * 4001)
    expect(page.locator("#counter-prompt")).to_have_text("4001 / 4000")
    page.click("#generate")
    expect(page.locator("#error-prompt")).to_have_text("must be at most 4000 characters (got 4001)")
    # Out of the seed's range: the Advanced section opens to show it.
    page.fill("#param-prompt", "a kite over the dunes")
    page.click("#advanced summary")
    page.fill("#param-seed", "4294967296")
    page.fill("#param-guidance_scale", "7.5")
    page.click("#advanced summary")  # collapsed again: the error must reopen it
    expect(page.locator("#param-seed")).to_be_hidden()
    page.click("#generate")
    expect(page.locator("#advanced")).to_have_attribute("open", "")
    expect(page.locator("#error-seed")).to_have_text(
        "must be between 0 and 4294967295 (got 4294967296)"
    )
    expect(page.locator("#param-seed")).to_be_focused()
    expect(page.locator("#form-error")).to_contain_text("Seed: must be between")
    screenshot(page, "08-client-checks")
    assert posts == []

    # Fixed, it goes through with the advanced values.
    page.fill("#param-seed", "42")
    page.click("#generate")
    wait_completed(page)
    assert meta(page, "Seed") == "42"
    request_id = page.locator("#job-id").inner_text()
    body = httpx.get(
        f"{server.url}/v2/requests/{request_id}", headers={"x-api-key": server.api_key}
    ).json()
    assert body["params"]["seed"] == 42
    assert body["params"]["guidance_scale"] == 7.5
    assert body["params"]["duration"] == 8  # the schema's default, sent as an integer


def test_rate_limit_counts_down_and_credits_show_the_balance(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    """The 406's figures come from its `balance` and `price` fields: this message has none."""
    page = open_playground(new_page, server)
    fill_form(page, "a paper boat")
    refused = {"error": "insufficient credits", "code": "insufficient_credits"}
    answers = [
        (406, {}, {**refused, "balance": 2.5, "price": 8}),
        (429, {"Retry-After": "2"}, {"error": "rate limit exceeded: 10 per 1 minute"}),
    ]

    def stub(route: Any) -> None:
        if route.request.method != "POST" or not answers:
            route.continue_()
            return
        status, headers, body = answers.pop(0)
        route.fulfill(
            status=status,
            headers={**headers, "Content-Type": "application/json"},
            body=json.dumps(body),
        )

    page.route("**/v2/sora-2-pro", stub)
    page.click("#generate")
    error = page.locator("#form-error")
    expect(error).to_contain_text("Not enough credits (406)")
    expect(error).to_contain_text("Your balance: 2.5 credits; this request costs 8 credits.")
    screenshot(page, "09-credits")

    page.click("#generate")
    expect(error).to_contain_text("Rate limited (429)")
    expect(page.locator("#retry-countdown")).to_contain_text("you can submit again in")
    expect(page.locator("#generate")).to_be_disabled()
    screenshot(page, "10-rate-limited")
    expect(page.locator("#generate")).to_be_enabled(timeout=10_000)
    expect(page.locator("#retry-countdown")).to_have_text("")
    page.click("#generate")
    wait_completed(page)


# --- inputs -------------------------------------------------------------------------------------
def test_upload_as_input_reference(
    server: LiveServer,
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
    tmp_path: Path,
) -> None:
    image = png(tmp_path / "first-frame.png")
    page = open_playground(new_page, server)
    fill_form(page, "the first frame comes to life")
    expect(page.locator("#ref-file-row")).to_be_hidden()
    page.check("#ref-mode-file")
    # Picked None-less upload with no file: refused in words.
    page.click("#generate")
    expect(page.locator("#error-input_reference")).to_contain_text("choose an image file")
    expect(page.locator("#form-error")).to_be_visible()
    page.set_input_files("#ref-file", str(image))
    expect(page.locator("#ref-preview")).to_be_visible()
    expect(page.locator("#ref-info")).to_contain_text("64 × 64 px")
    # Fixed: the field's mark and the form's summary both go.
    expect(page.locator("#error-input_reference")).to_be_hidden()
    expect(page.locator("#form-error")).to_be_hidden()
    page.click("#tab-python")
    expect(page.locator("#snippet-code")).to_contain_text('open("first-frame.png", "rb")')
    screenshot(page, "11-upload")
    page.click("#generate")
    wait_completed(page)
    request_id = page.locator("#job-id").inner_text()
    body = httpx.get(
        f"{server.url}/v2/requests/{request_id}", headers={"x-api-key": server.api_key}
    ).json()
    assert body["params"]["input_reference"].startswith("data URI")

    # A URL the server refuses to fetch (loopback): the 400 lands on the field.
    page.check("#ref-mode-url")
    page.fill("#ref-url", "http://127.0.0.1:9/frame.png")
    page.click("#generate")
    expect(page.locator("#form-error")).to_contain_text("Invalid request (400)")
    expect(page.locator("#field-input_reference")).to_have_class(re.compile(r"\binvalid\b"))
    screenshot(page, "12-reference-url-400")


# --- progress transports and cancelling ---------------------------------------------------------
def queue_one(new_page: Callable[..., Page], server: LiveServer, prompt: str) -> Page:
    """A request on a server with no worker: it stays QUEUED."""
    page = open_playground(new_page, server)
    fill_form(page, prompt)
    page.click("#generate")
    expect(page.locator("#job-status")).to_have_text("QUEUED")
    expect(page.locator("#job-detail")).to_contain_text("Queue position 1")
    return page


def test_queue_position_and_cancel(
    make_server: Callable[..., LiveServer],
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
) -> None:
    server = make_server(embedded_worker=False)
    page = queue_one(new_page, server, "a snail crossing a road")
    cancel = page.locator("#cancel")
    expect(cancel).to_be_visible()
    screenshot(page, "13-queued")
    cancel.click()
    expect(page.locator("#job-status")).to_have_text("FAILED")
    expect(page.locator("#job-error")).to_contain_text("Cancelled: cancelled by the user")
    expect(page.locator("#job-detail")).to_have_text("The request was cancelled.")
    expect(cancel).to_be_hidden()
    expect(page.locator("#progress-row")).to_be_hidden()
    screenshot(page, "14-cancelled")


def test_queued_line_shows_the_start_estimate(
    make_server: Callable[..., LiveServer],
    new_page: Callable[..., Page],
    model_cache: Path,
    screenshot: Callable[..., list[Path]],
) -> None:
    """A real queue: one completed job of the tiny model gives its recent duration, a stalled
    job holds the only slot, and the page's request waits behind it with an estimate."""
    registry = TestRegistry(model_cache, {"stall": (StallingBackend("stall"), 0.0)})
    server = make_server(registry=registry, worker_models=["stall", "tiny-t2v"])
    key = server.api_key
    done = submit(server, key, duration=4).json()["request_id"]
    wait_for_status(server, key, done, "COMPLETED", timeout=120)
    stalled = submit(server, key, "stall", duration=4).json()["request_id"]
    wait_for_status(server, key, stalled, "PROCESSING")
    page = queue_one(new_page, server, "a heron waiting in the reeds")
    # The server re-reads the model's recent job times every few seconds.
    expect(page.locator("#job-detail")).to_contain_text("Starts in about", timeout=30_000)
    expect(page.locator("#job-detail")).not_to_contain_text("Waiting:")
    screenshot(page, "13b-queued-with-estimate")
    page.locator("#cancel").click()
    expect(page.locator("#job-status")).to_have_text("FAILED")
    httpx.post(f"{server.url}/v2/requests/{stalled}/cancel", headers=headers(key))


def test_cancel_of_a_request_that_is_gone(
    make_server: Callable[..., LiveServer], new_page: Callable[..., Page]
) -> None:
    """Cancel always exists (the page never probes for it); a 404 means the request expired
    between the last status and the click: the button goes and the page says so."""
    server = make_server(embedded_worker=False)
    page = queue_one(new_page, server, "a snail crossing a road")
    page.route(
        "**/v2/requests/*/cancel",
        lambda route: route.fulfill(
            status=404,
            headers={"Content-Type": "application/json"},
            body=json.dumps({"error": "request not found"}),
        ),
    )
    cancel = page.locator("#cancel")
    expect(cancel).to_be_visible()
    cancel.click()
    expect(cancel).to_be_hidden()
    expect(page.locator("#toast")).to_contain_text("The request is gone")
    expect(page.locator("#job-status")).to_have_text("QUEUED")


def test_stream_events_drive_the_page(
    make_server: Callable[..., LiveServer], new_page: Callable[..., Page]
) -> None:
    """A stubbed event stream with a failure no real run gives on demand: its `status` events
    (after a keep-alive comment) drive the page. No worker: nothing runs behind the stub."""
    server = make_server(embedded_worker=False)
    page = open_playground(new_page, server)
    events = [
        {"status": "QUEUED", "queue_position": 3},
        {"status": "PROCESSING", "progress": 40},
        {"status": "FAILED", "error": "stream says: the worker ran out of memory"},
    ]
    body = ": keep-alive\n\n" + "".join(
        f"event: status\ndata: {json.dumps(event)}\n\n" for event in events
    )
    page.route(
        "**/v2/requests/*/events",
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=body
        ),
    )
    fill_form(page, "a storm over the sea")
    page.click("#generate")
    expect(page.locator("#job-error")).to_contain_text(
        "Generation failed: stream says: the worker ran out of memory"
    )
    expect(page.locator("#job-transport")).to_have_text("· live")
    assert "40%" in page.evaluate("window.__progress")


def test_failure_code_names_the_ending_not_the_message(
    make_server: Callable[..., LiveServer], new_page: Callable[..., Page]
) -> None:
    """The title of a failure comes from its code: a message that says "cancelled" on a job
    whose code is `timeout` is still a time-out (the page reads no message text)."""
    server = make_server(embedded_worker=False)
    page = open_playground(new_page, server)
    failed = {"status": "FAILED", "error": "cancelled by the user", "code": "timeout"}
    page.route(
        "**/v2/requests/*/events",
        lambda route: route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream"},
            body=f"event: status\ndata: {json.dumps(failed)}\n\n",
        ),
    )
    fill_form(page, "a clock that never stops")
    page.click("#generate")
    error = page.locator("#job-error")
    expect(error).to_contain_text("Timed out: cancelled by the user")
    expect(error).to_have_attribute("data-code", "timeout")
    expect(page.locator("#job-detail")).to_have_text("The request failed.")


def test_stream_that_ends_early_falls_back_to_polling(
    server: LiveServer, new_page: Callable[..., Page]
) -> None:
    page = open_playground(new_page, server)
    page.route(
        "**/v2/requests/*/events",
        lambda route: route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream"},
            body='event: status\ndata: {"status": "PROCESSING", "progress": 10}\n\n',
        ),
    )
    fill_form(page, "a stream that stops")
    page.click("#generate")
    wait_completed(page)
    expect(page.locator("#job-transport")).to_have_text("· polling")


def test_polling_when_there_is_no_stream(server: LiveServer, new_page: Callable[..., Page]) -> None:
    page = open_playground(new_page, server)
    page.route(
        "**/v2/requests/*/events",
        lambda route: route.fulfill(
            status=404,
            headers={"Content-Type": "application/json"},
            body='{"error": "not found"}',
        ),
    )
    fill_form(page, "an old server")
    page.click("#generate")
    wait_completed(page)
    expect(page.locator("#job-transport")).to_have_text("· polling")


# --- the page itself --------------------------------------------------------------------------
def test_page_and_assets_are_served_and_kept_out_of_openapi(server: LiveServer) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/js/main.js"></script>' in page.text
    modules = [f"js/{path.name}" for path in sorted((STATIC_DIR / "js").glob("*.js"))]
    assert "js/main.js" in modules and len(modules) > 5
    for name, kind in [*((m, "text/javascript") for m in modules), ("app.css", "text/css")]:
        asset = httpx.get(f"{server.url}/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
    assert httpx.get(f"{server.url}/static/app.js").status_code == 404  # split into js/
    # Nothing fetched from elsewhere: the page works offline.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    assert httpx.get(server.url + "/static/../settings.py").status_code == 404
    assert httpx.get(server.url + "/static/%2e%2e/routes/ui.py").status_code == 404
    assert httpx.get(server.url + "/static/nope.js").status_code == 404
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_page_loads_its_modules_without_errors(
    server: LiveServer, new_page: Callable[..., Page]
) -> None:
    """Every ES module under static/js/ is fetched as text/javascript and links; nothing logs
    an error; the page never reads /openapi.json to find out what the server can do."""
    page = new_page()
    page.add_init_script(
        f"localStorage.setItem('videoserve.apiKey', JSON.stringify({json.dumps(server.api_key)}))"
    )
    served: dict[str, str] = {}
    asked: list[str] = []
    page.on("request", lambda request: asked.append(urlparse(request.url).path))
    page.on(
        "response",
        lambda response: served.__setitem__(
            urlparse(response.url).path, response.headers.get("content-type", "")
        ),
    )
    with page.expect_response(lambda r: urlparse(r.url).path == "/v1/requests"):
        page.goto(server.url + "/")
    expect(page.locator("#fields")).to_have_attribute("data-ready", "true")
    expect(page.locator("#gallery li.empty")).to_be_visible()
    modules = sorted(f"/static/js/{path.name}" for path in (STATIC_DIR / "js").glob("*.js"))
    assert sorted(p for p in served if p.startswith("/static/js/")) == modules
    assert all(served[m].startswith("text/javascript") for m in modules), served
    assert "/openapi.json" not in asked
    assert page.errors == [] and page.console_errors == []


def test_insufficient_credits_shows_balance_and_price(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    """A real key with 3 credits asks for a 4 s video (4 credits): the real 406."""
    with ThreadPoolExecutor(max_workers=1) as pool:  # make_key runs its own event loop
        key, _ = pool.submit(make_key, server, "poor", credits=3).result()
    page = open_playground(new_page, server, key=key)
    fill_form(page, "a paper boat", duration="4")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#generate")
    body = answer.value.json()
    assert answer.value.status == 406
    error = page.locator("#form-error")
    expect(error).to_contain_text("Not enough credits (406)")
    expect(error).to_contain_text(body["error"])
    if "balance" in body and "price" in body:
        assert (body["balance"], body["price"]) == (3, 4)
        expect(error.locator(".credits")).to_have_text(
            "Your balance: 3 credits; this request costs 4 credits."
        )
    else:  # a server before the structured fields (issue 11): the message alone, unparsed
        expect(error.locator(".credits")).to_have_count(0)
    expect(page.locator("#job")).to_be_hidden()
    screenshot(page, "15-credits-real")


def test_audio_facts_when_the_result_has_sound(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    """The built-in `tiny-t2av` (a tiny LTX-2) makes real sound: the player must not be muted,
    and the facts say so."""
    page = open_playground(new_page, server)
    page.select_option("#model", "tiny-t2av")
    fill_form(page, "waves on a pebble beach")
    page.click("#generate")
    wait_completed(page)
    assert meta(page, "Audio") == "with audio · 24 kHz · aac"
    assert page.evaluate("document.getElementById('player').muted") is False
    request_id = page.locator("#job-id").inner_text()
    expect(page.locator(f'#gallery li[data-id="{request_id}"] .caption')).to_contain_text(
        "with audio"
    )
    screenshot(page, "16-audio")


# --- extend and edit from a card (issue 14) ---------------------------------------------------
def completed_request(new_page: Callable[..., Page], server: LiveServer) -> tuple[Page, str]:
    page = open_playground(new_page, server)
    fill_form(page, "a kite over the dunes")
    page.click("#generate")
    wait_completed(page)
    return page, page.locator("#job-id").inner_text()


def test_extend_and_edit_send_the_openai_requests(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    """The card's actions send OpenAI's JSON with the key as a Bearer token, to the real
    server; where it has no such route yet, its answer is shown in the dialog."""
    page, request_id = completed_request(new_page, server)
    sent: list[Any] = []

    def record(route: Any) -> None:
        sent.append(route.request)
        route.continue_()

    page.route(re.compile(r"/v1/videos/(extensions|edits)$"), record)
    card = page.locator(f'#gallery li[data-id="{request_id}"]')
    card.locator('[data-action="extend"]').click()
    dialog = page.locator("#followup")
    expect(dialog).to_be_visible()
    expect(page.locator("#followup-seconds-field")).to_be_visible()
    assert page.locator("#followup-seconds option").evaluate_all(
        "nodes => nodes.map(n => n.value)"
    ) == ["4", "8", "12"]  # sora-2-pro's durations
    page.click("#followup-submit")  # no prompt: refused here, nothing sent
    expect(page.locator("#followup-prompt-error")).to_have_text("required")
    assert sent == []
    page.fill("#followup-prompt", "the kite climbs into the clouds")
    page.select_option("#followup-seconds", "8")
    screenshot(page, "17-extend-dialog")
    page.click("#followup-submit")
    if HAS_EXTENSIONS:
        expect(dialog).to_be_hidden()
        expect(page.locator("#job-id")).not_to_have_text(request_id)
    else:
        expect(page.locator("#followup-error")).to_be_visible()
        page.click("#followup-close")
    extension = sent[0]
    assert extension.method == "POST" and extension.url == f"{server.url}/v1/videos/extensions"
    assert extension.post_data_json == {
        "prompt": "the kite climbs into the clouds",
        "seconds": "8",
        "video": {"id": request_id},
    }
    assert extension.headers["authorization"] == f"Bearer {server.api_key}"
    assert "x-api-key" not in extension.headers

    card.locator('[data-action="edit"]').click()
    expect(page.locator("#followup-seconds-field")).to_be_hidden()
    page.fill("#followup-prompt", "make it night")
    page.click("#followup-submit")
    if HAS_EDITS:
        expect(dialog).to_be_hidden()
    else:
        expect(page.locator("#followup-error")).to_be_visible()
    edit = sent[1]
    assert edit.url == f"{server.url}/v1/videos/edits"
    assert edit.post_data_json == {"prompt": "make it night", "video": {"id": request_id}}
    assert edit.headers["authorization"] == f"Bearer {server.api_key}"


@pytest.mark.skipif(not HAS_EXTENSIONS, reason="needs POST /v1/videos/extensions (issue 14)")
def test_extend_from_a_card_runs_end_to_end(
    server: LiveServer, new_page: Callable[..., Page], screenshot: Callable[..., list[Path]]
) -> None:
    page, request_id = completed_request(new_page, server)
    page.locator("#result-followups [data-action='extend']").click()
    page.fill("#followup-prompt", "the kite climbs into the clouds")
    page.select_option("#followup-seconds", "4")
    page.click("#followup-submit")
    expect(page.locator("#job-id")).not_to_have_text(request_id)
    extension_id = page.locator("#job-id").inner_text()
    wait_completed(page)
    card = page.locator(f'#gallery li[data-id="{extension_id}"]')
    expect(card.locator(".caption")).to_contain_text("extension")
    video = httpx.get(
        f"{server.url}/v1/videos/{extension_id}",
        headers={"Authorization": f"Bearer {server.api_key}"},
    ).json()
    assert video["status"] == "completed"
    screenshot(page, "18-extended")


@pytest.mark.skipif(not HAS_EDITS, reason="needs POST /v1/videos/edits (issue 14)")
def test_edit_from_a_card_runs_end_to_end(
    server: LiveServer, new_page: Callable[..., Page]
) -> None:
    page, request_id = completed_request(new_page, server)
    page.locator(f'#gallery li[data-id="{request_id}"] [data-action="edit"]').click()
    page.fill("#followup-prompt", "make it night")
    page.click("#followup-submit")
    expect(page.locator("#job-id")).not_to_have_text(request_id)
    edit_id = page.locator("#job-id").inner_text()
    wait_completed(page)
    expect(page.locator(f'#gallery li[data-id="{edit_id}"] .caption')).to_contain_text("edit")


# --- a first run (issue 26, item 6) ------------------------------------------------------------
def test_a_stand_in_says_what_serves_it_once(
    make_server: Callable[..., LiveServer], new_page: Callable[..., Page]
) -> None:
    server = make_server(aliases={})  # sora-2-pro falls back to tiny-t2v, with a warning
    page = open_playground(new_page, server)
    page.select_option("#model", "sora-2-pro")
    note = page.locator("#model-note")
    expect(note).to_contain_text("random-weight test model")
    assert note.inner_text().lower().count("served by") == 1


def test_a_reload_keeps_the_result_in_view(
    server: LiveServer, new_page: Callable[..., Page]
) -> None:
    page = open_playground(new_page, server)
    fill_form(page, "a lighthouse at dusk")
    page.click("#generate")
    expect(page.locator("#job-id")).not_to_be_empty()
    request_id = page.locator("#job-id").inner_text()
    page.reload()  # while it may still run: followed again after the reload
    expect(page.locator("#job-id")).to_have_text(request_id)
    wait_completed(page)
    page.reload()  # and once done: its video is shown again
    expect(page.locator("#job-id")).to_have_text(request_id)
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("COMPLETED")
    assert page.errors == []
