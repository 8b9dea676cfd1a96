"""Following and stopping a request: a live status stream, its latest preview, and cancel.

The stream re-reads the job's row for every event, whatever woke it: a notification from this
process, `LISTEN/NOTIFY` from another (PostgreSQL), or the poll interval as a fallback. So an
API process that neither submitted nor runs the job streams it as faithfully as one that did.
Each change of status, phase, step or progress is a `status` event; each new preview image a
`preview` event with its step and URL. The OpenAI dialect's stream (`/v1/videos/{id}/events`,
in `routes/openai.py`) is the same stream with the video object as its `status` body.

A stream outlives the request that authenticated it, so it authenticates again whenever this
process's cached answer for its key lapses (`KeyStore.cached_until`, every
`auth_cache_seconds`): a revoked key's stream ends with an `error` event no later than its
polls start answering 401.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from videoserve import errors
from videoserve.api import credentials, deps, views
from videoserve.api.deps import JobsDep, KeyDep, KeysDep, SettingsDep
from videoserve.jobs.failures import CANCELLED_MESSAGE, FailureCode
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status, is_terminal
from videoserve.services.jobs import JobService, Preview
from videoserve.settings import Settings

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
    request_id: str,
    request: Request,
    jobs: JobsDep,
    keys: KeysDep,
    settings: SettingsDep,
    key: KeyDep,
) -> StreamingResponse:
    """`event: status` with the status endpoint's JSON on every change (status, phase, step,
    progress), `event: preview` with its step and URL on every new preview image; ends after
    the final status (COMPLETED or FAILED), or with `event: error` when the request is deleted
    or the key is revoked meanwhile."""
    job = await jobs.get(key, request_id)  # 404 before the stream starts
    base = str(request.base_url).rstrip("/")

    async def render(found: Job) -> dict[str, Any]:
        return await views.status(jobs, found)

    def preview_url(step: int) -> str:
        return f"{base}/v2/requests/{job.id}/preview?step={step}"

    follow = Follow(jobs, keys, settings)
    return event_stream(status_events(follow, key, job.id, request, render, preview_url))


@router.get(
    "/v2/requests/{request_id}/preview",
    summary="The latest preview image of a running request (JPEG)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def preview(request_id: str, jobs: JobsDep, key: KeyDep) -> Response:
    """A strip of a few frames across time, mapped from the latents without a VAE decode,
    while the request denoises; 404 before its first preview and after it ends."""
    return preview_response(await jobs.preview(key, request_id))


def preview_response(preview: Preview) -> Response:
    """A preview image, never cached (the next one replaces it), with the step it shows."""
    headers = {"Cache-Control": "no-store", "X-Preview-Step": str(preview.step)}
    if preview.steps is not None:
        headers["X-Preview-Steps"] = str(preview.steps)
    return Response(preview.image, media_type="image/jpeg", headers=headers)


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@dataclass(frozen=True)
class Follow:
    """What a status stream reads while it runs: the job, the key's re-check, the interval."""

    jobs: JobService
    keys: KeyStore
    settings: Settings


async def status_events(
    follow: Follow,
    key: ApiKey,
    job_id: str,
    request: Request,
    render: Callable[[Job], Awaitable[dict[str, Any]]],
    preview_url: Callable[[int], str],
) -> AsyncIterator[str]:
    """`status` events (`render`'s body) on every change, `preview` events on every new
    preview image, until the job ends; an `error` event ends it early (request gone, key
    revoked)."""
    jobs, keys, settings = follow.jobs, follow.keys, follow.settings
    interval = settings.poll_interval_seconds
    sent: tuple[Any, ...] | None = None
    previewed: int | None = None
    last_write = time.monotonic()
    # The key as the request carried it (None: auth is off), checked again as its cache lapses.
    presented = credentials.presented_key(request.scope["headers"])
    if not settings.auth:
        presented = None
    recheck_at = _recheck_at(keys, presented)
    while True:
        if presented is not None and time.monotonic() >= recheck_at:
            try:
                key = await deps.authenticated(keys, presented)
            except errors.Unauthorized as exc:  # revoked (or gone) since the stream began
                yield _event(
                    "error",
                    {"request_id": job_id, "error": exc.message, "code": exc.code, "status": 401},
                )
                return
            recheck_at = _recheck_at(keys, presented)
        # Wake for the key's re-check too, not only for the job.
        until_recheck = recheck_at - time.monotonic()
        wait = min(interval, until_recheck) if until_recheck > 0 else interval
        # Listen before reading, so a change committed during the read still wakes us.
        waiter = asyncio.create_task(jobs.wait_for_change(job_id, wait))
        await asyncio.sleep(0)
        try:
            try:
                job = await jobs.get(key, job_id)
            except errors.NotFound as exc:  # deleted or expired while we followed it
                yield _event("error", {"request_id": job_id, "error": exc.message})
                return
            body = await render(job)
            snapshot = (
                job.status,
                job.progress,
                job.phase,
                job.step,
                body.get("queue_position"),
            )
            if snapshot != sent:
                yield _event("status", body)
                sent, last_write = snapshot, time.monotonic()
            if (
                job.status == Status.PROCESSING
                and job.preview_step is not None
                and job.preview_step != previewed
            ):
                previewed = job.preview_step
                step = {"request_id": job.id, "step": previewed, "steps": job.steps}
                yield _event("preview", step | {"url": preview_url(previewed)})
                last_write = time.monotonic()
            if is_terminal(job.status) or await request.is_disconnected():
                return
            await waiter
        finally:
            waiter.cancel()
        if time.monotonic() - last_write >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()


def _recheck_at(keys: KeyStore, presented: str | None) -> float:
    """When the stream must authenticate again: as the cached answer for its key lapses, so it
    sees a revocation when polls do; without a cached answer (`auth_cache_seconds` 0), on
    every wake-up."""
    if presented is None:
        return float("inf")
    until = keys.cached_until(presented)
    return until if until is not None else 0.0


@router.post("/v2/requests/{request_id}/cancel", summary="Cancel a queued or running request")
async def cancel(request_id: str, jobs: JobsDep, key: KeyDep) -> dict[str, Any]:
    """A queued request fails at once; a running one stops at its next step. The answer is the
    status body plus `cancelled` and a `message` saying which happened."""
    before = await jobs.get(key, request_id)
    job = await jobs.cancel(key, request_id)
    body = await views.status(jobs, job)
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
