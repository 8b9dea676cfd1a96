"""The Segmind dialect's JSON shapes, built from a stored job."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from videoserve.jobs.job_status import JobStatus
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status
from videoserve.runtime import Runtime


@functools.lru_cache(maxsize=8192)
def iso(ts: float | None) -> str | None:
    # Cached: a pure function of the timestamp, and a polled job's timestamps repeat on every
    # poll (formatting them was a tenth of a poll's time).
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


async def blob_url(runtime: Runtime, base: str, key: str, expires_at: float) -> str:
    """An absolute URL for a stored file that needs no API key and dies with the retention."""
    presigned = await runtime.blobs.presigned_get_url(
        key, max(1.0, expires_at - datetime.now(UTC).timestamp())
    )
    if presigned:
        return presigned
    expires = int(expires_at)
    signature = runtime.signer.sign(key, expires)
    return f"{base}/files/{key}?expires={expires}&signature={signature}"


def submitted(job: Job, base: str) -> dict[str, Any]:
    return {
        "request_id": job.id,
        "status": job.status.value,
        "status_url": f"{base}/v2/requests/{job.id}/status",
        "response_url": f"{base}/v2/requests/{job.id}",
    }


async def status(runtime: Runtime, job: Job) -> dict[str, Any]:
    position = await runtime.service.queue_position(job) if job.status == Status.QUEUED else None
    return status_body(job, position)


def status_body(job: Job | JobStatus, queue_position: int | None) -> dict[str, Any]:
    """The status answer's body (`queue_position` is shown only for a QUEUED job)."""
    body: dict[str, Any] = {
        "request_id": job.id,
        "status": job.status.value,
        "model": job.model,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.finished_at),
    }
    if job.status == Status.QUEUED:
        body["queue_position"] = queue_position
    if job.status in (Status.PROCESSING, Status.COMPLETED):
        body["progress"] = job.progress
    if job.status == Status.FAILED:
        body["error"] = job.error
        body["code"] = job.failure.value if job.failure is not None else None
    if job.expires_at:
        body["expires_at"] = iso(job.expires_at)
    return body


async def poll(runtime: Runtime, key: ApiKey, request_id: str) -> tuple[Status, dict[str, Any]]:
    """A status poll's answer: the job's status and the body, the job read afresh (its poll
    columns hold what a queued job's position needs: its model and ticket)."""
    found = await runtime.service.status(key, request_id)
    return found.status, status_body(found, await runtime.service.queue_position(found))


async def result(runtime: Runtime, job: Job, base: str) -> dict[str, Any]:
    body = await status(runtime, job)
    body["params"] = job.shown_params()
    if job.status != Status.COMPLETED or job.result is None:
        return body
    r = job.result
    assert job.expires_at is not None
    started = r.started_at or job.started_at or job.created_at
    body |= {
        "output": await blob_url(runtime, base, r.output_key, job.expires_at),
        "thumbnail": await blob_url(runtime, base, r.thumbnail_key, job.expires_at),
        "served_by": r.served_by,
        "width": r.width,
        "height": r.height,
        "fps": r.fps,
        "frames": r.frames,
        "seconds": r.seconds,
        "has_audio": r.has_audio,
        "audio_sample_rate": r.audio_sample_rate,
        "audio_codec": r.audio_codec,
        "seed": r.seed,
        "segments": r.segments,  # passes chained for a duration over one pass
        "codec": r.codec,
        "encoder": r.encoder,  # which H.264 encoder ran: libx264 or h264_nvenc
        "metrics": {
            "queue_time": round(started - job.created_at, 4),
            "inference_time": r.inference_time,
            "encode_time": r.encode_time,
            "total_time": round((job.finished_at or started) - job.created_at, 4),
        },
    }
    return body
