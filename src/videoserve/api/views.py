"""The Segmind dialect's JSON shapes, built from a stored job (what else an answer shows,
a queued job's place and a stored file's link, is read through the services)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from videoserve.jobs import fairness, phases
from videoserve.jobs.job_status import JobStatus
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status
from videoserve.services.files import Files
from videoserve.services.jobs import JobService


@functools.lru_cache(maxsize=8192)
def iso(ts: float | None) -> str | None:
    """A stored timestamp as the API shows it (ISO 8601, UTC, `Z`); None for none.

    Every timestamp an answer shows is written here."""
    # Cached: a pure function of the timestamp, and a polled job's timestamps repeat on every
    # poll (formatting them was a tenth of a poll's time).
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def submitted(job: Job, base: str) -> dict[str, Any]:
    return {
        "request_id": job.id,
        "status": job.status.value,
        "status_url": f"{base}/v2/requests/{job.id}/status",
        "response_url": f"{base}/v2/requests/{job.id}",
    }


async def status(jobs: JobService, job: Job) -> dict[str, Any]:
    if job.status != Status.QUEUED:
        return status_body(job, None)
    return status_body(job, *await jobs.waiting(job))


# A lookup, not `.value`: an enum member's `value` is a descriptor call.
_STATUS_VALUES = {status: status.value for status in Status}
_PRIORITY_LABELS = fairness.LABELS
_QUEUED, _PROCESSING, _COMPLETED = Status.QUEUED, Status.PROCESSING, Status.COMPLETED
# What `phases.shown` answers for each ended or waiting status.
_PHASE_COMPLETED = phases.shown("COMPLETED", None)
_PHASE_QUEUED = phases.shown("QUEUED", None)
_PHASE_FAILED = phases.shown("FAILED", None)


def status_body(
    job: Job | JobStatus,
    queue_position: int | None,
    waiting_reason: str | None = None,
    estimated_start_seconds: float | None = None,
) -> dict[str, Any]:
    """The status answer's body (`queue_position` and `estimated_start_seconds`, null when
    unknown, are shown only for a QUEUED job, and `waiting_reason` only when it has one: no
    live worker serves its model)."""
    # One branch per status, each writing its keys in the one order every status shares
    # (progress, phase, the live fields, the failure): a poll's hot path, where testing each
    # field's status in turn (StrEnum comparisons, `phases.add_live_fields`'s call) took half
    # the body's time.
    status = job.status
    body: dict[str, Any] = {
        "request_id": job.id,
        "status": _STATUS_VALUES[status],
        "model": job.model,
        "priority": _PRIORITY_LABELS[job.priority],
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.finished_at),
    }
    if status == _COMPLETED:
        body["progress"] = job.progress
        body["phase"] = _PHASE_COMPLETED
    elif status == _QUEUED:
        body["queue_position"] = queue_position
        body["estimated_start_seconds"] = estimated_start_seconds
        if waiting_reason is not None:
            body["waiting_reason"] = waiting_reason
        body["phase"] = _PHASE_QUEUED
    elif status == _PROCESSING:
        body["progress"] = job.progress
        phases.add_live_fields(body, "PROCESSING", job.phase, job.step, job.steps, job.preview_step)
    else:  # FAILED
        body["phase"] = _PHASE_FAILED
        body["error"] = job.error
        body["code"] = job.failure.value if job.failure is not None else None
    if job.expires_at:
        body["expires_at"] = iso(job.expires_at)
    return body


async def poll(jobs: JobService, key: ApiKey, request_id: str) -> tuple[Status, dict[str, Any]]:
    """A status poll's answer: the job's status and the body, the job read afresh (its poll
    columns hold what a queued job's position needs: its model, ticket and queue's head)."""
    found = await jobs.status(key, request_id)
    if found.status != Status.QUEUED:
        return found.status, status_body(found, None)
    # The reason and the estimate come from per-process caches, re-read every few seconds.
    return found.status, status_body(found, *await jobs.waiting(found))


async def result(jobs: JobService, files: Files, job: Job, base: str) -> dict[str, Any]:
    body = await status(jobs, job)
    body["params"] = job.shown_params()
    if job.status != Status.COMPLETED or job.result is None:
        return body
    r = job.result
    assert job.expires_at is not None
    started = r.started_at or job.started_at or job.created_at
    body |= {
        "output": await files.url(base, r.output_key, job.expires_at),
        "thumbnail": await files.url(base, r.thumbnail_key, job.expires_at),
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
            "load_time": r.load_time,
            "inference_time": r.inference_time,
            "encode_time": r.encode_time,
            "store_time": r.store_time,
            "parallel": r.parallel,  # a worker group's ranks and split; null: one device
            "total_time": round((job.finished_at or started) - job.created_at, 4),
        },
    }
    return body
