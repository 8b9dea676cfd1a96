"""Following and stopping a request: a live status stream and cancel.

The stream re-reads the job's row for every event, whatever woke it: a notification from this
process, `LISTEN/NOTIFY` from another (PostgreSQL), or the poll interval as a fallback. So an
API process that neither submitted nor runs the job streams it as faithfully as one that did.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from videoserve import errors
from videoserve.api import views
from videoserve.api.deps import KeyDep, RuntimeDep
from videoserve.jobs.failures import CANCELLED_MESSAGE, FailureCode
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status, is_terminal
from videoserve.runtime import Runtime

router = APIRouter(tags=["Segmind"])

# A comment line this often keeps proxies from closing a quiet stream (many cut at 30-60 s).
KEEPALIVE_SECONDS = 15.0


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/v2/requests/{request_id}/events",
    summary="Follow a request's status as server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request_id: str, request: Request, runtime: RuntimeDep, key: KeyDep
) -> StreamingResponse:
    """`event: status` with the status endpoint's JSON on every change; ends after the final
    status (COMPLETED or FAILED)."""
    job = await runtime.service.get(key, request_id)  # 404 before the stream starts
    return StreamingResponse(
        _status_events(runtime, key, job.id, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _status_events(
    runtime: Runtime, key: ApiKey, job_id: str, request: Request
) -> AsyncIterator[str]:
    interval = runtime.settings.poll_interval_seconds
    sent: tuple[Any, ...] | None = None
    last_write = time.monotonic()
    while True:
        # Listen before reading, so a change committed during the read still wakes us.
        waiter = asyncio.create_task(runtime.service.wait_for_change(job_id, interval))
        await asyncio.sleep(0)
        try:
            try:
                job = await runtime.service.get(key, job_id)
            except errors.NotFound as exc:  # deleted or expired while we followed it
                yield _event("error", {"request_id": job_id, "error": exc.message})
                return
            body = await views.status(runtime, job)
            snapshot = (job.status, job.progress, body.get("queue_position"))
            if snapshot != sent:
                yield _event("status", body)
                sent, last_write = snapshot, time.monotonic()
            if is_terminal(job.status) or await request.is_disconnected():
                return
            await waiter
        finally:
            waiter.cancel()
        if time.monotonic() - last_write >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()


@router.post("/v2/requests/{request_id}/cancel", summary="Cancel a queued or running request")
async def cancel(request_id: str, runtime: RuntimeDep, key: KeyDep) -> dict[str, Any]:
    """A queued request fails at once; a running one stops at its next step. The answer is the
    status body plus `cancelled` and a `message` saying which happened."""
    before = await runtime.service.get(key, request_id)
    job = await runtime.service.cancel(key, request_id)
    body = await views.status(runtime, job)
    cancelled, message = _outcome(before, job)
    return body | {"cancelled": cancelled, "message": message}


def _outcome(before: Job, after: Job) -> tuple[bool, str]:
    if after.status == Status.COMPLETED:
        return False, "already completed; nothing to cancel"
    if after.status == Status.FAILED:
        cancelled = after.failure == FailureCode.CANCELLED
        if is_terminal(before.status) or not cancelled:
            already = "cancelled" if cancelled else "failed"
            return False, f"already {already}; nothing to cancel"
        return True, "cancelled"
    return True, (
        "cancellation requested: the job stops at its next step and then ends FAILED "
        f"({CANCELLED_MESSAGE!r})"
    )
