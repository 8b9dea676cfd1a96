"""OpenAI's Videos API (`/v1/videos`) over the same job service as the Segmind dialect.

Routes translate the OpenAI request to the service's parameters (`seconds` -> `duration`, an
uploaded `input_reference` -> a data URI the service validates and stores) and answer with
OpenAI's `video` object and error envelope (`OpenAIRoute`). Included before the Segmind
catch-all `POST /v1/{model}`, which would otherwise take `POST /v1/videos`.

A remix records its source in a small marker blob, `jobs/<id>/remix.json`, beside the job's
other files: the job's params are re-validated against the model's schema by the worker, so
they cannot carry it, and the marker shares the job's lifetime (retention and DELETE remove
the whole `jobs/<id>/` prefix).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from videoserve import errors
from videoserve.api import openai_views
from videoserve.api.deps import JsonBody, KeyDep, RuntimeDep, json_body
from videoserve.api.openai_views import OpenAIRoute
from videoserve.jobs import listing
from videoserve.jobs.records import Job
from videoserve.jobs.service import job_blob_prefix
from videoserve.jobs.states import Status, is_terminal
from videoserve.media.spritesheet import build_spritesheet
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

Variant = Literal["video", "thumbnail", "spritesheet"]

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
        for name, value in form.multi_items():
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
    body = openai_views.video(job, remixed_from=await _remixed_from(runtime, job.id), inputs=inputs)
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
    jobs, has_more = await listing.list_jobs(
        runtime.store,
        None if key.is_admin else key.id,
        after=after,
        limit=limit,
        order=order,
    )
    sources = await asyncio.gather(*(_remixed_from(runtime, job.id) for job in jobs))
    manifests = await asyncio.gather(*(runtime.service.inputs_of(job) for job in jobs))
    videos = [
        openai_views.video(job, remixed_from=src, inputs=inputs)
        for job, src, inputs in zip(jobs, sources, manifests, strict=True)
    ]
    return openai_views.page(videos, has_more)


@router.delete("/{video_id}", summary="Delete a video, its files and its record")
async def delete(video_id: str, runtime: RuntimeDep, key: KeyDep) -> dict[str, Any]:
    job = await runtime.service.get(key, video_id)
    running = not is_terminal(job.status)
    if running:
        await runtime.service.cancel(key, job.id)
    prefix = job_blob_prefix(job.id)
    await runtime.blobs.delete_prefix(prefix)
    await runtime.store.delete([job.id])
    if running:
        # A worker may have stored files in between; with the row gone it can never complete
        # (its fenced update finds nothing), so what is there now is all it will leave.
        await runtime.blobs.delete_prefix(prefix)
    log.info("video %s deleted", job.id)
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
    job = await runtime.service.get(key, video_id)
    if job.status != Status.COMPLETED or not job.result:
        state = openai_views.STATUSES[job.status]
        raise errors.InvalidRequest(
            f"video '{job.id}' is {state}: its content can be downloaded once it is completed"
        )
    if variant == "video":
        blob_key, media_type = job.result["output_key"], "video/mp4"
    elif variant == "thumbnail":
        blob_key, media_type = job.result["thumbnail_key"], "image/jpeg"
    else:
        blob_key, media_type = await _spritesheet(runtime, job), "image/jpeg"
    return await _blob_response(runtime, blob_key, media_type)


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


def spritesheet_key(output_key: str) -> str:
    """Beside the video it previews, in the attempt's folder."""
    return output_key.rsplit("/", 1)[0] + "/spritesheet.jpg"


async def _spritesheet(runtime: Runtime, job: Job) -> str:
    """The spritesheet's blob key, made from the stored MP4 on first request."""
    assert job.result is not None
    output_key = job.result["output_key"]
    sheet_key = spritesheet_key(output_key)
    if await runtime.blobs.exists(sheet_key):
        return sheet_key
    path = runtime.blobs.local_path(output_key)
    try:
        if path is not None and not path.is_file():
            raise BlobNotFound(output_key)
        source = path if path is not None else await runtime.blobs.get_bytes(output_key)
    except BlobNotFound:
        raise errors.NotFound("content not found (it may have expired)") from None
    data = await asyncio.to_thread(build_spritesheet, source)
    # Two first requests at once both build it; writes are atomic, so either copy is whole.
    await runtime.blobs.put_bytes(sheet_key, data, "image/jpeg")
    if await runtime.store.get(job.id) is None:  # deleted meanwhile: leave nothing behind
        await runtime.blobs.delete_prefix(job_blob_prefix(job.id))
        raise errors.NotFound(f"request '{job.id}' not found")
    return sheet_key


# --- remix -------------------------------------------------------------------------------------


def remix_marker_key(job_id: str) -> str:
    return f"{job_blob_prefix(job_id)}remix.json"


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
    source = await runtime.service.get(key, video_id)
    if source.status != Status.COMPLETED:
        state = openai_views.STATUSES[source.status]
        raise errors.InvalidRequest(
            f"video '{source.id}' is {state}: only a completed video can be remixed"
        )
    inputs = await runtime.service.inputs_of(source)
    if inputs is not None:
        # An edit or an extension: the same operation on the same source, a new prompt.
        job = await runtime.video_ops.remix(
            key, source, inputs, body.get("prompt"), idempotency_key=idempotency_key
        )
        await _mark_remix(runtime, job.id, source.id)
        return openai_views.video(job, remixed_from=source.id, inputs=inputs)
    # The source's parameters (duration, size, seed...) with the new prompt. A data URI was
    # stored as a note, so the reference image comes from blob storage, as the source used it.
    raw = {k: v for k, v in source.params.items() if k != REFERENCE}
    raw["prompt"] = body.get("prompt")
    if source.input_key:
        png = await runtime.blobs.get_bytes(source.input_key)
        raw[REFERENCE] = "data:image/png;base64," + base64.b64encode(png).decode()
    job = await runtime.service.submit(key, source.model, raw, idempotency_key=idempotency_key)
    await _mark_remix(runtime, job.id, source.id)
    return openai_views.video(job, remixed_from=source.id)


async def _mark_remix(runtime: Runtime, job_id: str, source_id: str) -> None:
    marker = json.dumps({"remixed_from_video_id": source_id}).encode()
    await runtime.blobs.put_bytes(remix_marker_key(job_id), marker, "application/json")


async def _remixed_from(runtime: Runtime, job_id: str) -> str | None:
    try:
        marker = json.loads(await runtime.blobs.get_bytes(remix_marker_key(job_id)))
    except BlobNotFound:
        return None
    except ValueError:
        log.warning("video %s: unreadable remix marker", job_id)
        return None
    source = marker.get("remixed_from_video_id") if isinstance(marker, dict) else None
    return source if isinstance(source, str) else None
