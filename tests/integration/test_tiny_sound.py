"""`tiny-t2av`, the built-in model with sound: a fresh server builds its tiny LTX-2 in code and
makes an MP4 with an AAC track, so a newcomer sees the audio path without any weights.

The model cache is this test's own (not the session's), so the build itself is under test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.integration.test_families import generate_over_http
from tests.integration.test_ltx2 import streams

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the model is what is under test; the store's paths run on both elsewhere."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def test_a_fresh_server_makes_a_video_with_sound_from_tiny_t2av(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    cache = tmp_path / "fresh-cache"
    server = make_server(model_cache_dir=cache)
    listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert listed["tiny-t2av"]["available"] is True, listed["tiny-t2av"]["reason"]
    assert listed["tiny-t2av"]["audio"] is True
    assert not (cache / "tiny-t2av").exists()  # built on first use, not before

    result = generate_over_http(server, "tiny-t2av", {"prompt": "a bell rings", "duration": 4})
    assert (cache / "tiny-t2av" / "model_index.json").is_file()
    assert result["served_by"] == "tiny-t2av"
    assert (result["has_audio"], result["audio_codec"]) == (True, "aac")
    assert result["audio_sample_rate"] == 24000

    output = httpx.get(result["output"], timeout=30)
    video, audio = streams(output.content)
    assert (video["type"], video["codec"]) == ("video", "h264")
    assert (audio["type"], audio["codec"], audio["sample_rate"]) == ("audio", "aac", 24000)
    assert abs(audio["seconds"] - 4.0) < 0.2 and abs(video["seconds"] - 4.0) < 0.2

    silent = generate_over_http(
        server, "tiny-t2av", {"prompt": "a bell", "duration": 4, "audio": False}
    )
    assert silent["has_audio"] is False
    assert [s["type"] for s in streams(httpx.get(silent["output"], timeout=30).content)] == [
        "video"
    ]
