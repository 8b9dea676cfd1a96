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
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from videoserve import errors
from videoserve.api import openai_views
from videoserve.api.deps import JsonBody, KeyDep, RuntimeDep, json_body, refuse_repeated_fields
from videoserve.api.openai_views import OpenAIRoute
from videoserve.jobs import listing
from videoserve.jobs.records import Job
from videoserve.jobs.service import Variant
from videoserve.jobs.states import Status, is_terminal
from videoserve.runtime import Runtime
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


@router.post("", openapi_extra=_CREATE_BODY, summary="Create a video (multipart or JSON)")
async def create(
    request: Request,
    runtime: RuntimeDep,
    key: KeyDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    model, raw = await _create_params(request, runtime)
    character_ids = _character_ids(raw.pop(CHARACTERS, None))
    try:
        used = await runtime.video_ops.characters(
            key, runtime.characters, model, character_ids, raw.get("prompt")
        )
        if used is not None:
            inputs, files = used
            job = await runtime.service.submit(
                key, model, raw, idempotency_key=idempotency_key, inputs=inputs, files=files
            )
        else:
            job = await runtime.service.submit(key, model, raw, idempotency_key=idempotency_key)
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


async def _create_params(request: Request, runtime: Runtime) -> tuple[str, dict[str, Any]]:
    """(model, the service's raw params) from a multipart form or a JSON body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields = await _form_fields(request, runtime)
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
    return served_name(runtime, model), raw


async def _form_fields(request: Request, runtime: Runtime) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    # A data URI in `input_reference[image_url]` may be megabytes; the body cap still applies.
    async with request.form(max_part_size=runtime.settings.max_body_bytes) as form:
        items = form.multi_items()
        refuse_repeated_fields((name for name, _ in items), lists=(CHARACTERS, CHARACTERS + "[]"))
        for name, value in items:
            if name == REFERENCE and isinstance(value, UploadFile):
                fields[REFERENCE] = await _upload_as_data_uri(
                    value, runtime.settings.max_image_bytes
                )
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


def served_name(runtime: Runtime, model: str) -> str:
    """`sora-2` is OpenAI's default model; it runs as `sora-2-pro` unless configured itself."""
    if model == DEFAULT_MODEL and model not in runtime.registry.names():
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
async def retrieve(video_id: str, runtime: RuntimeDep, key: KeyDep) -> JSONResponse:
    job = await runtime.service.get(key, video_id)
    inputs = await runtime.service.inputs_of(job)
    remixed_from = await runtime.service.remixed_from(job.id)
    body = openai_views.video(job, remixed_from=remixed_from, inputs=inputs)
    headers = {}
    if not is_terminal(job.status):
        # The SDK's poll() waits this long between retrieves.
        headers["openai-poll-after-ms"] = str(poll_after_ms(job, runtime.settings))
    return JSONResponse(body, headers=headers)


@router.get("", summary="List videos, newest first (cursor pagination)")
async def list_videos(
    runtime: RuntimeDep,
    key: KeyDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=listing.MAX_LIMIT)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    jobs, has_more = await runtime.service.list(key, after=after, limit=limit, order=order)
    sources = await asyncio.gather(*(runtime.service.remixed_from(job.id) for job in jobs))
    manifests = await asyncio.gather(*(runtime.service.inputs_of(job) for job in jobs))
    videos = [
        openai_views.video(job, remixed_from=src, inputs=inputs)
        for job, src, inputs in zip(jobs, sources, manifests, strict=True)
    ]
    return openai_views.page(videos, has_more)


@router.delete("/{video_id}", summary="Delete a video, its files and its record")
async def delete(video_id: str, runtime: RuntimeDep, key: KeyDep) -> dict[str, Any]:
    job = await runtime.service.delete(key, video_id)
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


# --- content -----------------------------------------------------------------------------------


@router.get(
    "/{video_id}/content",
    summary="Download the MP4, its thumbnail or a spritesheet of its frames",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}, "image/jpeg": {}}}},
)
async def content(
    video_id: str, runtime: RuntimeDep, key: KeyDep, variant: Variant = "video"
) -> Response:
    found = await runtime.service.content(key, video_id, variant)
    return await _blob_response(runtime, found.blob_key, found.media_type)


async def _blob_response(runtime: Runtime, blob_key: str, media_type: str) -> Response:
    """The bytes themselves (a local file is served with Range support)."""
    path = runtime.blobs.local_path(blob_key)
    if path is not None:
        if not path.is_file():
            raise errors.NotFound("content not found (it may have expired)")
        return FileResponse(path, media_type=media_type)
    try:
        data = await runtime.blobs.get_bytes(blob_key)
    except BlobNotFound:
        raise errors.NotFound("content not found (it may have expired)") from None
    return Response(data, media_type=media_type)


# --- remix -------------------------------------------------------------------------------------


@router.post("/{video_id}/remix", summary="A new video from a completed one, with a new prompt")
async def remix(
    video_id: str,
    runtime: RuntimeDep,
    key: KeyDep,
    body: JsonBody,
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
    job, inputs = await runtime.video_ops.remix(
        key, video_id, body.get("prompt"), idempotency_key=idempotency_key
    )
    return openai_views.video(job, remixed_from=video_id, inputs=inputs)
