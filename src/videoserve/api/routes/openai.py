"""OpenAI's Videos API (`/v1/videos`) over the same job service as the Segmind dialect.

Routes translate the OpenAI request to the service's parameters (`seconds` -> `duration`, an
uploaded `input_reference` -> a data URI the service validates and stores) and answer with
OpenAI's `video` object and error envelope (`OpenAIRoute`). Included before the Segmind
catch-all `POST /v1/{model}`, which would otherwise take `POST /v1/videos`.

Delete, content variants and remix are `JobService` operations; this module only reads the
request and shapes the answer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from videoserve import errors
from videoserve.api import openai_views
from videoserve.api.deps import (
    QUEUE_HEADERS,
    CharactersDep,
    FilesDep,
    JobsDep,
    JsonBody,
    KeyDep,
    KeysDep,
    QueueDep,
    RegistryDep,
    SettingsDep,
    VideoOpsDep,
    json_body,
    refuse_repeated_fields,
)
from videoserve.api.openai_views import OpenAIRoute
from videoserve.api.routes.control import (
    Follow,
    event_stream,
    preview_response,
    status_events,
)
from videoserve.jobs import listing
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status, is_terminal
from videoserve.models.registry import ModelRegistry
from videoserve.services.files import Files
from videoserve.services.jobs import Variant
from videoserve.settings import Settings
from videoserve.storage.base import BlobNotFound

log = logging.getLogger("videoserve.api")

router = APIRouter(prefix="/v1/videos", tags=["OpenAI Videos"], route_class=OpenAIRoute)

# OpenAI's documented defaults for `POST /v1/videos`, which differ from the Segmind contract's.
DEFAULT_MODEL = "sora-2"
DEFAULT_SECONDS = "4"
DEFAULT_SIZE = "720x1280"
SORA_2_PRO = "sora-2-pro"
REFERENCE = "input_reference"
CHARACTERS = "characters"


_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string"},
                        "model": {"type": "string", "default": DEFAULT_MODEL},
                        "seconds": {"type": "string", "enum": ["4", "8", "12"]},
                        "size": {"type": "string", "default": DEFAULT_SIZE},
                        REFERENCE: {"type": "string", "format": "binary"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "example": {"prompt": "A cat on a skateboard", "seconds": "4"},
                }
            },
        },
    }
}


# --- create -----------------------------------------------------------------------------------


@router.post(
    "", openapi_extra=_CREATE_BODY | QUEUE_HEADERS, summary="Create a video (multipart or JSON)"
)
async def create(
    request: Request,
    jobs: JobsDep,
    video_ops: VideoOpsDep,
    characters: CharactersDep,
    settings: SettingsDep,
    registry: RegistryDep,
    key: KeyDep,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    model, raw = await _create_params(request, settings, registry)
    character_ids = _character_ids(raw.pop(CHARACTERS, None))
    try:
        used = await video_ops.characters(key, characters, model, character_ids, raw.get("prompt"))
        if used is not None:
            inputs, files = used
            job = await jobs.submit(
                key,
                model,
                raw,
                idempotency_key=idempotency_key,
                inputs=inputs,
                files=files,
                queue=queue,
            )
        else:
            job = await jobs.submit(
                key,
                model,
                raw,
                idempotency_key=idempotency_key,
                queue=queue,
            )
    except errors.InvalidRequest as exc:
        raise _in_openai_terms(exc) from None
    return openai_views.video(job)


def _character_ids(value: Any) -> list[str]:
    """The `characters` extra: a list of ids (JSON), or repeated form fields."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise errors.InvalidRequest(
            f"{CHARACTERS}: must be a list of character ids", param=CHARACTERS
        )
    return list(dict.fromkeys(value))


