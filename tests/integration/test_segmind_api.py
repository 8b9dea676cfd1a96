"""The Segmind contract over real HTTP: the seed's snippet with the official SDK, and every
rule of the parameter schema, auth, ids, expiry and output links."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import av
import httpx
import pytest
from PIL import Image
from segmind import InferenceFailed, InferenceTimeout, SegmindClient
from segmind.exceptions import SegmindError

from tests.conftest import LiveServer, wait_until

SEED_PAYLOAD = {
    "prompt": "A druid whispering to ancient trees under a golden sunset.",
    "duration": "8",
    "size": "1280x720",
}


def png_data_uri(width: int = 64, height: int = 48, color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def probe(data: bytes) -> dict:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
            "frames": frames,
            "seconds": frames / float(stream.average_rate),
        }


def segmind_client(server: LiveServer, api_key: str | None = None) -> SegmindClient:
    return SegmindClient(api_key=api_key or server.api_key, base_url=f"{server.url}/v1")


# --- the seed's snippet, unchanged but for the client's construction -------------------------
def test_seed_snippet_with_official_sdk(server: LiveServer) -> None:
    client = segmind_client(server)
    payload = SEED_PAYLOAD
    job = client.submit_async("sora-2-pro", **payload)
    assert job.request_id  # available immediately
    result = job.wait(timeout=900, interval=0.2)
    assert result["status"] == "COMPLETED"
    assert result["served_by"] == "tiny-t2v"  # every result names the model that produced it
    output = httpx.get(result["output"])  # a signed URL: no API key
    assert output.status_code == 200 and output.headers["content-type"] == "video/mp4"
    facts = probe(output.content)
    assert facts["codec"] == "h264"
    # No NVIDIA driver here: VIDEOSERVE_ENCODER=auto encoded with libx264.
    assert (result["codec"], result["encoder"]) == ("h264", "libx264")
    assert facts["seconds"] == pytest.approx(8.0, abs=0.01)
    assert facts["width"] / facts["height"] == pytest.approx(1280 / 720, rel=0.02)
    for key in ("width", "height", "fps", "frames"):
        assert result[key] == pytest.approx(facts[key])
    metrics = result["metrics"]
    assert metrics["total_time"] >= metrics["inference_time"] > 0 and metrics["queue_time"] >= 0


def test_run_sync_returns_mp4_bytes(server: LiveServer) -> None:
    response = segmind_client(server).run_sync("sora-2-pro", prompt="a cat", duration=4)
    assert response.headers["content-type"] == "video/mp4"
    facts = probe(response.content)
    assert facts["seconds"] == pytest.approx(4.0, abs=0.01) and facts["codec"] == "h264"


def test_blocked_prompt_raises_inference_failed(make_server) -> None:
    server = make_server(blocklist=["gore", "forbidden"])
    job = segmind_client(server).submit_async("sora-2-pro", prompt="Something FORBIDDEN here")
    with pytest.raises(InferenceFailed) as failure:
        job.wait(timeout=60, interval=0.1)
    assert "content policy" in failure.value.detail and "forbidden" in failure.value.detail
    status = httpx.get(job.status_url, headers={"x-api-key": server.api_key})
    assert status.status_code == 422 and status.json()["status"] == "FAILED"
    # The blocking call answers the failure as JSON with 422.
    blocked = httpx.post(
        f"{server.url}/v1/sora-2-pro",
        json={"prompt": "gore"},
        headers={"x-api-key": server.api_key},
    )
    assert blocked.status_code == 422 and "content policy" in blocked.json()["error"]


def test_sdk_wait_times_out_with_request_id(make_server) -> None:
    server = make_server(embedded_worker=False)
    job = segmind_client(server).submit_async("sora-2-pro", prompt="never runs")
    with pytest.raises(InferenceTimeout) as timeout:
        job.wait(timeout=0.3, interval=0.1)
    assert timeout.value.request_id == job.request_id
    status = job.status()
    assert status["status"] == "QUEUED" and status["queue_position"] == 1


# --- parameter rules -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "ok", "duration": 5}, "duration"),
        ({"prompt": "ok", "duration": "5"}, "duration"),
        ({"prompt": "ok", "duration": 8.5}, "duration"),
        ({"prompt": "ok", "size": "640x480"}, "size"),
        ({"prompt": "ok", "size": 1280}, "size"),
        ({"prompt": "ok", "colour": "red"}, "unknown parameter(s): colour"),
        ({"prompt": "ok", "b": 1, "a": 2}, "unknown parameter(s): a, b"),
        ({"prompt": "ok", "input_reference": "ftp://host/x.png"}, "input_reference"),
        ({"prompt": "ok", "input_reference": "data:image/png;base64,@@@"}, "input_reference"),
        ({"prompt": "ok", "input_reference": "data:text/plain;base64,aGVsbG8="}, "input_reference"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(
    server: LiveServer, params: dict, fragment: str
) -> None:
    response = httpx.post(
        f"{server.url}/v2/sora-2-pro", json=params, headers={"x-api-key": server.api_key}
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_sora_schema_is_exactly_the_seeds(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "ok", "seed": 3},
        headers={"x-api-key": server.api_key},
    )
    assert response.status_code == 400 and "seed" in response.json()["error"]
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert set(models["sora-2-pro"]["parameters"]["properties"]) == {
        "prompt",
        "duration",
        "size",
        "input_reference",
    }
    # The model's own name takes its richer schema.
    assert "seed" in models["tiny-t2v"]["parameters"]["properties"]


@pytest.mark.parametrize("duration", [4, "4"])
def test_duration_accepts_integer_and_string(server: LiveServer, duration) -> None:
    response = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "ok", "duration": duration},
        headers={"x-api-key": server.api_key},
    )
    assert response.status_code == 200
    job = httpx.get(response.json()["response_url"], headers={"x-api-key": server.api_key})
    assert job.json()["params"]["duration"] == 4


def test_malformed_json_and_non_object_bodies(server: LiveServer) -> None:
    headers = {"x-api-key": server.api_key, "content-type": "application/json"}
    bad = httpx.post(f"{server.url}/v2/sora-2-pro", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
    array = httpx.post(f"{server.url}/v2/sora-2-pro", content=b"[1, 2]", headers=headers)
    assert array.status_code == 400 and "JSON object" in array.json()["error"]


def test_oversize_body_is_413(make_server) -> None:
    server = make_server(max_body_bytes=10_000)
    big = {"prompt": "x", "input_reference": "data:image/png;base64," + "A" * 20_000}
    response = httpx.post(
        f"{server.url}/v2/sora-2-pro", json=big, headers={"x-api-key": server.api_key}
    )
    assert response.status_code == 413 and "too large" in response.json()["error"]

    def chunks():
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}'

    streamed = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        content=chunks(),
        headers={"x-api-key": server.api_key, "content-type": "application/json"},
    )
    assert streamed.status_code == 413


# --- input_reference -------------------------------------------------------------------------
def test_input_reference_data_uri_runs_image_to_video(server: LiveServer) -> None:
    client = segmind_client(server)
    job = client.submit_async(
        "sora-2-pro", prompt="a red square", duration=4, input_reference=png_data_uri()
    )
    result = job.wait(timeout=120, interval=0.2)
    assert result["status"] == "COMPLETED"
    assert result["params"]["input_reference"].startswith("data URI")


def test_input_reference_url_refused_for_private_address(server: LiveServer) -> None:
    # Loopback target: even if the refusal were broken, no packet would leave this machine.
    response = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "ok", "input_reference": f"{server.url}/healthz"},
        headers={"x-api-key": server.api_key},
    )
    assert response.status_code == 400
    assert "not a public address" in response.json()["error"]


def test_input_reference_url_fetched_when_private_urls_allowed(make_server, tmp_path) -> None:
    server = make_server(allow_private_urls=True)
    not_image = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "ok", "input_reference": f"{server.url}/healthz"},
        headers={"x-api-key": server.api_key},
    )
    assert not_image.status_code == 400 and "image" in not_image.json()["error"]
    # A real image served over HTTP by the server itself: a thumbnail of an earlier job.
    first = segmind_client(server).submit_async("sora-2-pro", prompt="first", duration=4)
    thumbnail = first.wait(timeout=120, interval=0.2)["thumbnail"]
    second = segmind_client(server).submit_async(
        "sora-2-pro", prompt="second", duration=4, input_reference=thumbnail
    )
    assert second.wait(timeout=120, interval=0.2)["status"] == "COMPLETED"


# --- auth and ids ----------------------------------------------------------------------------
def test_missing_and_wrong_keys_are_401(server: LiveServer) -> None:
    missing = httpx.post(f"{server.url}/v2/sora-2-pro", json={"prompt": "ok"})
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
    wrong = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "ok"}, headers={"x-api-key": "vs_nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid API key"
    bearer = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "ok", "duration": 4},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert bearer.status_code == 200
    with pytest.raises(SegmindError) as sdk_error:
        segmind_client(server, api_key="vs_wrong").submit_async("sora-2-pro", prompt="x")
    assert sdk_error.value.status == 401


def test_unknown_model_and_unknown_id_are_404(server: LiveServer) -> None:
    headers = {"x-api-key": server.api_key}
    model = httpx.post(f"{server.url}/v2/no-such-model", json={"prompt": "x"}, headers=headers)
    assert model.status_code == 404 and "no-such-model" in model.json()["error"]
    for path in ("/v2/requests/video_unknown/status", "/v2/requests/video_unknown"):
        response = httpx.get(server.url + path, headers=headers)
        assert response.status_code == 404 and "not found" in response.json()["error"]
    route = httpx.get(f"{server.url}/v3/whatever", headers=headers)
    assert route.status_code == 404 and "error" in route.json()


def test_another_keys_request_is_404(server: LiveServer) -> None:
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "mine", "duration": 4},
        headers={"x-api-key": server.api_key},
    ).json()
    other = server.create_key("mallory")
    for url in (submitted["status_url"], submitted["response_url"]):
        response = httpx.get(url, headers={"x-api-key": other})
        assert response.status_code == 404


def test_revoked_key_is_401(server: LiveServer) -> None:
    from typer.testing import CliRunner

    from videoserve.cli.main import app

    key = server.create_key("temp")
    env = {"VIDEOSERVE_DATABASE_URL": server.settings.database_url or ""}
    listing = CliRunner().invoke(app, ["keys", "list", "--data-dir", str(server.data_dir)], env=env)
    key_id = next(line.split()[1] for line in listing.output.splitlines() if "temp" in line)
    result = CliRunner().invoke(
        app, ["keys", "revoke", key_id, "--data-dir", str(server.data_dir)], env=env
    )
    assert result.exit_code == 0, result.output
    response = httpx.post(
        f"{server.url}/v2/sora-2-pro", json={"prompt": "x"}, headers={"x-api-key": key}
    )
    assert response.status_code == 401


def test_idempotency_key_returns_the_same_request(server: LiveServer) -> None:
    headers = {"x-api-key": server.api_key, "Idempotency-Key": "abc-123"}
    body = {"prompt": "once", "duration": 4}
    first = httpx.post(f"{server.url}/v2/sora-2-pro", json=body, headers=headers).json()
    again = httpx.post(f"{server.url}/v2/sora-2-pro", json=body, headers=headers).json()
    assert first["request_id"] == again["request_id"]
    other = httpx.post(f"{server.url}/v2/sora-2-pro", json={"prompt": "different"}, headers=headers)
    assert other.status_code == 400 and "Idempotency-Key" in other.json()["error"]


def test_queue_position_and_progress(make_server) -> None:
    server = make_server(embedded_worker=False)
    headers = {"x-api-key": server.api_key}
    ids = [
        httpx.post(
            f"{server.url}/v2/tiny-t2v", json={"prompt": f"n{i}", "duration": 4}, headers=headers
        ).json()["request_id"]
        for i in range(3)
    ]
    positions = [
        httpx.get(f"{server.url}/v2/requests/{i}/status", headers=headers).json()["queue_position"]
        for i in ids
    ]
    assert positions == [1, 2, 3]


# --- expiry and output links -----------------------------------------------------------------
def test_result_expires_then_404_and_files_deleted(make_server) -> None:
    server = make_server(retention_seconds=1.5, sweep_interval_seconds=0.2)
    job = segmind_client(server).submit_async("sora-2-pro", prompt="short-lived", duration=4)
    result = job.wait(timeout=120, interval=0.2)
    assert httpx.get(result["output"]).status_code == 200
    video_dir = (
        Path(server.settings.resolved_storage_url().removeprefix("file://"))
        / "jobs"
        / job.request_id
    )
    assert video_dir.exists()
    headers = {"x-api-key": server.api_key}
    wait_until(lambda: httpx.get(job.status_url, headers=headers).status_code == 404, timeout=30)
    assert httpx.get(job.response_url, headers=headers).status_code == 404
    wait_until(lambda: not video_dir.exists(), timeout=30)
    assert httpx.get(result["output"]).status_code in (403, 404)


def test_output_link_range_and_tampering(server: LiveServer) -> None:
    result = (
        segmind_client(server)
        .submit_async("sora-2-pro", prompt="r", duration=4)
        .wait(timeout=120, interval=0.2)
    )
    url = result["output"]
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"

    parsed = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    tampered = [
        {**query, "signature": query["signature"][:-2] + "AA"},
        {**query, "expires": str(int(query["expires"]) + 3600)},
    ]
    for q in tampered:
        response = httpx.get(f"{parsed.scheme}://{parsed.netloc}{parsed.path}?{urlencode(q)}")
        assert response.status_code == 403, response.text
    other_file = parsed.path.replace("video.mp4", "thumbnail.jpg")
    response = httpx.get(f"{parsed.scheme}://{parsed.netloc}{other_file}?{parsed.query}")
    assert response.status_code == 403


def test_public_url_setting_shapes_every_url(make_server) -> None:
    server = make_server(public_url="https://videos.example.test/base")
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro",
        json={"prompt": "x", "duration": 4},
        headers={"x-api-key": server.api_key},
    ).json()
    assert submitted["status_url"].startswith("https://videos.example.test/base/v2/requests/")


def test_blocking_call_times_out_with_504(make_server) -> None:
    server = make_server(embedded_worker=False, sync_timeout_seconds=0.5)
    response = httpx.post(
        f"{server.url}/v1/sora-2-pro",
        json={"prompt": "waits"},
        headers={"x-api-key": server.api_key},
        timeout=30,
    )
    assert response.status_code == 504
    body = response.json()
    assert body["request_id"].startswith("video_") and "did not finish" in body["error"]


def test_models_listing_and_health(server: LiveServer) -> None:
    listing = httpx.get(f"{server.url}/v1/models").json()
    models = {m["id"]: m for m in listing["data"]}
    assert models["tiny-t2v"]["available"] is True
    assert models["sora-2-pro"]["served_by"] == "tiny-t2v"
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v2/{model}" in spec["paths"] and "/v2/requests/{request_id}/status" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_auth_off_only_on_loopback(tmp_path) -> None:
    from videoserve.api import create_app
    from videoserve.settings import Settings

    with pytest.raises(ValueError, match="loopback"):
        create_app(Settings(data_dir=tmp_path, auth=False, host="0.0.0.0"))
    create_app(Settings(data_dir=tmp_path, auth=False, host="127.0.0.1"))


def test_auth_off_serves_without_key(make_server) -> None:
    server = make_server(auth=False)
    response = httpx.post(f"{server.url}/v2/sora-2-pro", json={"prompt": "free", "duration": 4})
    assert response.status_code == 200
    assert json.loads(response.text)["status"] == "QUEUED"
