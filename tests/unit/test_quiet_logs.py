"""`serve` and `worker` output is ours below debug: the model libraries' progress bars and
warnings are off, and VIDEOSERVE_LOG_LEVEL=debug brings them back (issue 16, item 7)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator

import pytest

from videoserve.observability import logs


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    environment = dict(os.environ)
    with warnings.catch_warnings():  # configure() adds filters; they leave with the test
        yield
    for name in logs._CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    os.environ.clear()
    os.environ.update(environment)
    logs._quiet_libraries = False


def _bars_enabled() -> tuple[bool, bool]:
    import diffusers.utils.logging
    import transformers.utils.logging

    return (
        diffusers.utils.logging.is_progress_bar_enabled(),
        transformers.utils.logging.is_progress_bar_enabled(),
    )


@pytest.mark.usefixtures("restored_logging")
def test_model_libraries_are_quiet_below_debug() -> None:
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.enable_progress_bar()
    transformers.utils.logging.enable_progress_bar()
    logs.configure("DEBUG", "text")
    logs.quiet_model_libraries()
    assert _bars_enabled() == (True, True)
    logs.configure("INFO", "text")
    logs.quiet_model_libraries()
    assert _bars_enabled() == (False, False)
    assert transformers.utils.logging.get_verbosity() == logging.ERROR
    assert logging.getLogger("diffusers").getEffectiveLevel() == logging.ERROR
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    diffusers.utils.logging.enable_progress_bar()
    transformers.utils.logging.enable_progress_bar()