async def _create_params(
    request: Request, settings: Settings, registry: ModelRegistry
) -> tuple[str, dict[str, Any]]:
    """(model, the service's raw params) from a multipart form or a JSON body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields = await _form_fields(request, settings)
    else:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise errors.InvalidRequest("request body must be a JSON object")
        fields = dict(body)
        if isinstance(fields.get(REFERENCE), dict):
            fields[REFERENCE] = _reference_object(fields[REFERENCE])
    model = fields.pop("model", None) or DEFAULT_MODEL
    if not isinstance(model, str):
        raise errors.InvalidRequest("model: must be a string", param="model")
    seconds = fields.pop("seconds", None)
    # Other fields go through as they are: a model's own knobs (seed...) work, and a mistyped
    # name gets the service's "unknown parameter" answer.
    raw = dict(fields)
    raw.setdefault("duration", seconds if seconds is not None else DEFAULT_SECONDS)
    raw.setdefault("size", DEFAULT_SIZE)
    if raw.get(REFERENCE) is None:
        raw.pop(REFERENCE, None)
    return served_name(registry, model), raw


async def _form_fields(request: Request, settings: Settings) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    # A data URI in `input_reference[image_url]` may be megabytes; the body cap still applies.
    async with request.form(max_part_size=settings.max_body_bytes) as form:
        items = form.multi_items()
        refuse_repeated_fields((name for name, _ in items), lists=(CHARACTERS, CHARACTERS + "[]"))
        for name, value in items:
            if name == REFERENCE and isinstance(value, UploadFile):
                fields[REFERENCE] = await _upload_as_data_uri(value, settings.max_image_bytes)
            elif name.startswith(REFERENCE + "[") and name.endswith("]"):
                reference[name[len(REFERENCE) + 1 : -1]] = value
            elif isinstance(value, UploadFile):
                raise errors.InvalidRequest(f"{name}: a file is accepted only as {REFERENCE}")
            elif name in (CHARACTERS, CHARACTERS + "[]"):
                fields.setdefault(CHARACTERS, []).append(value)
            else:
                fields[name] = value
    if reference:
        fields[REFERENCE] = _reference_object(reference)
    return fields


async def _upload_as_data_uri(upload: UploadFile, max_bytes: int) -> str:
    """The uploaded image as a data URI: the service checks and stores it like any other."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise errors.PayloadTooLarge(
            f"{REFERENCE} image is larger than the limit of {max_bytes} bytes", param=REFERENCE
        )
    declared = (upload.content_type or "").lower()
    # The label only has to say "image": the decoder identifies the format from the bytes.
    label = declared if declared.startswith("image/") else "image/*"
    return f"data:{label};base64,{base64.b64encode(data).decode()}"


def _reference_object(reference: dict[str, Any]) -> str:
    """`{"image_url": ...}` -> the URL; a `file_id` needs OpenAI's Files API, which we lack."""
    url = reference.get("image_url")
    if isinstance(url, str) and url:
        return url
    if reference.get("file_id"):
        raise errors.InvalidRequest(
            f"{REFERENCE}.file_id is not supported here: upload the image as {REFERENCE} "
            "or pass input_reference.image_url (an http(s) URL or a data URI)",
            param=REFERENCE,
        )
    raise errors.InvalidRequest(
        f"{REFERENCE} must be an uploaded image or an object with image_url", param=REFERENCE
    )


def served_name(registry: ModelRegistry, model: str) -> str:
    """`sora-2` is OpenAI's default model; it runs as `sora-2-pro` unless configured itself."""
    if model == DEFAULT_MODEL and model not in registry.names():
        return SORA_2_PRO
    return model


def _in_openai_terms(exc: errors.InvalidRequest) -> errors.InvalidRequest:
    """Name `seconds` where the service names `duration`: the client sent `seconds`."""
    if exc.param != "duration":
        return exc
    message = exc.message.replace("duration:", "seconds:", 1)
    return type(exc)(message, param="seconds")


# --- read, list, delete ----------------------------------------------------------------------


@router.get("/{video_id}", summary="Retrieve a video's status and metadata")
async def retrieve(
    video_id: str, jobs: JobsDep, settings: SettingsDep, key: KeyDep
) -> JSONResponse:
    job = await jobs.get(key, video_id)
    inputs = await jobs.older_inputs(job)
    remixed_from = await jobs.remixed_from(job)
    body = openai_views.video(job, remixed_from=remixed_from, inputs=inputs)
    if job.status == Status.QUEUED:
        body |= openai_views.waiting_fields(*await jobs.waiting(job))
    headers = {}
    if not is_terminal(job.status):
        # The SDK's poll() waits this long between retrieves.
        headers["openai-poll-after-ms"] = str(poll_after_ms(job, settings))
    return JSONResponse(body, headers=headers)


@router.get("", summary="List videos, newest first (cursor pagination)")
async def list_videos(
    jobs: JobsDep,
    key: KeyDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=listing.MAX_LIMIT)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    page, has_more = await jobs.list(key, after=after, limit=limit, order=order)
    # The remix source is the row's (a blob only for a row made before migration 12).
    sources = await asyncio.gather(*(jobs.remixed_from(job) for job in page))
    manifests = await asyncio.gather(*(jobs.older_inputs(job) for job in page))
    videos = [
        openai_views.video(job, remixed_from=src, inputs=inputs)
        for job, src, inputs in zip(page, sources, manifests, strict=True)
    ]
    return openai_views.page(videos, has_more)


