"""What a webhook says and how it is signed.

The envelope is OpenAI's (`{"id": "evt_...", "object": "event", "created_at", "type", "data"}`);
`data` describes the video in OpenAI's words (lowercase status, Unix timestamps) plus the output
links, so a receiver needs no second call. The body is rendered once, when the event is stored,
and every attempt sends those same bytes under the same `webhook-id`, as Standard Webhooks
requires for retries; only `webhook-timestamp` and the signature are per attempt.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Any

import standardwebhooks

from videoserve import errors
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status
from videoserve.storage import signing
from videoserve.storage.base import BlobStore
from videoserve.storage.signing import UrlSigner

COMPLETED = "video.completed"
FAILED = "video.failed"
PROGRESS = "video.progress"
EVENT_TYPES = (COMPLETED, FAILED, PROGRESS)
DEFAULT_EVENT_TYPES = (COMPLETED, FAILED)

_OPENAI_STATUS = {
    Status.QUEUED: "queued",
    Status.PROCESSING: "in_progress",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
}


def parse_event_types(value: object) -> tuple[str, ...]:
    """The subscribed event types from a request body (default: completed and failed);
    `errors.InvalidRequest` naming what is wrong."""
    if value is None:
        return DEFAULT_EVENT_TYPES
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidRequest("events must be a list of event type names", param="events")
    if not value:
        raise errors.InvalidRequest(
            f"events must name at least one of: {', '.join(EVENT_TYPES)}", param="events"
        )
    unknown = [v for v in value if v not in EVENT_TYPES]
    if unknown:
        raise errors.InvalidRequest(
            f"unknown event type(s) {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(EVENT_TYPES)}",
            param="events",
        )
    return tuple(t for t in EVENT_TYPES if t in value)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def final_type(job: Job) -> str:
    """The event a terminal job emits."""
    return COMPLETED if job.status == Status.COMPLETED else FAILED


def _unix(ts: float | None) -> int | None:
    return int(ts) if ts else None


async def video_data(job: Job, blobs: BlobStore, signer: UrlSigner, base: str) -> dict[str, Any]:
    """`data` of an event: the request as it stands, with signed links once it is COMPLETED."""
    data: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": _OPENAI_STATUS[job.status],
        "progress": 100 if job.status == Status.COMPLETED else job.progress,
        "created_at": _unix(job.created_at),
        "completed_at": _unix(job.finished_at),
        "expires_at": _unix(job.expires_at),
        "seconds": str(job.params.get("duration", "")) or None,
        "size": job.params.get("size"),
        "output": None,
        "thumbnail": None,
        "error": job.error if job.status == Status.FAILED else None,
        "failure": job.failure.value if job.failure and job.status == Status.FAILED else None,
    }
    result = job.result
    if job.status == Status.COMPLETED and job.expires_at and result is not None:
        data["output"] = await signing.file_url(
            blobs, signer, base, result.output_key, job.expires_at
        )
        data["thumbnail"] = await signing.file_url(
            blobs, signer, base, result.thumbnail_key, job.expires_at
        )
        data["served_by"] = result.served_by
        data["has_audio"] = result.has_audio
        data["audio_sample_rate"] = result.audio_sample_rate
        data["audio_codec"] = result.audio_codec
        data["metrics"] = {"parallel": result.parallel}
    return data


def render(event_id: str, event_type: str, created_at: float, data: dict[str, Any]) -> str:
    """The event's JSON body, as every attempt sends it."""
    envelope = {
        "id": event_id,
        "object": "event",
        "created_at": int(created_at),
        "type": event_type,
        "data": data,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def signed_headers(secret: str, event_id: str, payload: str, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers for one attempt sent at `at` (a UTC-aware time)."""
    if at.tzinfo is None:
        raise ValueError("webhook timestamps must be timezone-aware (UTC)")
    at = at.astimezone(UTC).replace(microsecond=0)
    signature = standardwebhooks.Webhook(secret).sign(event_id, at, payload)
    return {
        "content-type": "application/json",
        "user-agent": "videoserve-webhooks",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
