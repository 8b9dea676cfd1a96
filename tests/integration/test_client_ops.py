"""`Client.extend`, `Client.edit` and `Client.create_character` (sync and async) against a
real server: a file and an id as the source, stitched and kept durations read back from the
MP4, and the OpenAI envelope's message surfacing as the client's exception."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from videoserve import errors
from videoserve.client import AsyncClient, Client
from videoserve.media.encode import encode_mp4

PROMPT = "A lighthouse on a cliff at dusk"
WAIT = {"timeout": 120, "interval": 0.05}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def clip(tmp_path: Path) -> Path:
    """2 s of 64x48 noise at 8 fps, as an MP4 file."""
    frames = np.random.default_rng(5).integers(0, 255, (16, 48, 64, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    encode_mp4(frames, 8, path)
    return path


def seconds_of(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)) / float(stream.average_rate)


def test_extend_a_file_then_edit_it_by_id(server: Any, tmp_path: Path) -> None:
    with Client(api_key=server.api_key, base_url=server.url) as client:
        extended = client.extend(clip(tmp_path), PROMPT, seconds=4)
        assert extended.wait(**WAIT)["status"] == "COMPLETED"
        out = extended.download(tmp_path / "extended.mp4")
        assert seconds_of(out.read_bytes()) == pytest.approx(6.0)

        edited = client.edit(extended.request_id, "in winter", strength=0.5)
        assert edited.wait(**WAIT)["status"] == "COMPLETED"
        assert seconds_of(edited.download(tmp_path / "edited.mp4").read_bytes()) == (
            pytest.approx(6.0)
        )

        character = client.create_character("Mara", clip(tmp_path))
        assert character["object"] == "character" and character["name"] == "Mara"
        with pytest.raises(errors.InvalidRequest) as caught:
            client.extend(b"not a video", PROMPT)
        assert "video: not a video file" in str(caught.value) and caught.value.param == "video"


@pytest.fixture
def idle_server(make_server: Callable[..., Any]) -> Any:
    return make_server(embedded_worker=False)


async def test_async_operations_queue_and_refuse_in_words(idle_server: Any, tmp_path: Path) -> None:
    async with AsyncClient(api_key=idle_server.api_key, base_url=idle_server.url) as client:
        job = await client.edit(clip(tmp_path).read_bytes(), PROMPT)
        assert (await job.status())["status"] == "QUEUED"
        character = await client.create_character("Mara", clip(tmp_path))
        assert character["id"].startswith("char_")
        with pytest.raises(errors.NotFound):
            await client.extend("video_nonexistent", PROMPT)