@router.delete("/{video_id}", summary="Delete a video, its files and its record")
async def delete(video_id: str, jobs: JobsDep, key: KeyDep) -> dict[str, Any]:
    job = await jobs.delete(key, video_id)
    return openai_views.deleted(job.id)


POLL_FLOOR_MS = 250  # below this a poll costs more than it could tell
POLL_CEILING_MS = 5000


def poll_after_ms(job: Job, settings: Settings, now: float | None = None) -> int:
    """When to poll again, from the job's state; never below the floor.

    Queued: nothing changes until a worker claims it, so twice the server's own re-check
    interval. In progress: a quarter of the time the job's progress so far says is left
    (elapsed / progress x what remains), so a long job is polled rarely and one about to
    finish soon. Never sooner than the server itself re-checks a job, nor the floor.
    """
    interval_ms = settings.poll_interval_seconds * 1000
    floor = max(POLL_FLOOR_MS, interval_ms)
    if job.status == Status.QUEUED:
        wanted = 2 * floor
    else:
        started = job.started_at or job.created_at
        elapsed_ms = max(0.0, ((now or time.time()) - started) * 1000)
        progress = max(1, min(job.progress, 99))
        wanted = elapsed_ms / progress * (100 - progress) / 4
    return round(max(floor, min(POLL_CEILING_MS, wanted)))


# --- live events (our extension) ---------------------------------------------------------------


@router.get(
    "/{video_id}/events",
    summary="Follow a video as server-sent events (our extension): status and previews",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    video_id: str,
    request: Request,
    jobs: JobsDep,
    keys: KeysDep,
    settings: SettingsDep,
    key: KeyDep,
) -> StreamingResponse:
    """`event: status` with the video object on every change (status, phase, step,
    progress), `event: preview` with its step and URL on every new preview image; ends
    after the final status."""
    job = await jobs.get(key, video_id)  # 404 before the stream starts
    base = str(request.base_url).rstrip("/")

    async def render(found: Job) -> dict[str, Any]:
        body = openai_views.video(found)
        if found.status == Status.QUEUED:  # as GET /v1/videos/{id} shows a queued video
            body |= openai_views.waiting_fields(*await jobs.waiting(found))
        return body

    def preview_url(step: int) -> str:
        return f"{base}/v1/videos/{job.id}/content?variant=preview&step={step}"

    follow = Follow(jobs, keys, settings)
    return event_stream(status_events(follow, key, job.id, request, render, preview_url))


# --- content -----------------------------------------------------------------------------------


@router.get(
    "/{video_id}/content",
    summary="Download the MP4, its thumbnail or a spritesheet of its frames",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}, "image/jpeg": {}}}},
)
async def content(
    video_id: str, jobs: JobsDep, files: FilesDep, key: KeyDep, variant: Variant = "video"
) -> Response:
    """`preview` (our extension): the latest preview image while the video is in progress."""
    if variant == "preview":
        return preview_response(await jobs.preview(key, video_id))
    found = await jobs.content(key, video_id, variant)
    return await _blob_response(files, found.blob_key, found.media_type)


async def _blob_response(files: Files, blob_key: str, media_type: str) -> Response:
    """The bytes themselves (a local file is served with Range support)."""
    path = files.local_path(blob_key)
    if path is not None:
        if not path.is_file():
            raise errors.NotFound("content not found (it may have expired)")
        return FileResponse(path, media_type=media_type)
    try:
        data = await files.read(blob_key)
    except BlobNotFound:
        raise errors.NotFound("content not found (it may have expired)") from None
    return Response(data, media_type=media_type)


# --- remix -------------------------------------------------------------------------------------


@router.post(
    "/{video_id}/remix",
    openapi_extra=QUEUE_HEADERS,
    summary="A new video from a completed one, with a new prompt",
)
async def remix(
    video_id: str,
    video_ops: VideoOpsDep,
    key: KeyDep,
    body: JsonBody,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(body) - {"prompt"})
    if unknown:
        raise errors.InvalidRequest(
            f"unknown parameter(s): {', '.join(unknown)}; a remix takes only prompt",
            param=unknown[0],
        )
    job = await video_ops.remix(
        key,
        video_id,
        body.get("prompt"),
        idempotency_key=idempotency_key,
        queue=queue,
    )
    return openai_views.video(job, remixed_from=video_id)
