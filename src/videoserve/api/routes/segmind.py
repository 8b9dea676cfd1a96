"""The Segmind serverless contract: `/v2/{model}` submit-and-poll, `/v1/{model}` blocking."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from videoserve.api import views
from videoserve.api.deps import (
    QUEUE_HEADERS,
    FilesDep,
    JobsDep,
    JsonBody,
    KeyDep,
    QueueDep,
    SettingsDep,
    WebhookUrlsDep,
    base_url,
)
from videoserve.jobs.states import Status

router = APIRouter(tags=["Segmind"])
# The polls, in a router of their own that the app matches before all others, then submits:
# FastAPI tries routes in order, ~10 us each, and these two are most of the traffic.
polls = APIRouter(tags=["Segmind"])
submits = APIRouter(tags=["Segmind"])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "The model's parameters: see GET /v1/models for each schema.",
                    "example": {
                        "prompt": "A druid whispering to ancient trees under a golden sunset.",
                        "duration": "8",
                        "size": "1280x720",
                    },
                }
            }
        },
    }
}


def _answer(job_status: Status, body: dict[str, Any]) -> JSONResponse:
    # The contract: a FAILED request is served as HTTP 422, the body still carrying the detail.
    # A JSONResponse, not the dict: FastAPI would walk the dict through jsonable_encoder first,
    # a fifth of a poll's time, for a body that is JSON types already.
    return JSONResponse(body, status_code=422 if job_status == Status.FAILED else 200)


@submits.post(
    "/v2/{model}",
    openapi_extra=_BODY | QUEUE_HEADERS,
    summary="Submit a request (returns at once)",
    response_model=dict[str, Any],
)
async def submit(
    model: str,
    request: Request,
    jobs: JobsDep,
    webhook_urls: WebhookUrlsDep,
    key: KeyDep,
    body: JsonBody,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header()] = None,
    webhook: Annotated[
        str | None, Query(description="URL that receives video.completed / video.failed")
    ] = None,
) -> JSONResponse:
    # The job service's settings, not a dependency of their own: the hot path's route
    # resolves as few as it can (see `deps.queue_options`).
    webhook_url = await webhook_urls.check(webhook)
    job = await jobs.submit(
        key,
        model,
        body,
        idempotency_key=idempotency_key,
        webhook_url=webhook_url,
        queue=queue,
    )
    # JSON types already: no walk through jsonable_encoder (see `_answer`).
    return JSONResponse(views.submitted(job, base_url(request, jobs.settings)))


@polls.get("/v2/requests/{request_id}/status", summary="Poll a request's status")
async def status(request_id: str, jobs: JobsDep, key: KeyDep) -> Any:
    # Most polls are answered before this route (`api.polls`); it answers the rest.
    return _answer(*await views.poll(jobs, key, request_id))


@polls.get("/v2/requests/{request_id}", summary="Read a request's final response")
async def result(
    request_id: str,
    request: Request,
    jobs: JobsDep,
    files: FilesDep,
    settings: SettingsDep,
    key: KeyDep,
) -> Any:
    job = await jobs.get(key, request_id)
    return _answer(job.status, await views.result(jobs, files, job, base_url(request, settings)))


@router.post(
    "/v1/{model}",
    openapi_extra=_BODY | QUEUE_HEADERS,
    summary="Run a request and wait for the video (MP4 bytes)",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}}},
)
async def run_blocking(
    model: str,
    jobs: JobsDep,
    files: FilesDep,
    settings: SettingsDep,
    key: KeyDep,
    body: JsonBody,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    job = await jobs.submit(
        key,
        model,
        body,
        idempotency_key=idempotency_key,
        queue=queue,
    )
    job = await jobs.wait(key, job.id, settings.sync_timeout_seconds)
    if job.status == Status.FAILED:
        body = {"error": job.error, "code": job.failure, "request_id": job.id}
        return JSONResponse(body, status_code=422)
    assert job.result is not None
    headers = {"X-Request-Id": job.id, "X-Served-By": job.result.served_by}
    output_key = job.result.output_key
    path = files.local_path(output_key)
    if path is not None:
        return FileResponse(path, media_type="video/mp4", headers=headers)
    return Response(await files.read(output_key), media_type="video/mp4", headers=headers)
