"""The package's public surface is explicit and stable."""

from __future__ import annotations

import videoserve


def test_exported_names() -> None:
    assert set(videoserve.__all__) >= {
        "Client",
        "AsyncClient",
        "InferenceFailed",
        "InferenceTimeout",
        "VideoserveError",
    }
    for name in videoserve.__all__:
        assert hasattr(videoserve, name), name


def test_one_exception_hierarchy() -> None:
    for name in videoserve.__all__:
        obj = getattr(videoserve, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, videoserve.VideoserveError), name
