"""A live videoserve server on S3-compatible storage, end to end over HTTP.

The bucket is moto in server mode on loopback (see test_storage_suite.py): moto does not verify
signatures, so this proves the presigned URLs are well formed and point at the right objects,
not that a real server accepts their signatures. VIDEOSERVE_TEST_S3_URL (with its endpoint and
AWS_* credentials) points this test at a real bucket instead.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import LiveServer, wait_until
from tests.integration.test_storage_suite import S3Service, S3Target, fresh_target, running_s3


@pytest.fixture(scope="module")
def s3_service() -> Iterator[S3Service]:
    with running_s3() as service:
        yield service


@pytest.fixture
def s3_target(s3_service: S3Service) -> Iterator[S3Target]:
    with fresh_target(s3_service) as target:
        yield target


def test_outputs_live_in_s3_served_presigned_and_expire(
    make_server: Callable[..., LiveServer], s3_target: S3Target
) -> None:
    # Retention long enough for the checks below to run before it ends on a loaded host
    # (1.5 s was not, on a 2-core host twice as slow as usual: the object was swept first).
    server = make_server(
        **s3_target.server_settings(), retention_seconds=8.0, sweep_interval_seconds=0.2
    )
    headers = {"x-api-key": server.api_key}
    submitted = httpx.post(
        f"{server.url}/v2/sora-2-pro", headers=headers, json={"prompt": "x", "duration": 4}
    )
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    status_url = submitted.json()["status_url"]

    def completed() -> bool:
        status = httpx.get(status_url, headers=headers).json()
        assert status["status"] != "FAILED", status
        return status["status"] == "COMPLETED"

    wait_until(completed, timeout=120)
    result = httpx.get(submitted.json()["response_url"], headers=headers).json()
    job_keys = s3_target.object_keys(f"jobs/{request_id}/")  # before the 8 s retention ends
    assert any(key.endswith("/video.mp4") for key in job_keys), job_keys
    assert any(key.endswith("/thumbnail.jpg") for key in job_keys), job_keys

    # The output is a presigned URL the bucket serves itself: no API key, no trip through us.
    output = result["output"]
    parsed = urllib.parse.urlsplit(output)
    if s3_target.service.endpoint:
        assert output.startswith(s3_target.service.endpoint + "/")
    assert f"/{s3_target.prefix}/jobs/{request_id}/" in parsed.path
    assert "X-Amz-Signature" in urllib.parse.parse_qs(parsed.query)
    video = httpx.get(output)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    # An MP4 opens with an ISO-BMFF box: a 4-byte big-endian size, then the type "ftyp".
    size = int.from_bytes(video.content[:4], "big")
    assert video.content[4:8] == b"ftyp" and 8 <= size <= len(video.content)
    part = httpx.get(output, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == video.content[:100]

    # After the retention the sweeper deletes the objects, then the id answers 404.
    wait_until(lambda: not s3_target.object_keys(f"jobs/{request_id}/"), timeout=30, interval=0.1)
    wait_until(lambda: httpx.get(status_url, headers=headers).status_code == 404, timeout=30)
    assert httpx.get(output).status_code in (403, 404)  # expired, or (moto) the object is gone
