"""The playground shows a video forming (issue 25): the phase in words, the step, and the
preview image under the progress bar while the real tiny pipeline denoises, gone once the
video is there. The model is held after a chosen step (tests/integration/test_previews.py's
`HeldTiny`) so the page can be looked at mid-denoise without racing it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import LiveServer
from tests.e2e.test_playground import Page, expect, fill_form, open_playground, wait_completed
from tests.integration.accounting import TestRegistry
from tests.integration.test_previews import HeldTiny
from videoserve.models.backends.tiny import TINY_NAME, TinyBackend


def test_the_preview_forms_under_the_progress_bar(
    make_server: Callable[..., LiveServer],
    new_page: Callable[..., Page],
    screenshot: Callable[..., list[Path]],
    model_cache: Path,
) -> None:
    # sora-2-pro's schema has no step count: the tiny model's 4 steps, previews after 1 and 2.
    held = HeldTiny(TinyBackend(model_cache / TINY_NAME), hold_at=3)
    try:
        registry = TestRegistry(
            model_cache,
            {"held": (held, 1.0)},
            aliases={"sora-2-pro": "held"},
            options={"held": {"preview_every": 1}},
        )
        server = make_server(registry=registry)
        page = open_playground(new_page, server)
        fill_form(page, "a paper boat on a stream")
        page.click("#generate")
        assert held.reached.wait(120)
        expect(page.locator("#job-detail")).to_have_text("Generating: step 3 of 4")
        expect(page.locator("#preview")).to_be_visible()
        expect(page.locator("#preview-caption")).to_contain_text("Preview at step 2 of 4")
        page.wait_for_function(
            "() => { const i = document.getElementById('preview-image');"
            " return i.complete && i.naturalWidth > 0 && i.naturalHeight === 96; }"
        )
        screenshot(page, "20-preview-forming")
    finally:
        held.release.set()
    wait_completed(page)
    expect(page.locator("#preview")).to_be_hidden()
    assert not page.errors  # no uncaught exception in the page
