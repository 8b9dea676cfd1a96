"""LiteLLM's own SDK (1.110.2) against a live server: `video_generation`, `video_status`,
`video_content`, `video_remix`, `video_extension` and `video_list` through its OpenAI
provider with our `api_base`. LiteLLM re-encodes our ids (`video_` + base64 of provider,
model and our id) and decodes them on the way back, so ours must stay opaque and stable."""

from __future__ import annotations

import io
import os
from typing import Any

import av
import pytest

from tests.conftest import LiveServer, wait_until

# LiteLLM fetches a price list from GitHub at import unless told to use its bundled copy:
# no test traffic leaves this machine.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
litellm = pytest.importorskip("litellm")

PROMPT = "A lighthouse on a cliff at dusk"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def options(server: LiveServer) -> dict[str, Any]:
    return {
        "api_base": f"{server.url}/v1",
        "api_key": server.api_key,
        "custom_llm_provider": "openai",
    }


def completed(server: LiveServer, video_id: str) -> Any:
    def done() -> Any:
        video = litellm.video_status(video_id=video_id, **options(server))
        assert video.status != "failed", video.error
        return video if video.status == "completed" else None

    return wait_until(done, timeout=120, interval=0.1)


def seconds_of(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)) / float(stream.average_rate)


def test_litellm_generate_status_content_remix_extend_and_list(server: LiveServer) -> None:
    created = litellm.video_generation(
        prompt=PROMPT, model="openai/sora-2", seconds="4", **options(server)
    )
    video = completed(server, created.id)
    assert video.seconds == "4"
    content = litellm.video_content(video_id=video.id, **options(server))
    assert seconds_of(content) == pytest.approx(4.0)

    remix = litellm.video_remix(video_id=video.id, prompt="the same at night", **options(server))
    assert completed(server, remix.id).status == "completed"

    extended = litellm.video_extension(
        video_id=video.id, prompt="the tide comes in", seconds="4", **options(server)
    )
    assert completed(server, extended.id).seconds == "8"  # the stitched total
    longer = litellm.video_content(video_id=extended.id, **options(server))
    assert seconds_of(longer) == pytest.approx(8.0)

    listed = litellm.video_list(**options(server))
    assert len(listed) >= 3
