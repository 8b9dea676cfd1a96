"""OpenAI's Videos API shapes: the `video` object, its list page, and its error envelope.

Built from the same stored `Job` the Segmind dialect reads, so a request submitted through
either dialect is readable through the other under its one id. Field names and values follow
the official `openai` package (`types/video.py`): unix-second integers for times, `seconds` as
a string, statuses `queued | in_progress | completed | failed`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from videoserve import errors
from videoserve.api.errors import domain_error, status_for
from videoserve.jobs import fairness, phases, text
from videoserve.jobs.failures import FailureCode
from videoserve.jobs.inputs import JobInputs, is_manifest
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status
from videoserve.services.characters import Character

log = logging.getLogger("videoserve.api")

STATUSES = {
    Status.QUEUED: "queued",
    Status.PROCESSING: "in_progress",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
}

# OpenAI's `error.type` per HTTP status; its SDK picks the exception class from the status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    406: "insufficient_quota",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ERROR_CODES = {401: "invalid_api_key", 404: "not_found", 413: "payload_too_large"}


def _unix(ts: float | None) -> int | None:
    return int(ts) if ts is not None else None


# A failed video's `error.code` per failure; the values the SDK and gateways already saw stay.
_FAILURE_CODES = {
    FailureCode.CANCELLED: "cancelled",
    FailureCode.MODERATION: "moderation_blocked",
    FailureCode.TIMEOUT: "timeout",
    FailureCode.EXPIRED: "expired",
}


def failure_code(failure: FailureCode | None) -> str:
    """A machine-readable `error.code` for a failed job's failure code."""
    if failure is None:  # a row failed before failure codes were stored
        return "video_generation_failed"
    return _FAILURE_CODES.get(failure, "video_generation_failed")


def video(
    job: Job, *, remixed_from: str | None = None, inputs: JobInputs | None = None
) -> dict[str, Any]:
    """The `video` object for a job, whichever dialect submitted it.

    An extension's `seconds` is the stitched total (source plus what it adds), an edit's the
    source's, as OpenAI documents (the row's `delivered_seconds`; `inputs`, the manifest, only
    for a row made before that column); a completed one reports what the file really holds.
    """
    params = job.params
    duration = params.get("duration")
    if job.delivered_seconds is not None:
        duration = _seconds(job.delivered_seconds)
    elif inputs is not None and duration is not None:
        duration = _seconds(inputs.total_seconds(float(duration)))
    if is_manifest(job.input_key) and job.result is not None:
        duration = _seconds(job.result.seconds)
    progress = {Status.QUEUED: 0, Status.COMPLETED: 100}.get(job.status, job.progress)
    body: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": STATUSES[job.status],
        "progress": progress,
        "prompt": params.get("prompt"),
        "seconds": str(duration) if duration is not None else None,
        "size": params.get("size"),
        "created_at": _unix(job.created_at),
        "completed_at": _unix(job.finished_at),
        "expires_at": _unix(job.expires_at),
        **phases.live_fields(job.status.value, job.phase, job.step, job.steps, job.preview_step),
        "error": None,
        "remixed_from_video_id": remixed_from,
        "priority": fairness.LABELS[job.priority],  # an extra: X-Queue-Priority's class
    }
    if job.status == Status.FAILED:
        body["error"] = {
            "code": failure_code(job.failure),
            "message": job.error or "failed",
            "failure": job.failure.value if job.failure is not None else None,
        }
    if job.status == Status.COMPLETED and job.result is not None:
        # Extras beside OpenAI's own fields (its SDK keeps unknown fields on the object).
        body |= {
            "has_audio": job.result.has_audio,
            "audio_sample_rate": job.result.audio_sample_rate,
            "audio_codec": job.result.audio_codec,
            "metrics": {"parallel": job.result.parallel},
        }
    return body


def waiting_fields(
    queue_position: int | None, waiting_reason: str | None, estimated_start_seconds: float | None
) -> dict[str, Any]:
    """A queued video's extras (our extension, as the Segmind status shows them): its place
    in line, about when it starts (null when unknown) and, when no live worker serves its
    model, why it waits."""
    fields: dict[str, Any] = {
        "queue_position": queue_position,
        "estimated_start_seconds": estimated_start_seconds,
    }
    if waiting_reason is not None:
        fields["waiting_reason"] = waiting_reason
    return fields


def _seconds(value: float) -> str:
    """`12`, not `12.0`; a fraction only where there is one (`8.5`). An integral REAL can come
    back from SQLite's RETURNING as an int, hence the float()."""
    rounded = round(float(value), 2)
    return str(int(rounded)) if rounded.is_integer() else f"{rounded:g}"


def character(record: Character) -> dict[str, Any]:
    """A character as `client.videos.get_character` reads it."""
    return {
        "id": record.id,
        "object": "character",
        "created_at": int(record.created_at),
        "name": record.name,
        "expires_at": int(record.expires_at),
    }


def page(videos: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page as the SDK's `ConversationCursorPage` reads it (`after=last_id`)."""
    return {
        "object": "list",
        "data": videos,
        "first_id": videos[0]["id"] if videos else None,
        "last_id": videos[-1]["id"] if videos else None,
        "has_more": has_more,
    }


def deleted(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "object": "video.deleted", "deleted": True}


# --- errors -----------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    fields: dict[str, Any] | None = None,
) -> JSONResponse:
    """OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`, plus the domain
    error's structured `fields` (a 406's `balance` and `price`...) inside `error`."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {
        "error": {
            **(fields or {}),
            "message": text.printable(message),  # may echo client text: keep it encodable
            "type": kind,
            "param": text.printable(param) if param else None,
            "code": code or _ERROR_CODES.get(status),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def response_for(request: Request, exc: Exception) -> JSONResponse:
    """The envelope for any exception a `/v1/videos` handler raised; the rest of the API keeps
    the Segmind shape that `api.errors` gives."""
    exc = domain_error(exc) or exc
    if isinstance(exc, errors.VideoserveError):
        status = status_for(exc)
        headers = None
        if isinstance(exc, errors.RateLimited | errors.ServiceUnavailable):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        param = exc.param if isinstance(exc, errors.InvalidRequest) else None
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        fields = {k: v for k, v in exc.fields().items() if k != "param"}
        return error_response(
            status,
            exc.message or type(exc).__name__,
            param=param,
            code=exc.code,
            headers=headers,
            fields=fields,
        )
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = first.get("msg", "invalid request")
        return error_response(
            400,
            f"{where}: {message}" if where else message,
            param=where or None,
            code=errors.InvalidRequest.code,
        )
    if isinstance(exc, StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))
    if isinstance(exc, DBAPIError | ConnectionError):
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return error_response(
            503, "the job database is unavailable; retry shortly", headers={"Retry-After": "2"}
        )
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error")


class OpenAIRoute(APIRoute):
    """A route whose errors (auth and validation included) come in OpenAI's envelope.

    Dependencies run inside the handler FastAPI builds, so wrapping it catches a 401 from the
    key check as well as the service's own exceptions.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def enveloped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return response_for(request, exc)

        return enveloped
